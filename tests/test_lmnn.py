"""LMNN and LMNN-PL: estimator checks, digits accuracy, gradients, the impostor search, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from robust_metric_learning.datasets import load_dataset
from robust_metric_learning.learners.lmnn import LMNN, active_triplets
from robust_metric_learning.learners.lmnn_pl import LMNNPL, _psd_projection, make_lmnn_pl
from robust_metric_learning.learners.triplet import PerturbationLoss
from robust_metric_learning.margin import class_neighbors, margin
from robust_metric_learning.neighbors import MahalanobisKNN


def _objective(est, X, y, param):
    """The estimator's full objective at ``param`` (impostors searched at ``param``)."""
    Xt = torch.as_tensor(X, dtype=torch.float64)
    codes = torch.as_tensor(np.unique(y, return_inverse=True)[1])
    est.classes_ = np.unique(y)
    est._state = est._prepare(Xt, codes)
    try:
        P = torch.as_tensor(param, dtype=torch.float64)
        return float(est._objective(P, Xt, est._sample(Xt, codes, P, None, {})))
    finally:
        del est._state


def _small_problem(seed=0, n=30, d=4, n_classes=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.arange(n) % n_classes
    return X, y, rng


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def digits_lmnn(digits):
    X_tr, y_tr, _, _ = digits
    return LMNN().fit(X_tr, y_tr)


# -- scikit-learn compatibility ------------------------------------------------------------


@pytest.mark.parametrize("est", [LMNN(n_neighbors=1, max_iter=5), LMNNPL(n_neighbors=1, n_impostors=1, max_iter=5)],
                         ids=["LMNN", "LMNNPL"])
def test_estimator_checks(est):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        results = check_estimator(est, on_fail=None)
    failed = [f"{r['check_name']}: {r['exception']!r}" for r in results if r["status"] == "failed"]
    assert not failed, "\n".join(failed)


# -- it learns -------------------------------------------------------------------------------


def test_digits_3nn_accuracy(digits, digits_lmnn):
    X_tr, y_tr, X_te, y_te = digits
    knn = MahalanobisKNN(n_neighbors=3, metric=digits_lmnn).fit(X_tr, y_tr)
    assert knn.score(X_te, y_te) >= 0.97
    assert digits_lmnn.components_.shape == (64, 64)
    assert 1 <= digits_lmnn.n_iter_ <= digits_lmnn.max_iter


def test_objective_decreases(digits, digits_lmnn):
    X_tr, y_tr, _, _ = digits
    est = digits_lmnn
    start = _objective(est, X_tr, y_tr, np.eye(64))
    end = _objective(est, X_tr, y_tr, est.components_)
    assert end < 0.5 * start


def test_objective_decreases_with_perturbation_loss():
    X, y, _, _ = load_dataset("wine")
    est = LMNN(perturbation=PerturbationLoss(tau=0.5, weight=1.0), max_iter=50).fit(X, y)
    assert _objective(est, X, y, est.components_) < _objective(est, X, y, np.eye(X.shape[1]))


def test_auto_step_follows_the_dimension(digits):
    assert LMNN()._learning_rate(16) == LMNN()._learning_rate(64) == 0.03
    assert LMNN()._learning_rate(256) == 4 / 256
    assert LMNN(learn_rate=0.5)._learning_rate(784) == 0.5
    # digits upsampled to 24 x 24 pixels: Adam's fixed step of 0.03 only raises the objective
    X_tr, y_tr, _, _ = digits
    X = np.kron(X_tr[:300].reshape(-1, 8, 8), np.ones((3, 3))).reshape(300, 576)
    y = y_tr[:300]
    with pytest.warns(ConvergenceWarning, match="LMNN: the loss never went below its initial value"):
        fixed = LMNN(learn_rate=0.03, max_iter=60).fit(X, y)
    np.testing.assert_array_equal(fixed.components_, np.eye(576))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = LMNN(max_iter=200).fit(X, y)
    assert _objective(auto, X, y, auto.components_) < 0.1 * _objective(auto, X, y, np.eye(576))


def test_resample_every_and_float32():
    X, y, _, _ = load_dataset("iris")
    ref = LMNN(max_iter=30, convergence_tol=0).fit(X, y)
    for est in (LMNN(max_iter=30, convergence_tol=0, resample_every=3), LMNN(max_iter=30, convergence_tol=0, dtype="float32")):
        est.fit(X, y)
        assert np.isfinite(est.components_).all()
        assert _objective(est, X, y, est.components_) < _objective(est, X, y, np.eye(4))
    # float32 follows the float64 path closely
    np.testing.assert_allclose(est.components_, ref.components_, atol=1e-3)


def test_init_array_is_the_start():
    X, y, _, _ = load_dataset("iris")
    L0 = np.diag([1.0, 2.0, 3.0, 4.0])[:2]  # (2, 4): a rank-2 L
    est = LMNN(init=L0, max_iter=1, learn_rate=1e-9, convergence_tol=0).fit(X, y)
    assert est.components_.shape == (2, 4)
    np.testing.assert_allclose(est.components_, L0, atol=1e-6)
    assert est.transform(X).shape == (X.shape[0], 2)


# -- LMNN-PL ----------------------------------------------------------------------------------


def test_lmnn_pl_pipeline_fits_and_is_finite(digits):
    X_tr, y_tr, X_te, y_te = digits
    pipe = make_lmnn_pl(regularization=0.5, lam=1.0, tau=0.5).fit(X_tr, y_tr)
    assert [name for name, _ in pipe.steps] == ["scale", "normalize", "lmnn"]
    Z = pipe.transform(X_te)
    assert Z.shape == (X_te.shape[0], 64) and np.isfinite(Z).all()
    lmnn = pipe.named_steps["lmnn"]
    M = lmnn.get_mahalanobis_matrix()
    assert np.linalg.eigvalsh(M).min() > -1e-9 * np.abs(M).max()
    # classify and certify with MahalanobisKNN after the same preprocessing
    knn = make_pipeline(StandardScaler(), Normalizer(), MahalanobisKNN(3, metric=lmnn)).fit(X_tr, y_tr)
    assert knn.score(X_te, y_te) >= 0.95
    pre = knn[:-1]
    radii = knn[-1].certify(pre.transform(X_te[:20]), y_te[:20], method="bound")
    assert np.isfinite(radii).all() and (radii >= 0).all()


def test_lmnn_pl_objective_decreases_and_pl_enlarges_margins():
    X, y, _, _ = load_dataset("wine")
    Xp = Normalizer().fit_transform(StandardScaler().fit_transform(X))
    plain = LMNNPL(max_iter=100, convergence_tol=0).fit(Xp, y)
    robust = LMNNPL(perturbation=PerturbationLoss(tau=0.5, weight=1.0), max_iter=100, convergence_tol=0).fit(Xp, y)
    I = np.eye(X.shape[1])
    assert _objective(robust, Xp, y, robust.get_mahalanobis_matrix()) < _objective(robust, Xp, y, I)

    def median_margin(est):
        Xt = torch.as_tensor(Xp)
        codes = torch.as_tensor(y)
        est.classes_ = np.unique(y)
        est._state = est._prepare(Xt, codes)
        try:
            return float(est._margins(torch.as_tensor(est.get_mahalanobis_matrix()), Xt, None).median())
        finally:
            del est._state

    assert median_margin(robust) > median_margin(plain)


def test_psd_projection():
    rng = np.random.default_rng(0)
    A = torch.as_tensor(rng.normal(size=(6, 6)))
    P = _psd_projection(A)
    assert torch.allclose(P, P.T)
    assert torch.linalg.eigvalsh(P).min() > -1e-12
    assert torch.allclose(_psd_projection(P), P, atol=1e-12)
    S = A @ A.T  # already PSD: unchanged
    assert torch.allclose(_psd_projection(S), S, atol=1e-10)


# -- gradients and the triplet machinery against references ----------------------------------


def test_gradcheck_lmnn_objective():
    X, y, rng = _small_problem(n=12, d=3)
    Xt = torch.as_tensor(X)
    codes = torch.as_tensor(y)
    est = LMNN(n_neighbors=2, perturbation=PerturbationLoss(tau=0.8, weight=2.0))
    est.classes_ = np.unique(y)
    est._state = est._prepare(Xt, codes)
    targets = est._state["targets"]
    # fixed triplets: every anchor x target x other-class point
    trip = [(i, int(j), l) for i in range(12) for j in targets[i] for l in range(12) if y[l] != y[i]]
    trip = tuple(torch.as_tensor(c) for c in zip(*trip))
    L = torch.as_tensor(rng.normal(size=(3, 3)), dtype=torch.float64).requires_grad_()
    pl = est.perturbation(est._margins(L.detach(), Xt, trip))
    assert 0 < float(pl) and (est._margins(L.detach(), Xt, trip) > 0).any()  # the PL term is live
    assert torch.autograd.gradcheck(lambda P: est._objective(P, Xt, trip), (L,), eps=1e-6, atol=1e-5)


def test_gradcheck_lmnn_pl_objective():
    X, y, rng = _small_problem(n=15, d=3)
    Xp = X / np.linalg.norm(X, axis=1, keepdims=True)
    Xt = torch.as_tensor(Xp)
    est = LMNNPL(n_neighbors=2, n_impostors=3, perturbation=PerturbationLoss(tau=0.5, weight=1.5))
    est.classes_ = np.unique(y)
    est._state = est._prepare(Xt, torch.as_tensor(y))
    A = rng.normal(size=(3, 3))
    M = torch.as_tensor(A @ A.T + 0.1 * np.eye(3)).requires_grad_()
    trip = est._state["trip"]
    assert torch.autograd.gradcheck(lambda P: est._objective(P, Xt, trip), (M,), eps=1e-6, atol=1e-5)


def test_margins_equal_the_margin_formula():
    X, y, rng = _small_problem(n=20, d=4)
    Xt = torch.as_tensor(X)
    codes = torch.as_tensor(y)
    A = rng.normal(size=(4, 4))
    M = torch.as_tensor(A @ A.T)
    L = torch.as_tensor(np.linalg.cholesky(A @ A.T).T)  # L.T @ L = M
    # LMNN (parameter L) over its active triplets
    est = LMNN(n_neighbors=2)
    est.classes_ = np.unique(y)
    est._state = est._prepare(Xt, codes)
    a, p, q = trip = est._sample(Xt, codes, L, None, {})
    assert a.numel() > 0
    torch.testing.assert_close(est._margins(L, Xt, trip), margin(Xt[a], Xt[p], Xt[q], M))
    # LMNNPL (parameter M) over its fixed (i, j, l) triplets, in the order of est._state["trip"]
    pl = LMNNPL(n_neighbors=2, n_impostors=4)
    pl.classes_ = np.unique(y)
    pl._state = pl._prepare(Xt, codes)
    a, p, q = pl._state["trip"]
    assert a.numel() == 20 * 2 * 4
    torch.testing.assert_close(pl._margins(M, Xt, None), margin(Xt[a], Xt[p], Xt[q], M))


def _brute_force_triplets(Z, y, targets, margin_, slack=0.0):
    out = []
    n = len(Z)
    for i in range(n):
        for j in targets[i]:
            d_ij = np.sum((Z[i] - Z[j]) ** 2)
            for l in range(n):
                if y[l] != y[i] and np.sum((Z[i] - Z[l]) ** 2) < d_ij + margin_ + slack:
                    out.append((i, int(j), l))
    return sorted(out)


@pytest.mark.parametrize("slack", [0.0, 0.5])
def test_impostor_search_equals_brute_force(slack):
    X, y, rng = _small_problem(n=60, d=5, n_classes=4)
    L = rng.normal(size=(5, 5)) * 0.6
    Z = X @ L.T
    targets, _ = class_neighbors(torch.as_tensor(X), torch.as_tensor(y), 3, 0)  # Euclidean, as in LMNN
    ref = _brute_force_triplets(Z, y, targets.numpy(), 1.0, slack)
    assert 0 < len(ref) < 60 * 3 * 45  # some, not all, are active
    for budget in (1 << 30, 2000):  # one block, and many small ones
        a, p, q = active_triplets(torch.as_tensor(Z), torch.as_tensor(y), targets, margin=1.0, slack=slack,
                                  memory_budget=budget)
        assert sorted(zip(a.tolist(), p.tolist(), q.tolist())) == ref


def test_impostor_search_is_exact_where_float32_cannot_tell():
    rng = np.random.default_rng(3)
    y = np.arange(80) % 3
    # integer points: many triplets sit exactly on the hinge (d_il == d_ij + 1, not active)
    Xi = rng.integers(0, 3, size=(80, 3)).astype(float)
    # a large offset: float32 rounding of the expanded distances is far coarser than the gaps
    Xo = 1e4 + rng.normal(size=(80, 3))
    for X in (Xi, Xo):
        Z = torch.as_tensor(X)
        targets, _ = class_neighbors(Z, torch.as_tensor(y), 2, 0)
        ref = _brute_force_triplets(X, y, targets.numpy(), 1.0)
        a, p, q = active_triplets(Z, torch.as_tensor(y), targets)
        assert sorted(zip(a.tolist(), p.tolist(), q.tolist())) == ref
        if X is Xi:  # the integer case does exercise exact ties
            assert len(_brute_force_triplets(X, y, targets.numpy(), 1.0 + 1e-9)) > len(ref)


def test_targets_are_euclidean_same_class_neighbours():
    X, y, _ = _small_problem(n=30, d=3)
    est = LMNN(n_neighbors=2)
    est.classes_ = np.unique(y)
    targets = est._prepare(torch.as_tensor(X), torch.as_tensor(y))["targets"].numpy()
    for i in range(30):
        same = [j for j in range(30) if y[j] == y[i] and j != i]
        d = [np.sum((X[i] - X[j]) ** 2) for j in same]
        assert set(targets[i]) == {same[t] for t in np.argsort(d)[:2]}


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("est, match", [
    (LMNN(n_neighbors=0), "'n_neighbors'"),
    (LMNN(regularization=1.5), "'regularization'"),
    (LMNN(regularization=-0.1), "'regularization'"),
    (LMNN(perturbation=PerturbationLoss(tau=0.0)), "'tau'"),
    (LMNN(perturbation=PerturbationLoss(tau=-1.0)), "'tau'"),
    (LMNN(perturbation=PerturbationLoss(weight=-1.0)), "'weight'"),
    (LMNN(solver="lbfgs"), "'solver'"),
    (LMNN(init="bogus"), "'init'"),
    (LMNN(learn_rate=0), "'learn_rate'"),
    (LMNN(learn_rate="fast"), "'learn_rate'"),
    (LMNN(solver="sgd"), "learn_rate='auto' is a step for solver='adam'; give a number for solver='sgd'"),
    (LMNNPL(learn_rate="auto"), "'learn_rate'"),
    (LMNNPL(n_impostors=0), "'n_impostors'"),
    (LMNNPL(regularization=2), "'regularization'"),
    (LMNNPL(perturbation=PerturbationLoss(weight=-0.5)), "'weight'"),
])
def test_bad_parameters(est, match):
    X, y, _ = _small_problem()
    with pytest.raises(ValueError, match=match):
        est.fit(X, y)


def test_class_of_n_neighbors_points():
    """As metric-learn: a class needs n_neighbors points; with exactly n_neighbors, each point's
    last target is itself (LMNNPL, whose triplets pair every target with impostors, needs one more)."""
    X, y, _ = _small_problem(n=30)
    y = y.copy()
    y[y == 2] = 1
    y[:3] = 2  # class 2 has 3 points: enough for n_neighbors=3 (2 mates + itself), not for 4
    LMNN(n_neighbors=3, max_iter=2).fit(X, y)
    from robust_metric_learning.learners.lmnn import _targets

    Xt, codes = torch.as_tensor(X), torch.as_tensor(np.unique(y, return_inverse=True)[1])
    t = _targets(Xt, codes, 3, 2**20)
    small = np.flatnonzero(y == 2)
    for i in small:
        assert set(t[i, :2].tolist()) == set(small) - {i} and int(t[i, 2]) == i
    big = np.flatnonzero(y != 2)
    assert (t[big] != torch.as_tensor(big).unsqueeze(1)).all()  # no self target in the large classes
    with pytest.raises(ValueError, match=r"n_neighbors=4 .* at least 4 points .* class 2 has 3"):
        LMNN(n_neighbors=4).fit(X, y)
    with pytest.raises(ValueError, match=r"n_neighbors=3 .* at least 4 points .* class 2 has 3"):
        LMNNPL(n_neighbors=3).fit(X, y)


def test_too_many_impostors_and_bad_init():
    X, y, _ = _small_problem(n=30)
    with pytest.raises(ValueError, match=r"n_impostors=25 .* 20 points"):
        LMNNPL(n_impostors=25).fit(X, y)
    with pytest.raises(ValueError, match=r"'init' parameter of LMNN must be an array of shape \(n_components, 4\)"):
        LMNN(init=np.eye(3)).fit(X, y)
