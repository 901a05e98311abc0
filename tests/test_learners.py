"""Learners on the shared loop: gradients against finite differences, published behaviour, errors."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.neighbors import KNeighborsClassifier, NeighborhoodComponentsAnalysis

from robust_metric_learning.datasets import load_dataset
from robust_metric_learning.learners import (
    ARML,
    NCA,
    Euclidean,
    PerturbationLoss,
    TripletLearner,
)
from robust_metric_learning.learners._optim import minimize
from robust_metric_learning.margin import class_neighbors, margin
from robust_metric_learning.neighbors import MahalanobisKNN


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def small_problem(seed=0, n=40, d=4):
    rng = np.random.default_rng(seed)
    X = torch.tensor(rng.normal(size=(n, d)))
    codes = torch.tensor(np.arange(n) % 3)
    return X, codes, rng


def test_perturbation_loss_values_and_graph():
    pl = PerturbationLoss(tau=1.0, weight=2.0)
    m = torch.tensor([0.5, 2.0, -1.0, 0.0])
    # [1 - 0.25]_+ = 0.75, [1 - 4]_+ = 0, violated -> tau^2 = 1, margin 0 -> 1
    assert torch.isclose(pl(m), torch.tensor(2.0 * (0.75 + 0 + 1 + 1) / 4))
    empty = torch.zeros(0, requires_grad=True)
    out = pl(empty)
    assert out.item() == 0 and out.requires_grad


@pytest.mark.parametrize("kwargs, match", [
    (dict(tau=0.0), "'tau' parameter of PerturbationLoss must be a number in \\(0, inf\\)"),
    (dict(tau=-1.0), "'tau'"),
    (dict(weight=-0.5), "'weight' parameter of PerturbationLoss must be a number in \\[0, inf\\)"),
])
def test_perturbation_loss_bad_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PerturbationLoss(**kwargs)(torch.tensor([0.1]))
    X, y = np.random.default_rng(0).normal(size=(30, 3)), np.arange(30) % 2
    with pytest.raises(ValueError, match=match):
        TripletLearner(k_same=1, k_other=2, max_iter=2, perturbation=PerturbationLoss(**kwargs)).fit(X, y)


@pytest.mark.parametrize("learner", [
    TripletLearner(k_same=2, k_other=3),
    TripletLearner(k_same=2, k_other=3, perturbation=PerturbationLoss(tau=0.7, weight=0.5)),
    ARML(k_same=3, k_other=3),
    ARML(k_same=3, k_other=3, perturbation=PerturbationLoss(tau=0.5)),
])
def test_objective_gradient_matches_finite_differences(learner):
    X, codes, rng = small_problem()
    L0 = torch.eye(4, dtype=torch.float64) + 0.3 * torch.tensor(rng.normal(size=(4, 4)))
    trip = learner._sample(X, codes, L0, rng, {})
    # central finite differences on every entry of L, against autograd
    L = L0.clone().requires_grad_(True)
    learner._objective(L, X, trip).backward()
    h = 1e-6
    fd = torch.zeros_like(L0)
    for i in range(4):
        for j in range(4):
            E = torch.zeros_like(L0)
            E[i, j] = h
            fd[i, j] = (learner._objective(L0 + E, X, trip) - learner._objective(L0 - E, X, trip)) / (2 * h)
    torch.testing.assert_close(L.grad, fd, rtol=1e-5, atol=1e-7)


def test_triplet_sampling_equals_brute_force():
    X, codes, _ = small_problem(n=60)
    same, other = class_neighbors(X, codes, 4, 6)
    D = torch.cdist(X, X)
    for i in range(60):
        d_same = torch.where(codes == codes[i], D[i], torch.inf)
        d_same[i] = torch.inf
        d_other = torch.where(codes != codes[i], D[i], torch.inf)
        assert set(same[i].tolist()) == set(torch.argsort(d_same)[:4].tolist())
        assert set(other[i].tolist()) == set(torch.argsort(d_other)[:6].tolist())


def test_arml_published_behaviour(digits):
    X_tr, y_tr, X_te, y_te = digits
    # L starts at the identity: a step of 0 leaves it there
    arml0 = ARML(max_iter=1, learn_rate=1e-12, random_state=0).fit(X_tr, y_tr)
    np.testing.assert_allclose(arml0.components_, np.eye(64), atol=1e-9)
    # training raises the mean margin of fresh triplets (the objective is -mean margin)
    arml = ARML(max_iter=60, learn_rate=1e-2, random_state=0).fit(X_tr, y_tr)
    X = torch.tensor(X_tr)
    codes = torch.tensor(y_tr)

    def mean_margin(L):
        L = torch.tensor(L)
        a, p, n = ARML()._sample(X, codes, L, np.random.default_rng(1), {})
        return float(margin(X[a], X[p], X[n], L.T @ L).mean())

    assert mean_margin(arml.components_) > mean_margin(np.eye(64)) * 1.05
    acc = KNeighborsClassifier(1).fit(arml.transform(X_tr), y_tr).score(arml.transform(X_te), y_te)
    assert acc >= 0.97
    assert arml.n_iter_ == 60


def test_arml_is_reproducible(digits):
    X_tr, y_tr, _, _ = digits
    a = ARML(max_iter=5, random_state=3).fit(X_tr[:300], y_tr[:300]).components_
    b = ARML(max_iter=5, random_state=3).fit(X_tr[:300], y_tr[:300]).components_
    np.testing.assert_array_equal(a, b)


def test_nca_wraps_scikit_learn(digits):
    X_tr, y_tr, _, _ = digits
    ours = NCA(max_iter=20, random_state=0).fit(X_tr, y_tr)
    ref = NeighborhoodComponentsAnalysis(init="identity", max_iter=20, random_state=0).fit(X_tr, y_tr)
    np.testing.assert_allclose(ours.components_, ref.components_)
    with pytest.raises(ValueError, match=r"'n_components' parameter of NCA must be at most the number of features of X \(64\); got 65"):
        NCA(n_components=65).fit(X_tr, y_tr)


def test_learner_interface(digits):
    X_tr, y_tr, X_te, y_te = digits
    e = Euclidean().fit(X_tr, y_tr)
    np.testing.assert_array_equal(e.get_mahalanobis_matrix(), np.eye(64))
    t = TripletLearner(max_iter=3, random_state=0).fit(X_tr, y_tr)
    M = t.get_mahalanobis_matrix()
    a, b = X_te[0], X_te[1]
    assert np.isclose(t.get_metric()(a, b), np.sqrt((a - b) @ M @ (a - b)))
    np.testing.assert_allclose(t.transform(X_te[:3]), X_te[:3] @ t.components_.T)
    # a learner plugs into MahalanobisKNN (fitted or not) and certification
    knn = MahalanobisKNN(metric=t).fit(X_tr, y_tr)
    np.testing.assert_allclose(knn.components_, t.components_)
    radii = MahalanobisKNN(metric=ARML(max_iter=3)).fit(X_tr, y_tr).certify(X_te[:20], y_te[:20])
    assert (radii >= 0).all() and (radii > 0).sum() >= 15


@pytest.mark.parametrize("est, match", [
    (TripletLearner(k_same=0), "'k_same' parameter of TripletLearner must be an int in \\[1, inf\\)"),
    (TripletLearner(solver="newton"), "'solver' parameter of TripletLearner must be one of 'adam', 'lbfgs', 'sgd'"),
    (ARML(learn_rate=0.0), "'learn_rate'"),
    (ARML(dtype="float16"), "'dtype'"),
    (TripletLearner(k_same=5), "TripletLearner needs at least 6 points per class; label 1 has 3"),
])
def test_bad_parameters(est, match):
    X = np.random.default_rng(0).normal(size=(13, 3))
    y = np.array([0] * 10 + [1] * 3)
    with pytest.raises(ValueError, match=match):
        est.fit(X, y)


def test_bad_data():
    X = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    with pytest.raises(ValueError, match="one class only"):
        ARML(max_iter=2).fit(X, np.zeros(20))
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ARML(max_iter=2).fit(Xn, y)
    fitted = ARML(max_iter=2).fit(X, y)
    with pytest.raises(ValueError, match="X has 2 features, but ARML is expecting 3"):
        fitted.transform(X[:, :2])


# -- the shared loop: best iterate and divergence ----------------------------------------------


def _recording(f):
    """``f`` as an objective that also records every iterate it is evaluated at, with its loss."""
    seen = []

    def objective(param, epoch):
        loss = f(param)
        seen.append((param.detach().clone().numpy(), float(loss.detach())))
        return loss

    return objective, seen


def test_minimize_returns_the_best_iterate():
    # subgradient steps of 0.3 on |x - 1| from 0 overshoot and then cycle: 0, .3, .6, .9, 1.2, .9, ...
    objective, seen = _recording(lambda x: (x - 1.0).abs().sum())
    param, n_iter = minimize(objective, np.zeros((1, 1)), solver="sgd", learning_rate=0.3, max_iter=100,
                             tol=1e-6, n_iter_no_change=4)
    assert n_iter < 100
    losses = [v for _, v in seen]
    assert losses[-1] > min(losses)  # the last iterate is not the best one ...
    np.testing.assert_array_equal(param, seen[int(np.argmin(losses))][0])  # ... the best one is returned
    # without early stopping (re-sampled objectives) the last iterate comes back, as a plain loop gives
    x = 0.0
    for _ in range(7):
        x -= 0.3 * np.sign(x - 1.0)
    param, _ = minimize(lambda p, e: (p - 1.0).abs().sum(), np.zeros((1, 1)), solver="sgd", learning_rate=0.3,
                        max_iter=7)
    np.testing.assert_allclose(param, [[x]])


@pytest.mark.parametrize("tol, keep_best", [(1e-4, None), (0.0, True)])
def test_minimize_warns_when_the_steps_diverge(tol, keep_best):
    # x <- x - 1.5 * 2x = -2x: the loss x^2 quadruples every step and never goes below its start
    with pytest.warns(ConvergenceWarning, match="never went below its initial value 1 in 5 iterations"):
        param, _ = minimize(lambda p, e: (p**2).sum(), np.ones((1, 1)), solver="sgd", learning_rate=1.5,
                            max_iter=5, tol=tol, n_iter_no_change=10, keep_best=keep_best)
    np.testing.assert_array_equal(param, [[1.0]])  # the initial point, not (-2)^5
    # without keep_best (losses of re-sampled objectives are not comparable): the last iterate, no check
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        param, _ = minimize(lambda p, e: (p**2).sum(), np.ones((1, 1)), solver="sgd", learning_rate=1.5,
                            max_iter=5)
    np.testing.assert_array_equal(param, [[(-2.0) ** 5]])


def test_minimize_no_warning_when_flat_or_converging():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minimize(lambda p, e: (0.0 * p).sum(), np.ones((2, 2)), solver="sgd", learning_rate=1.0, max_iter=50,
                 tol=1e-4)  # a zero gradient: stationary from the start, not diverging
        param, _ = minimize(lambda p, e: ((p - 2.0) ** 2).sum(), np.zeros((1, 1)), solver="sgd", learning_rate=0.1,
                            max_iter=500, tol=1e-9)
    np.testing.assert_allclose(param, [[2.0]], atol=1e-3)


def test_diverging_lmnn_pl_fit_warns_and_keeps_the_identity():
    from sklearn.datasets import load_wine
    from sklearn.preprocessing import Normalizer, StandardScaler

    from robust_metric_learning.learners import LMNNPL

    X, y = load_wine(return_X_y=True)
    X = Normalizer().fit_transform(StandardScaler().fit_transform(X))
    # the published step of 50 with lambda = 10, tau = 0.8: every step raises the objective
    with pytest.warns(ConvergenceWarning, match="LMNNPL: the loss never went below"):
        m = LMNNPL(perturbation=PerturbationLoss(tau=0.8, weight=10.0), learn_rate=50.0).fit(X, y)
    np.testing.assert_allclose(m.get_mahalanobis_matrix(), np.eye(13), atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = LMNNPL(perturbation=PerturbationLoss(tau=0.8, weight=10.0), learn_rate=50.0 / 8).fit(X, y)
    assert np.abs(m.get_mahalanobis_matrix() - np.eye(13)).max() > 0.1


def test_metric_learn_pair_methods_and_squared_metric():
    """pair_distance / pair_score / get_metric(squared=...) as metric-learn 0.7 defines them."""
    from robust_metric_learning import LMNN, NCA

    X, y = load_iris(return_X_y=True)
    rng = np.random.default_rng(0)
    for est in (NCA(max_iter=20, random_state=0).fit(X, y), LMNN(max_iter=5, random_state=0).fit(X, y)):
        M = est.get_mahalanobis_matrix()
        pairs = X[rng.integers(0, len(X), size=(12, 2))]
        diff = pairs[:, 0] - pairs[:, 1]
        ref = np.sqrt(np.einsum("ij,jk,ik->i", diff, M, diff))
        np.testing.assert_allclose(est.pair_distance(pairs), ref, rtol=1e-10)
        np.testing.assert_allclose(est.pair_score(pairs), -ref, rtol=1e-10)
        d, d2 = est.get_metric(), est.get_metric(squared=True)
        assert d(*pairs[0]) == pytest.approx(ref[0]) and d2(*pairs[0]) == pytest.approx(ref[0] ** 2)
        for bad, match in ((pairs[:, :1], r"pairs must be an array of shape \(n_pairs, 2, 4\)"),
                           (pairs[..., :3], r"got shape \(12, 2, 3\)"), (np.full((1, 2, 4), np.nan), "pairs contains NaN"),
                           ([[["a"] * 4] * 2], "pairs must be a numeric array")):
            with pytest.raises(ValueError, match=match):
                est.pair_distance(bad)
        with pytest.raises(ValueError, match="squared must be True or False"):
            est.get_metric(squared="yes")
