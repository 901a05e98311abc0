"""Exactness and soundness of the certification (DESIGN §2-§3), against independent references."""

import numpy as np
import pytest
import quadprog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import random_psd
from robust_metric_learning import certified_radius_knn, exact_radius_1nn, robust_error_curve
from robust_metric_learning.neighbors import MahalanobisKNN


# ------------------------------------------------------------------ independent references


def sqd(a, b, M):
    diff = a - b
    return float(diff @ M @ diff)


def oracle_exact(X_train, y_train, x, y, M):
    """min over negatives of the per-negative QP, each solved by quadprog (Goldfarb-Idnani)."""
    d = np.array([sqd(x, xi, M) for xi in X_train])
    if y_train[np.lexsort((np.arange(len(d)), d))[0]] != y:
        return 0.0
    P, N = X_train[y_train == y], X_train[y_train != y]
    best = np.inf
    for xj in N:
        A = np.array([2 * M @ (xi - xj) for xi in P])
        b = np.array([sqd(x, xi, M) - sqd(x, xj, M) for xi in P])
        keep = np.linalg.norm(A, axis=1) > 1e-12  # 0 <= 0 rows are always satisfied
        # quadprog: min 1/2 z^T G z - a^T z  s.t.  C^T z >= b
        z = quadprog.solve_qp(np.eye(x.size), np.zeros(x.size), -A[keep].T, -b[keep], 0)[0]
        best = min(best, float(np.linalg.norm(z)))
    return best


def brute_bound(X_train, y_train, x, y, M, k):
    """The K-NN bound formula evaluated literally, with explicit loops over pairs."""
    d = np.array([sqd(x, xi, M) for xi in X_train])
    order = np.lexsort((np.arange(len(d)), d))[:k]
    labels, counts = np.unique(y_train[order], return_counts=True)
    if labels[np.argmax(counts)] != y:
        return 0.0
    s = (k + 1) // 2
    P, N = X_train[y_train == y], X_train[y_train != y]
    g = []
    for xj in N:
        m = [max(0.0, (sqd(x, xj, M) - sqd(x, xi, M)) / (2 * np.linalg.norm(M @ (xi - xj)))) for xi in P]
        g.append(sorted(m, reverse=True)[s - 1])
    return sorted(g)[s - 1]




def predict(X_train, y_train, Q, M, k=1):
    return MahalanobisKNN(k, metric=M).fit(X_train, y_train).predict(Q)


# ------------------------------------------------------------------------- exactness


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(6, 30), d=st.integers(1, 5),
       n_classes=st.integers(2, 3), low_rank=st.booleans())
def test_exact_radius_equals_qp_oracle_random(seed, n, d, n_classes, low_rank):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.arange(n) % n_classes
    Q = rng.normal(size=(6, d))
    yq = rng.integers(0, n_classes, 6)
    M = random_psd(rng, d, rank=max(1, d - 1) if low_rank else None)
    radii = exact_radius_1nn(X, y, Q, yq, metric=M)
    ref = np.array([oracle_exact(X, y, Q[i], yq[i], M) for i in range(len(Q))])
    np.testing.assert_allclose(radii, ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("metric_kind", ["euclidean", "random"])
def test_exact_radius_on_digits(digits_subset, metric_kind):
    Xtr, ytr, Xte, yte = digits_subset
    M = np.eye(64) if metric_kind == "euclidean" else random_psd(np.random.default_rng(1), 64) / 64
    metric = "euclidean" if metric_kind == "euclidean" else M
    radii, X_adv = exact_radius_1nn(Xtr, ytr, Xte, yte, metric=metric, return_adversarial=True)
    ref = np.array([oracle_exact(Xtr, ytr, Xte[i], yte[i], M) for i in range(len(Xte))])
    np.testing.assert_allclose(radii, ref, rtol=1e-6, atol=1e-9)
    assert (radii > 0).sum() >= 30  # most points are correct, so the check is not vacuous

    pos = radii > 0
    delta = X_adv - Xte
    np.testing.assert_allclose(np.linalg.norm(delta, axis=1), radii, rtol=1e-9)
    for i in np.flatnonzero(pos):
        d = np.array([sqd(X_adv[i], xi, M) for xi in Xtr])
        near_pos, near_neg = d[ytr == yte[i]].min(), d[ytr != yte[i]].min()
        # on the decision boundary: nearest positive and nearest negative equidistant
        assert abs(near_pos - near_neg) <= 1e-6 * near_pos
    # pushing 1e-4 further across flips every prediction
    flipped = predict(Xtr, ytr, Xte[pos] + (1 + 1e-4) * delta[pos], M)
    assert (flipped != yte[pos]).all()
    # and stopping short (1 - 1e-4) never does
    kept = predict(Xtr, ytr, Xte[pos] + (1 - 1e-4) * delta[pos], M)
    assert (kept == yte[pos]).all()


def test_zero_radius_exactly_where_misclassified(digits_subset):
    Xtr, ytr, Xte, yte = digits_subset
    yte = yte.copy()
    yte[:5] = (yte[:5] + 1) % 10  # wrong labels: the classifier is wrong there
    radii = exact_radius_1nn(Xtr, ytr, Xte, yte)
    wrong = predict(Xtr, ytr, Xte, np.eye(64)) != yte
    assert wrong[:5].all()
    np.testing.assert_array_equal(radii == 0, wrong)


# ----------------------------------------------------------------------- soundness


def test_bound_below_exact_for_1nn(digits_subset):
    Xtr, ytr, Xte, yte = digits_subset
    M = random_psd(np.random.default_rng(2), 64, rank=20)
    for metric in ("euclidean", M):
        exact = exact_radius_1nn(Xtr, ytr, Xte, yte, metric=metric)
        bound = certified_radius_knn(Xtr, ytr, Xte, yte, n_neighbors=1, metric=metric)
        assert (bound <= exact * (1 + 1e-9)).all()
        assert (bound[exact > 0] > 0).all()


@pytest.mark.parametrize("k", [1, 3, 5, 11])
def test_bound_equals_brute_force_formula_identity(digits_subset, k):
    Xtr, ytr, Xte, yte = digits_subset
    Xtr, ytr = Xtr[:150], ytr[:150]
    bound = certified_radius_knn(Xtr, ytr, Xte[:15], yte[:15], n_neighbors=k)
    ref = np.array([brute_bound(Xtr, ytr, Xte[i], yte[i], np.eye(64), k) for i in range(15)])
    np.testing.assert_allclose(bound, ref, rtol=1e-9, atol=1e-12)
    assert (ref > 0).sum() >= 8


def adversarial_directions(Xtr, ytr, x, y, M, n_dirs=20):
    """Directions an attacker would try: towards other-class points, and the normals of the
    half-spaces that define the bound (where a negative overtakes a positive fastest)."""
    d = np.einsum("ij,jk,ik->i", Xtr - x, M, Xtr - x)
    neg = np.flatnonzero(ytr != y)[np.argsort(d[ytr != y])[:n_dirs]]
    pos = np.flatnonzero(ytr == y)[np.argsort(d[ytr == y])[:5]]
    dirs = [Xtr[j] - x for j in neg]
    dirs += [-(M @ (Xtr[i] - Xtr[j])) for i in pos for j in neg[:5]]
    return [v / np.linalg.norm(v) for v in dirs if np.linalg.norm(v) > 0]


@pytest.mark.parametrize("k", [3, 5, 11])
@pytest.mark.parametrize("metric_kind", ["euclidean", "random"])
def test_perturbations_below_bound_never_flip(digits_subset, k, metric_kind):
    Xtr, ytr, Xte, yte = digits_subset
    rng = np.random.default_rng(k)
    M = np.eye(64) if metric_kind == "euclidean" else random_psd(rng, 64) / 64
    metric = "euclidean" if metric_kind == "euclidean" else M
    bound = certified_radius_knn(Xtr, ytr, Xte, yte, n_neighbors=k, metric=metric)
    ok = bound > 0
    assert ok.sum() >= 20
    knn = MahalanobisKNN(k, metric=M).fit(Xtr, ytr)
    tried = 0
    for i in np.flatnonzero(ok):
        dirs = adversarial_directions(Xtr, ytr, Xte[i], yte[i], M)
        rand = rng.normal(size=(30, 64))
        dirs += list(rand / np.linalg.norm(rand, axis=1, keepdims=True))
        Z = Xte[i] + 0.999 * bound[i] * np.asarray(dirs)
        assert (knn.predict(Z) == yte[i]).all()
        tried += len(Z)
        # the bound is not vacuous: some direction flips the prediction at 50x the bound
        far = Xte[i] + 50 * bound[i] * np.asarray(dirs)
        assert (knn.predict(far) != yte[i]).any()
    assert tried > 1000


@pytest.mark.parametrize("scale", [1e-3, 7.0, 1e3])
def test_scaling_M_changes_no_radius(digits_subset, scale):
    Xtr, ytr, Xte, yte = digits_subset
    M = random_psd(np.random.default_rng(3), 64) / 64
    e1 = exact_radius_1nn(Xtr, ytr, Xte, yte, metric=M)
    e2 = exact_radius_1nn(Xtr, ytr, Xte, yte, metric=scale * M)
    np.testing.assert_allclose(e2, e1, rtol=1e-7)
    b1 = certified_radius_knn(Xtr, ytr, Xte, yte, n_neighbors=5, metric=M)
    b2 = certified_radius_knn(Xtr, ytr, Xte, yte, n_neighbors=5, metric=scale * M)
    np.testing.assert_allclose(b2, b1, rtol=1e-7)


def test_metric_forms_agree(digits_subset):
    Xtr, ytr, Xte, yte = digits_subset
    L = np.random.default_rng(4).normal(size=(10, 64))
    via_L = exact_radius_1nn(Xtr, ytr, Xte, yte, metric=L)
    via_M = exact_radius_1nn(Xtr, ytr, Xte, yte, metric=L.T @ L)
    np.testing.assert_allclose(via_L, via_M, rtol=1e-7)
    knn = MahalanobisKNN(metric=L).fit(Xtr, ytr)
    np.testing.assert_allclose(knn.certify(Xte, yte), via_L, rtol=1e-12)
    # a full-rank M becomes a square L inside the classifier; it must not be re-read as M
    M = random_psd(np.random.default_rng(5), 64) / 64
    knn = MahalanobisKNN(metric=M).fit(Xtr, ytr)
    np.testing.assert_allclose(knn.certify(Xte, yte), exact_radius_1nn(Xtr, ytr, Xte, yte, metric=M), rtol=1e-7)


def test_small_memory_budget_gives_same_radii(digits_subset):
    Xtr, ytr, Xte, yte = digits_subset
    ref_e = exact_radius_1nn(Xtr, ytr, Xte, yte)
    ref_b = certified_radius_knn(Xtr, ytr, Xte, yte, n_neighbors=3)
    # 4 KiB: no class's pair norms fit, everything is computed on the fly
    np.testing.assert_allclose(exact_radius_1nn(Xtr, ytr, Xte, yte, memory_budget=4096), ref_e, rtol=1e-9)
    np.testing.assert_allclose(certified_radius_knn(Xtr, ytr, Xte, yte, n_neighbors=3, memory_budget=4096),
                               ref_b, rtol=1e-9)


def test_string_labels(digits_subset):
    Xtr, ytr, Xte, yte = digits_subset
    names = np.array(list("abcdefghij"))
    np.testing.assert_allclose(exact_radius_1nn(Xtr, names[ytr], Xte, names[yte]),
                               exact_radius_1nn(Xtr, ytr, Xte, yte))


# --------------------------------------------------------------------- parallel


def test_n_jobs_equals_sequential(digits_subset):
    Xtr, ytr, Xte, yte = digits_subset
    seq = exact_radius_1nn(Xtr, ytr, Xte, yte, chunk_size=8)
    par = exact_radius_1nn(Xtr, ytr, Xte, yte, n_jobs=2, chunk_size=8)
    np.testing.assert_array_equal(seq, par)


def test_read_only_arrays_are_read_silently(digits_subset):
    # joblib hands its workers read-only memory maps; the distance helper reads them as they are
    # (no copy) without torch's warning about non-writable arrays
    import warnings

    from robust_metric_learning._geometry import _norms

    Xtr, _, Xte, _ = (np.array(a, dtype=np.float64) for a in digits_subset)
    sq_tr, sq_te = (Xtr ** 2).sum(1), (Xte ** 2).sum(1)
    expected = _norms(Xte, Xtr, sq_te, sq_tr)
    for a in (Xtr, Xte, sq_tr, sq_te):
        a.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _norms(Xte, Xtr, sq_te, sq_tr)
    np.testing.assert_array_equal(got, expected)


def test_dask_backend_local_cluster(digits_subset):
    distributed = pytest.importorskip("distributed")
    from joblib import parallel_backend

    Xtr, ytr, Xte, yte = digits_subset
    seq = certified_radius_knn(Xtr, ytr, Xte, yte, n_neighbors=3, chunk_size=8)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        with distributed.get_task_stream(client) as stream, parallel_backend("dask"):
            par = certified_radius_knn(Xtr, ytr, Xte, yte, n_neighbors=3, n_jobs=-1, chunk_size=8)
        # the chunks really ran on the cluster's two workers
        assert len({t["worker"] for t in stream.data}) == 2
    np.testing.assert_allclose(par, seq, rtol=1e-10)  # BLAS thread counts may differ by an ulp


# ------------------------------------------------------------------ curves and plot


def test_robust_error_curve():
    radii = np.array([0.0, 0.1, 0.5, np.inf])
    np.testing.assert_allclose(robust_error_curve(radii, [0, 0.1, 0.3, 1e9]), [0.25, 0.5, 0.5, 0.75])
    with pytest.raises(ValueError, match="eps"):
        robust_error_curve(radii, [-1.0])
    with pytest.raises(ValueError, match="radii"):
        robust_error_curve([np.nan], [0.1])


def test_plot_writes_png(tmp_path):
    from robust_metric_learning import plot_robust_error

    path = tmp_path / "curve.png"
    plot_robust_error({"a": [0.1, 0.5], "b": [0.2, 0.3]}, [0.0, 1.0], path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="curve 'a' has 1 values, eps has 2"):
        plot_robust_error({"a": [0.1]}, [0.0, 1.0])


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(X=np.array([[np.nan, 0.0]])), "X contains NaN or infinity"),
        (dict(X_train=np.array([[np.inf, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 2.0]])), "X_train contains NaN"),
        (dict(X=np.zeros(2)), "X must be a 2-D array"),
        (dict(X=np.zeros((1, 3))), "X has 3 features, X_train has 2"),
        (dict(X=np.zeros((0, 2)), y=np.zeros(0)), "X is empty"),
        (dict(y=np.zeros(5)), "y has 5 labels, X has 1 samples"),
        (dict(X=np.array([["a", "b"]])), "X must be numeric"),
        (dict(metric=np.array([[1.0, 2.0], [2.0, 1.0]])), "positive semi-definite; its smallest eigenvalue is -1"),
        (dict(metric=np.array([[1.0, 2.0], [0.0, 1.0]])), "must be symmetric"),
        (dict(metric=np.eye(3)), "metric has 3 columns, X has 2 features"),
        (dict(metric="cosine"), "metric must be 'euclidean'"),
        (dict(metric=np.array([[np.nan, 0.0], [0.0, 1.0]])), "metric contains NaN"),
        (dict(y_train=np.zeros(4)), "one class only"),
        (dict(y=np.array(["a"])), "y has labels of dtype <U1, y_train has int64"),
        (dict(memory_budget=0), "The .memory_budget. parameter of the certify functions must be an int in"),
    ],
)
def test_bad_input_clear_errors(kwargs, match):
    args = dict(X_train=np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 2.0]]), y_train=np.array([0, 0, 1, 1]),
                X=np.array([[0.1, 0.1]]), y=np.array([0]))
    args.update(kwargs)
    extra = {k: args.pop(k) for k in ("metric", "memory_budget") if k in args}
    with pytest.raises(ValueError, match=match):
        exact_radius_1nn(args["X_train"], args["y_train"], args["X"], args["y"], **extra)


def test_bad_k():
    Xtr, ytr = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]]), np.array([0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="n_neighbors must be odd for certification .* got 4"):
        certified_radius_knn(Xtr, ytr, [[0.5]], [0], n_neighbors=4)
    with pytest.raises(ValueError, match=r"n_neighbors=3 is larger than the smallest class of y_train \(label 1 has 2"):
        certified_radius_knn(Xtr, ytr, [[0.5]], [0], n_neighbors=3)
    with pytest.raises(ValueError, match="n_neighbors must be a positive integer"):
        certified_radius_knn(Xtr, ytr, [[0.5]], [0], n_neighbors=0)
