"""ITML and LFDA: accuracy on digits, the algorithms against loop references, robustness."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits, load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier

from robust_metric_learning.learners import lfda as lfda_module
from robust_metric_learning.learners.itml import ITML, _itml_projections, _sample_pairs
from robust_metric_learning.learners.lfda import LFDA, _generalized_eigh, _local_scatter


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    lo, hi = X.min(axis=0), X.max(axis=0)
    X = (X - lo) / np.where(hi > lo, hi - lo, 1.0)  # constant features (pixel 0) map to 0
    return train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)


def _feasible_toy(seed=0, n=40):
    """3 classes apart in the first 3 dims, pure noise in the last 3: the bounds are reachable."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n)
    X = np.hstack([3 * np.eye(3)[y] + 0.1 * rng.standard_normal((3 * n, 3)), 2 * rng.standard_normal((3 * n, 3))])
    return X, y


def _sq_dists(X, pairs, M):
    D = X[pairs[:, 0]] - X[pairs[:, 1]]
    return np.einsum("ij,jk,ik->i", D, M, D)


# --------------------------------------------------------------------------- digits


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("learner", [ITML(max_iter=100, random_state=0), LFDA()], ids=["ITML", "LFDA"])
def test_digits_3nn_accuracy(digits, learner):
    Xtr, Xte, ytr, yte = digits
    learner.fit(Xtr, ytr)
    L = learner.components_
    assert np.isrealobj(L) and L.dtype == np.float64 and np.isfinite(L).all()
    knn = KNeighborsClassifier(3).fit(learner.transform(Xtr), ytr)
    assert knn.score(learner.transform(Xte), yte) >= 0.95


# --------------------------------------------------------------------------- ITML


def _itml_loop_reference(V, similar, M0, u, l, gamma, n_pass):
    """Algorithm 1 of Davis et al. (as in the authors' code), one constraint at a time."""
    M = M0.copy()
    lam = np.zeros(len(V))
    bhat = np.where(similar, u, l).astype(float)
    gp = gamma / (gamma + 1)
    for _ in range(n_pass):
        for i, v in enumerate(V):
            p = v @ M @ v
            if p <= 1e-12 * max(u, l):
                continue
            delta = 1.0 if similar[i] else -1.0
            alpha = min(lam[i], delta * gp * (1 / p - 1 / bhat[i]))
            beta = delta * alpha / (1 - delta * alpha * p)
            bhat[i] = 1 / (1 / bhat[i] + delta * alpha / gamma)
            lam[i] -= alpha
            M = M + beta * np.outer(M @ v, M @ v)
    return M


@st.composite
def _itml_problems(draw):
    d = draw(st.integers(1, 5))
    m = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    V = rng.standard_normal((m, d)) * draw(st.sampled_from([1e-3, 1.0, 1e3]))
    V[rng.random(m) < 0.2] = 0.0  # duplicate points
    similar = rng.random(m) < 0.5
    B = rng.standard_normal((d, d))
    M0 = B @ B.T + draw(st.sampled_from([0.0, 1e-6, 1.0])) * np.eye(d)  # possibly singular prior
    sq = np.einsum("ij,jk,ik->i", V, M0, V)
    sq = sq[sq > 0] if (sq > 0).any() else np.ones(1)
    u, l = np.percentile(sq, 10), np.percentile(sq, 90)
    gamma = draw(st.sampled_from([0.1, 1.0, 100.0]))
    return V, similar, M0, u, l, gamma


@settings(max_examples=60, deadline=None)
@given(_itml_problems(), st.integers(1, 4))
def test_itml_rank_one_updates_keep_M_psd_and_match_loop(problem, n_pass):
    V, similar, M0, u, l, gamma = problem
    M, n_iter, _ = _itml_projections(V, similar, M0, u=u, l=l, gamma=gamma, max_iter=n_pass, tol=0.0)
    assert np.isfinite(M).all()
    np.testing.assert_array_equal(M, M.T)
    # rounding: an update that shrinks M cancels digits at the scale of M before it
    scale = max(np.abs(M0).max(), np.abs(M).max(), 1e-300)
    assert np.linalg.eigvalsh(M).min() >= -1e-9 * scale
    ref = _itml_loop_reference(V, similar, M0, u, l, gamma, n_iter)
    np.testing.assert_allclose(M, ref, rtol=1e-6, atol=1e-9 * scale)


def test_itml_satisfies_feasible_constraints():
    X, y = _feasible_toy()
    itml = ITML(1000.0, random_state=0).fit(X, y)
    pos, neg = itml._make_pairs(y, np.random.default_rng(0))  # the same pairs as fit drew
    M = itml.get_mahalanobis_matrix()
    u, l = itml.bounds_
    assert u < l
    assert (_sq_dists(X, pos, M) <= u).mean() >= 0.9
    assert (_sq_dists(X, neg, M) >= l).mean() >= 0.9


def test_itml_default_gamma_improves_constraints_over_prior():
    X, y = _feasible_toy(seed=1)
    itml = ITML(random_state=0).fit(X, y)
    pos, neg = itml._make_pairs(y, np.random.default_rng(0))
    u, l = itml.bounds_

    def satisfied(M):
        return np.r_[_sq_dists(X, pos, M) <= u, _sq_dists(X, neg, M) >= l].mean()

    assert satisfied(itml.get_mahalanobis_matrix()) > satisfied(np.eye(X.shape[1])) + 0.2


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_itml_metric_is_symmetric_psd_and_scale_equivariant():
    X, y = load_iris(return_X_y=True)
    a = ITML(bounds="squared", random_state=0, max_iter=200).fit(X, y)
    b = ITML(bounds="squared", random_state=0, max_iter=200).fit(10.0 * X, y)
    M = a.get_mahalanobis_matrix()
    np.testing.assert_allclose(M, M.T, atol=1e-12)
    assert np.linalg.eigvalsh(M).min() >= -1e-10 * np.abs(M).max()
    np.testing.assert_allclose(b.bounds_, 100.0 * a.bounds_, rtol=1e-10)
    np.testing.assert_allclose(b.get_mahalanobis_matrix(), M, rtol=1e-6, atol=1e-9 * np.abs(M).max())
    assert a.components_.shape == (4, 4) and a.n_iter_ == 200


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_itml_reproducible_and_bounds_and_priors():
    X, y = load_iris(return_X_y=True)
    a = ITML(random_state=3, n_constraints=50, max_iter=100).fit(X, y)
    b = ITML(random_state=3, n_constraints=50, max_iter=100).fit(X, y)
    np.testing.assert_array_equal(a.components_, b.components_)
    c = ITML(bounds=(1.0, 20.0), random_state=0, max_iter=100).fit(X, y)
    np.testing.assert_array_equal(c.bounds_, [1.0, 20.0])
    Xc = np.c_[X, np.zeros(len(X)), X[:, 0]]  # constant and duplicated feature: singular covariance
    for prior in ["covariance", "random", np.diag([1.0, 2.0, 3.0, 4.0, 0.5, 1.0])]:
        L = ITML(prior=prior, random_state=0, max_iter=100).fit(Xc, y).components_
        assert np.isfinite(L).all() and L.shape == (6, 6)
    # a singular array prior is refused (LogDet is undefined; the metric could never leave its range)
    for w0 in (0.0, 1e-20, -1e-20):
        with pytest.raises(np.linalg.LinAlgError, match=r"'prior' parameter of ITML must be positive definite"):
            ITML(prior=np.diag([1.0, 2.0, 3.0, 4.0, w0, 1.0]), max_iter=10).fit(Xc, y)


def test_itml_default_bounds_are_distance_percentiles():
    X, y = load_iris(return_X_y=True)
    itml = ITML(random_state=0, max_iter=1, n_constraints=30)
    with pytest.warns(ConvergenceWarning):
        itml.fit(X, y)
    pos, neg = itml._make_pairs(y, np.random.default_rng(0))  # the same pairs as fit drew
    P = np.unique(X[np.unique(np.r_[pos, neg])], axis=0)
    D = np.sqrt(((P[:, None] - P[None]) ** 2).sum(-1))[np.triu_indices(len(P), 1)]
    np.testing.assert_allclose(itml.bounds_, np.percentile(D, [5, 95]), rtol=1e-12)
    sq = ITML(bounds="squared", random_state=0, max_iter=1, n_constraints=30)
    with pytest.warns(ConvergenceWarning):
        sq.fit(X, y)
    np.testing.assert_allclose(sq.bounds_, np.percentile(D**2, [5, 95]), rtol=1e-12)


def test_itml_convergence_warning():
    X, y = load_iris(return_X_y=True)
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        ITML(max_iter=1, random_state=0).fit(X, y)


def test_sample_pairs():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), [1, 2, 30, 40])
    for same in (True, False):
        for n_pairs in (5, 300, 10**6):  # sparse, dense and capped regimes
            P = _sample_pairs(y, n_pairs, same=same, rng=rng)
            assert P.shape[1] == 2 and (P[:, 0] < P[:, 1]).all()
            assert len(np.unique(P, axis=0)) == len(P)
            assert ((y[P[:, 0]] == y[P[:, 1]]) == same).all()
            counts = np.bincount(y)
            total = (counts * (counts - 1)).sum() // 2 if same else (len(y) ** 2 - (counts**2).sum()) // 2
            assert len(P) == min(n_pairs, total)
    assert _sample_pairs(np.arange(5), 10, same=True, rng=rng).shape == (0, 2)  # singletons only


# --------------------------------------------------------------------------- LFDA


def _scatter_loop_reference(X, y, k):
    """Sugiyama's pairwise definitions, S = 1/2 sum_ij W_ij (x_i - x_j)(x_i - x_j)^T."""
    n, d = X.shape
    sigma = np.empty(n)
    for i in range(n):
        same = np.flatnonzero(y == y[i])
        dist = np.sort(np.linalg.norm(X[same] - X[i], axis=1))
        sigma[i] = dist[min(k, len(same) - 1)]
    S_w, S_b = np.zeros((d, d)), np.zeros((d, d))
    for i in range(n):
        for j in range(n):
            diff = np.outer(X[i] - X[j], X[i] - X[j])
            if y[i] == y[j]:
                a = np.exp(-np.sum((X[i] - X[j]) ** 2) / (sigma[i] * sigma[j]))
                nc = np.sum(y == y[i])
                S_w += 0.5 * a / nc * diff
                S_b += 0.5 * a * (1 / n - 1 / nc) * diff
            else:
                S_b += 0.5 / n * diff
    return S_b, S_w


def test_lfda_scatter_matches_loop_reference_and_blocks(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((23, 3)) + 5.0
    y = np.repeat([0, 1, 2], [10, 9, 4])
    S_b, S_w = _local_scatter(X, y, 3)
    R_b, R_w = _scatter_loop_reference(X, y, 3)
    np.testing.assert_allclose(S_w, R_w, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(S_b, R_b, rtol=1e-10, atol=1e-10)
    monkeypatch.setattr(lfda_module, "_BLOCK_ENTRIES", 7)  # force row blocks
    B_b, B_w = _local_scatter(X, y, 3)
    np.testing.assert_allclose(B_w, S_w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(B_b, S_b, rtol=1e-12, atol=1e-12)


def _degenerate_datasets():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((30, 4))
    y = np.repeat([0, 1, 2], 10)
    base = np.c_[X, np.full(30, 3.0), X[:, 1], 2 * X[:, 2]]  # constant, duplicated, collinear
    return {
        "constant+collinear": (base, y),
        "duplicate points": (np.repeat(X[:6], 8, axis=0), np.repeat([0, 1, 0, 1, 2, 2], 8)),
        "singleton classes": (X[:6], np.arange(6)),
        "classes of 1-2 points": (X[:5], np.array([0, 0, 1, 2, 2])),
        "all points equal": (np.ones((8, 3)), np.repeat([0, 1], 4)),
        "one feature": (X[:, :1], y),
    }


@pytest.mark.parametrize("embedding_type", ["weighted", "orthonormalized", "plain"])
@pytest.mark.parametrize("name", list(_degenerate_datasets()))
def test_lfda_degenerate_data_finite_real(name, embedding_type):
    X, y = _degenerate_datasets()[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning (overflow, invalid) either
        lfda = LFDA(embedding_type=embedding_type, k=3).fit(X, y)
        T = lfda.transform(X)
    assert np.isrealobj(lfda.components_) and np.isfinite(lfda.components_).all()
    assert np.isfinite(T).all() and T.shape == X.shape
    assert np.isfinite(lfda.eigenvalues_).all()


def test_lfda_separates_two_gaussians():
    rng = np.random.default_rng(0)
    n = 100
    y = np.repeat([0, 1], n)
    X = rng.standard_normal((2 * n, 5)) * [0.3, 3, 3, 3, 3]
    X[:, 0] += np.where(y == 1, 2.0, -2.0)  # classes differ along a low-variance axis only
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.5, stratify=y, random_state=0)
    lfda = LFDA(n_components=1).fit(Xtr, ytr)
    acc = KNeighborsClassifier(1).fit(lfda.transform(Xtr), ytr).score(lfda.transform(Xte), yte)
    assert acc >= 0.95
    assert abs(lfda.components_[0, 0]) > 5 * np.abs(lfda.components_[0, 1:]).max()


def test_lfda_embedding_types():
    X, y = load_iris(return_X_y=True)
    S_b, S_w = _local_scatter(X, np.unique(y, return_inverse=True)[1], 7)
    vals, _ = _generalized_eigh(S_b, S_w)
    ridge = 1e-6 * np.trace(S_w) / 4
    plain = LFDA(embedding_type="plain", n_components=3, k=7).fit(X, y).components_
    ortho = LFDA(embedding_type="orthonormalized", n_components=3, k=7).fit(X, y).components_
    weighted = LFDA(n_components=3, k=7).fit(X, y)
    # plain: rows are generalised eigenvectors, L (S_w + ridge I) L^T = I, S_b v = lambda S_w v
    np.testing.assert_allclose(plain @ (S_w + ridge * np.eye(4)) @ plain.T, np.eye(3), atol=1e-8)
    np.testing.assert_allclose(S_b @ plain.T, (S_w + ridge * np.eye(4)) @ plain.T * vals[:3], atol=1e-8)
    assert (np.diff(weighted.eigenvalues_) <= 0).all()
    # orthonormalized: orthonormal rows spanning the same subspace, L L^T = I
    np.testing.assert_allclose(ortho @ ortho.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(ortho.T @ (ortho @ plain.T), plain.T, atol=1e-8)
    # weighted: eigenvectors scaled by sqrt(max(lambda, 0))
    np.testing.assert_allclose(weighted.components_, np.sqrt(np.clip(vals[:3], 0, None))[:, None] * plain)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "learner, param",
    [
        (ITML(gamma=0.0), "gamma"),
        (ITML(gamma=-1.0), "gamma"),
        (ITML(max_iter=0), "max_iter"),
        (ITML(tol=-1.0), "tol"),
        (ITML(n_constraints=0), "n_constraints"),
        (ITML(prior="bogus"), "prior"),
        (ITML(prior=-np.eye(4)), "prior"),
        (ITML(prior=np.eye(3)), "prior"),
        (ITML(bounds=(1.0,)), "bounds"),
        (ITML(bounds="plain"), "bounds"),
        (ITML(bounds=(1.0, np.nan)), "bounds"),
        (LFDA(k=0), "'k'"),
        (LFDA(embedding_type="bogus"), "embedding_type"),
        (LFDA(n_components=5), "n_components"),
        (LFDA(n_components=0), "n_components"),
    ],
)
def test_bad_parameters_name_the_parameter(learner, param):
    X, y = load_iris(return_X_y=True)
    with pytest.raises(ValueError, match=param):
        learner.fit(X, y)


@pytest.mark.parametrize("learner", [ITML(), LFDA()], ids=["ITML", "LFDA"])
def test_bad_data(learner):
    X, y = load_iris(return_X_y=True)
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(ValueError, match="X"):
        learner.fit(Xn, y)
    with pytest.raises(ValueError, match="one class"):
        learner.fit(X, np.zeros(len(X)))
