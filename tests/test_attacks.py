"""Attacks on Mahalanobis K-NN (DESIGN §3-§5): soundness against certification and against an
independent brute-force reference, the foolbox-like interface, and clear errors."""

import itertools

import numpy as np
import pytest
import quadprog

from conftest import random_psd
from robust_metric_learning import certified_radius_knn, exact_radius_1nn
from robust_metric_learning.attacks import (
    ATTACKS,
    AttackResult,
    BoundaryAttack,
    ExactAttack,
    NoiseAttack,
    StructuralAttack,
    attack_knn,
    get_attack,
)
from robust_metric_learning.margin import vote
from robust_metric_learning.neighbors import MahalanobisKNN

# ------------------------------------------------------------------ references and data


def exact_knn_radius(X_train, y_train, x, y, M, k):
    """Brute force: the neighbourhood of x + delta is some K-set S; for every S whose vote is
    not y, the smallest delta with S the K nearest is a QP (quadprog); the radius is the min."""
    d = np.einsum("ij,jk,ik->i", X_train - x, M, X_train - x)
    n_classes = y_train.max() + 1
    if vote(y_train[np.lexsort((np.arange(len(d)), d))[:k]][None], n_classes)[0] != y:
        return 0.0
    best = np.inf
    for S in itertools.combinations(range(len(X_train)), k):
        if vote(y_train[list(S)][None], n_classes)[0] == y:
            continue
        out = [o for o in range(len(X_train)) if o not in S]
        A = np.array([2 * M @ (X_train[o] - X_train[s]) for s in S for o in out])
        b = np.array([d[o] - d[s] for s in S for o in out])
        keep = np.linalg.norm(A, axis=1) > 1e-12
        if (np.maximum(-b[keep], 0) / np.linalg.norm(A[keep], axis=1)).max() >= best:
            continue  # a single half-space is already farther than the best
        try:
            z = quadprog.solve_qp(np.eye(x.size), np.zeros(x.size), -A[keep].T, -b[keep], 0)[0]
        except ValueError:  # empty region
            continue
        best = min(best, float(np.linalg.norm(z)))
    return best




def small_problem(seed, n=24, d=3, n_classes=3, m=8, low_rank=False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.arange(n) % n_classes
    Q = rng.normal(size=(m, d))
    yq = rng.integers(0, n_classes, m)
    M = random_psd(rng, d, rank=max(1, d - 1) if low_rank else None)
    return X, y, Q, yq, M


def check_result(knn, X, y, res, name):
    """Every returned point is really misclassified; radii follow DESIGN §3."""
    wrong_clean = knn.predict(X) != y
    assert (res.radii[wrong_clean] == 0).all(), name
    np.testing.assert_array_equal(res.raw[wrong_clean], X[wrong_clean])
    hit = np.isfinite(res.radii) & ~wrong_clean
    if hit.any():
        assert (knn.predict(res.raw[hit]) != y[hit]).all(), name
    np.testing.assert_allclose(np.linalg.norm(res.raw[hit] - X[hit], axis=1), res.radii[hit], rtol=1e-12)
    failed = ~np.isfinite(res.radii)
    np.testing.assert_array_equal(res.raw[failed], X[failed])
    np.testing.assert_array_equal(res.success, np.isfinite(res.radii))


# ------------------------------------------------------------------------ K = 1: exact


@pytest.mark.parametrize("metric_kind", ["euclidean", "low_rank"])
def test_exact_attack_is_the_exact_radius(digits_subset, metric_kind):
    Xtr, ytr, Xte, yte = digits_subset
    M = np.eye(64) if metric_kind == "euclidean" else random_psd(np.random.default_rng(1), 64, rank=20) / 64
    knn = MahalanobisKNN(metric=M).fit(Xtr, ytr)
    exact = exact_radius_1nn(Xtr, ytr, Xte, yte, metric=M)
    res = ExactAttack()(knn, Xte, yte)
    check_result(knn, Xte, yte, res, "exact")
    assert res.success.all() and (exact > 0).sum() >= 30
    # the point is pushed a tiny step past the boundary: never below the radius, barely above
    assert (res.radii >= exact).all()
    np.testing.assert_allclose(res.radii, exact, rtol=1e-6, atol=1e-12)
    # the structural attack is the exact one for K = 1
    np.testing.assert_array_equal(StructuralAttack()(knn, Xte, yte).radii, res.radii)


def test_1nn_with_coincident_points_of_different_classes():
    """Duplicates with other labels under a rank-1 metric tie forever (the index rule decides):
    where the exact point cannot be pushed across, the structural search still finds one."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    y = np.r_[np.zeros(20, int), np.ones(7, int), 2 * np.ones(3, int)]
    X, y = np.vstack([X, X[:5]]), np.r_[y, (y[:5] + 1) % 3]
    Q, yq = rng.normal(size=(10, 3)), rng.integers(0, 3, 10)
    L = rng.normal(size=(1, 3))
    knn = MahalanobisKNN(metric=L).fit(X, y)
    res = StructuralAttack()(knn, Q, yq)
    check_result(knn, Q, yq, res, "structural")
    assert np.isfinite(res.radii).all()
    assert (exact_radius_1nn(X, y, Q, yq, metric=L) <= res.radii).all()
    b = BoundaryAttack(steps=200, random_state=0)(knn, Q, yq).radii
    assert (res.radii <= b * (1 + 1e-9)).all()


def test_exact_attack_needs_1nn(digits_subset):
    Xtr, ytr, Xte, yte = digits_subset
    with pytest.raises(ValueError, match="ExactAttack is for 1-NN only; the model has n_neighbors=3"):
        ExactAttack()(MahalanobisKNN(3).fit(Xtr, ytr), Xte, yte)


# ---------------------------------------------------------------------------- soundness


@pytest.mark.parametrize("seed", range(6))
def test_certified_le_exact_le_every_attack_random(seed):
    X, y, Q, yq, M = small_problem(seed, low_rank=seed % 2 == 1, n_classes=2 + seed % 2)
    exact = exact_radius_1nn(X, y, Q, yq, metric=M)
    for k in (1, 3, 5):
        knn = MahalanobisKNN(k, metric=M).fit(X, y)
        cert = certified_radius_knn(X, y, Q, yq, n_neighbors=k, metric=M)
        results = {
            "structural": StructuralAttack()(knn, Q, yq),
            "boundary": BoundaryAttack(steps=150, random_state=seed)(knn, Q, yq),
            "noise": NoiseAttack(n_draws=20, random_state=seed)(knn, Q, yq, eps=[0.5, 1.0, 2.0, 4.0]),
        }
        for name, res in results.items():
            check_result(knn, Q, yq, res, name) if name != "noise" else None
            assert (cert <= res.radii * (1 + 1e-9)).all(), (name, k)
            if k == 1:
                assert (exact <= res.radii * (1 + 1e-9)).all(), name
        assert np.isfinite(results["structural"].radii).all()


@pytest.mark.parametrize("k", [3, 11])
def test_certified_le_attacks_on_digits(digits_subset, k):
    Xtr, ytr, Xte, yte = digits_subset
    L = np.random.default_rng(k).normal(size=(20, 64)) / 8
    for metric in ("euclidean", L):
        knn = MahalanobisKNN(k, metric=metric).fit(Xtr, ytr)
        cert = certified_radius_knn(Xtr, ytr, Xte, yte, n_neighbors=k, metric=metric)
        res = StructuralAttack()(knn, Xte, yte)
        check_result(knn, Xte, yte, res, "structural")
        assert np.isfinite(res.radii).all()
        assert (cert <= res.radii * (1 + 1e-9)).all()
        assert (cert > 0).sum() >= 30  # not vacuous


@pytest.mark.parametrize("seed", range(4))
def test_structural_against_brute_force(seed):
    """Never below the true minimal perturbation (it is verified), and equal to it on most points."""
    X, y, Q, yq, M = small_problem(100 + seed, n=11, d=2 + seed % 2, n_classes=2 + seed % 2, m=6)
    k = 3
    knn = MahalanobisKNN(k, metric=M).fit(X, y)
    res = StructuralAttack()(knn, Q, yq)
    ref = np.array([exact_knn_radius(X, y, Q[i], yq[i], M, k) for i in range(len(Q))])
    assert (res.radii >= ref * (1 - 1e-7)).all()
    pos = ref > 0
    close = res.radii[pos] <= ref[pos] * (1 + 1e-5)
    assert close.mean() >= 0.8, (res.radii, ref)


def test_structural_beats_boundary(digits_subset):
    Xtr, ytr, Xte, yte = digits_subset
    knn = MahalanobisKNN(5).fit(Xtr, ytr)
    s = StructuralAttack()(knn, Xte, yte).radii
    b = BoundaryAttack(steps=300, random_state=0)(knn, Xte, yte).radii
    pos = s > 0
    assert (s[pos] <= b[pos] * (1 + 1e-9)).mean() >= 0.9
    eps = np.linspace(0, 2, 21)
    assert ((s[None, :] <= eps[:, None]).mean(1) >= (b[None, :] <= eps[:, None]).mean(1)).all()


# ------------------------------------------------- compiled parts against their references


def _point(knn, x, y):
    from robust_metric_learning.attacks.knn.base import _Target
    from robust_metric_learning.attacks.knn._region import _Point

    target = _Target(knn)
    d = target.geo.sq_dist(x[None, :])[0]
    return target, _Point(target, x, d, int(y), np.sqrt(target.geo.MX_sq))


def region_qp_quadprog(target, pt, members, kind, excused, tau):
    """The template's QP with every constraint written out, solved by quadprog (None if empty)."""
    geo, d = target.geo, pt.d
    c, same = kind
    rivals = np.flatnonzero((geo.codes == c) if same else (geo.codes != c))
    rivals = rivals[~np.isin(rivals, excused)]
    A, b = [], []
    for m in members:
        for o in rivals:
            u = geo.MX[o] - geo.MX[m]
            nrm = np.linalg.norm(u)
            if nrm > 1e-12:
                A.append(u / nrm)
                b.append((d[o] - d[m]) / (2 * nrm) - tau)
    A, b = np.array(A), np.array(b)
    try:
        return quadprog.solve_qp(np.eye(A.shape[1]), np.zeros(A.shape[1]), -A.T, -b, 0)[0]
    except ValueError:
        return None


@pytest.mark.parametrize("case", ["random", "digits_low_rank"])
def test_compiled_region_qp_matches_reference_and_quadprog(case, digits_subset):
    """The compiled constraint generation (own NNLS) against the reference (scipy's NNLS) and
    against quadprog on the QP with all constraints; templates of both rival kinds."""
    from robust_metric_learning.attacks.knn._region import _region_qp, _region_qp_fast

    rng = np.random.default_rng(3)
    if case == "random":
        X, y = rng.normal(size=(60, 4)), np.arange(60) % 3
        Q, yq, metric, s = rng.normal(size=(6, 4)), rng.integers(0, 3, 6), random_psd(rng, 4), 3
    else:
        X, y, Q, yq = digits_subset
        Q, yq, metric, s = Q[:6], yq[:6], random_psd(rng, 64, rank=12) / 64, 6
    knn = MahalanobisKNN(2 * s - 1, metric=metric).fit(X, y)
    n_checked = n_empty = 0
    for x, yy in zip(Q, yq):
        target, pt = _point(knn, x, yy)
        for t in range(3):
            if t == yy:
                continue
            T = np.flatnonzero(target.geo.codes == t)
            near_t = T[np.argsort(pt.d[T], kind="stable")]
            for members in (near_t[:s], near_t[1:s + 1], near_t[[0, 2, 4]]):
                for kind in ((t, False), (int(yy), True)):
                    riv = pt.rivals(kind)[0]
                    for excused in (riv[:0], riv[:s - 1], riv[1:3]):
                        tau = 1e-6
                        ref = _region_qp(pt, members, kind, excused, tau=tau, tol=1e-12)
                        fast = _region_qp_fast(pt, members, kind, excused, tau=tau, tol=1e-12)
                        qp = region_qp_quadprog(target, pt, members, kind, excused, tau)
                        if qp is None:
                            assert ref is None and fast is None
                            n_empty += 1
                            continue
                        r_qp = np.linalg.norm(qp)
                        if r_qp > 20.0:  # a far, thin sliver (data scale ~1): no attack needs it
                            continue
                        for res in (ref, fast):
                            assert res is not None
                            np.testing.assert_allclose(np.linalg.norm(res[0]), r_qp, rtol=1e-6, atol=1e-10)
                        np.testing.assert_allclose(fast[0], qp, atol=1e-6 * max(1.0, r_qp))
                        n_checked += 1
                        if r_qp > 0:  # a bound at or below the optimum stops the QP (None); above, same
                            args = (pt, members, kind, excused)
                            assert _region_qp_fast(*args, tau=tau, tol=1e-12, bound=r_qp * (1 - 1e-5)) is None
                            again = _region_qp_fast(*args, tau=tau, tol=1e-12, bound=r_qp * 1.01)
                            np.testing.assert_allclose(again[0], fast[0], rtol=1e-12, atol=1e-15)
    assert n_checked >= 40 and n_empty >= 1


def test_nnls_ldp_matches_scipy():
    """Least-distance NNLS with dependent working rows (pairs (m, o) over shared members and
    rivals are dependent by construction) and empty regions: the residual E u - f is unique."""
    from scipy.optimize import nnls

    from robust_metric_learning._solver import nnls_compiled

    rng = np.random.default_rng(0)
    n_dependent = n_empty = 0
    for trial in range(300):
        dim = int(rng.integers(2, 40))
        P = rng.normal(size=(int(rng.integers(2, 6)), dim))  # members
        O = rng.normal(size=(int(rng.integers(2, 6)), dim))  # rivals
        z = rng.normal(size=dim) * 0.5
        rows, b = [], []
        for m in P:
            for o in O:
                nrm = np.linalg.norm(o - m)
                rows.append((o - m) / nrm)
                b.append((np.sum((z - o) ** 2) - np.sum((z - m) ** 2)) / (2 * nrm) - rng.uniform(0, 0.3))
        U, b = np.array(rows), np.array(b)
        if trial % 5 == 0:  # contradictory pair: the region is empty
            U, b = np.vstack([U, -U[:1]]), np.r_[b, -b[0] - 1.0]
        n_dependent += np.linalg.matrix_rank(U) < len(U)
        E = np.vstack([-U.T, -b[None]])
        f = np.zeros(dim + 1)
        f[-1] = 1.0
        u_ref, _ = nnls(E, f, maxiter=50 * E.shape[1] + 100)
        u, ok = nnls_compiled(U, b, np.zeros(len(b)), 5 * len(b) + 100)
        assert ok and (u >= 0).all()
        np.testing.assert_allclose(E @ u - f, E @ u_ref - f, atol=1e-9)
        n_empty += np.linalg.norm(E @ u_ref - f) < 1e-9
    assert n_dependent >= 100 and n_empty >= 30


def test_compiled_predict_one_matches_predict():
    """Including exact distance ties (a coarse grid: the index rule decides) and tied votes; the
    attacks' batched predict too (it once worked on centred data, where rounding broke ties)."""
    from robust_metric_learning.attacks.knn._compiled import _predict_one_compiled

    rng = np.random.default_rng(1)
    # a coarse grid with duplicates of different labels, queried on the half-grid: every
    # distance is exact in floating point, so ties are real and only the index rule decides
    grid = (rng.integers(0, 4, size=(80, 2)).astype(float), rng.integers(0, 4, 80),
            rng.integers(0, 4, size=(100, 2)) + 0.5 * rng.integers(0, 2, size=(100, 2)))
    spread = (rng.normal(size=(80, 2)), rng.integers(0, 4, 80), rng.normal(size=(100, 2)) * 2)
    n_tied = 0
    for (X, y, Q), k, metric in itertools.product((grid, spread), (1, 2, 4, 5), ("euclidean", np.array([[2.0, 1.0]]))):
        knn = MahalanobisKNN(k, metric=metric).fit(X, y)
        target, _ = _point(knn, Q[0], 0)
        Zu, Zu_sq, L = target.geo.Zu, target.geo.Zu_sq, target.geo.L
        mine = [_predict_one_compiled(Zu, Zu_sq, target.geo.codes, q if L is None else L @ q, k, 4) for q in Q]
        np.testing.assert_array_equal(knn.classes_[np.array(mine)], knn.predict(Q))
        np.testing.assert_array_equal(knn.classes_[target.predict_codes(Q)], knn.predict(Q))
        dist = np.sort(knn.kneighbors(Q, n_neighbors=k + 1)[0], axis=1)
        n_tied += (dist[:, k - 1] == dist[:, k]).sum()
    assert n_tied >= 100


def test_batched_greedy_matches_loop():
    from robust_metric_learning.attacks.knn.structural import _greedy

    def loop(viol, size, n_keep, base):
        cur, chosen = base.copy(), []
        for _ in range(size):
            lb = []
            for r in range(viol.shape[0]):
                w = np.sort(np.maximum(cur, viol[r]))[::-1]
                lb.append(np.inf if r in chosen else (w[n_keep] if n_keep < w.size else 0.0))
            nxt = int(np.argmin(lb))
            chosen.append(nxt)
            cur = np.maximum(cur, viol[nxt])
        return np.sort(chosen)

    rng = np.random.default_rng(2)
    V = np.round(rng.uniform(0, 1, size=(5, 9, 7)), 1)  # rounded: ties between rows
    base = rng.uniform(0, 0.5, size=(5, 7))
    for size, n_keep in ((3, 2), (4, 0), (2, 9)):
        got = _greedy(V, size, n_keep, base)
        for i in range(5):
            np.testing.assert_array_equal(got[i], loop(V[i], size, n_keep, base[i]))
        np.testing.assert_array_equal(_greedy(V[0], size, n_keep), loop(V[0], size, n_keep, np.zeros(7)))


# ------------------------------------------------------------------ interface and sweeps


def test_eps_sweep_clips_and_recomputes_success(digits_subset):
    Xtr, ytr, Xte, yte = digits_subset
    knn = MahalanobisKNN(3).fit(Xtr, ytr)
    eps = [0.0, 0.3, 0.6, 1.0, 5.0]
    res = StructuralAttack()(knn, Xte, yte, eps=eps)
    assert isinstance(res, AttackResult)
    assert res.clipped.shape == (5,) + Xte.shape and res.success.shape == (5, len(Xte))
    norms = np.linalg.norm(res.clipped - Xte[None], axis=2)
    assert (norms <= np.asarray(eps)[:, None] * (1 + 1e-12)).all()
    for e, r in enumerate(eps):
        assert (res.success[e] == (knn.predict(res.clipped[e]) != yte)).all()
        assert res.success[e][res.radii <= r].all()  # within budget: the adversarial point itself
    np.testing.assert_array_equal(res.success[0], res.radii == 0)
    single = StructuralAttack()(knn, Xte, yte, eps=0.6)
    assert single.clipped.shape == Xte.shape and single.success.shape == (len(Xte),)
    np.testing.assert_array_equal(single.success, res.success[2])
    raw, clipped, success, radii = StructuralAttack()(knn, Xte, yte)  # foolbox-like unpacking
    np.testing.assert_array_equal(clipped, raw)


def test_misclassified_and_unknown_labels_get_radius_zero(digits_subset):
    Xtr, ytr, Xte, yte = digits_subset
    y = yte.copy()
    y[:3] = (y[:3] + 1) % 10
    y[3] = 42  # a label the classifier does not know
    knn = MahalanobisKNN(3).fit(Xtr, ytr)
    for attack in (StructuralAttack(), BoundaryAttack(steps=20, random_state=0)):
        res = attack(knn, Xte[:8], y[:8])
        assert (res.radii[:4] == 0).all() and res.success[:4].all()
        np.testing.assert_array_equal(res.raw[:4], Xte[:4])


def test_string_labels(digits_subset):
    Xtr, ytr, Xte, yte = digits_subset
    names = np.array(list("abcdefghij"))
    a = MahalanobisKNN(3).fit(Xtr, names[ytr]).attack(Xte, names[yte]).radii
    b = MahalanobisKNN(3).fit(Xtr, ytr).attack(Xte, yte).radii
    np.testing.assert_array_equal(a, b)


def test_method_and_function_entry_points(digits_subset):
    Xtr, ytr, Xte, yte = digits_subset
    knn = MahalanobisKNN(3).fit(Xtr, ytr)
    direct = StructuralAttack()(knn, Xte, yte, eps=[0.5])
    via_method = knn.attack(Xte, yte, eps=[0.5])
    via_function = attack_knn(Xtr, ytr, Xte, yte, n_neighbors=3, eps=[0.5])
    for res in (via_method, via_function):
        np.testing.assert_array_equal(res.radii, direct.radii)
        np.testing.assert_array_equal(res.success, direct.success)
    b = knn.attack(Xte[:10], yte[:10], method=BoundaryAttack(steps=30, random_state=3))
    np.testing.assert_array_equal(b.radii, BoundaryAttack(steps=30, random_state=3)(knn, Xte[:10], yte[:10]).radii)
    noisy = knn.attack(Xte, yte, method="uniform", eps=[1.0], random_state=2)
    np.testing.assert_array_equal(noisy.clipped, NoiseAttack(kind="uniform", random_state=2)(knn, Xte, yte, eps=[1.0]).clipped)
    assert set(ATTACKS) == {"exact", "structural", "boundary", "gaussian", "uniform"}
    assert isinstance(get_attack("uniform", n_draws=3), NoiseAttack)


def test_boundary_reproducible_and_parallel(digits_subset):
    Xtr, ytr, Xte, yte = digits_subset
    knn = MahalanobisKNN(3).fit(Xtr, ytr)
    a = BoundaryAttack(steps=60, random_state=7, chunk_size=8)(knn, Xte, yte)
    b = BoundaryAttack(steps=60, random_state=7, chunk_size=8, n_jobs=2)(knn, Xte, yte)
    np.testing.assert_array_equal(a.raw, b.raw)  # seeds per chunk, not per worker
    check_result(knn, Xte, yte, a, "boundary")
    s = StructuralAttack(chunk_size=8, n_jobs=2)(knn, Xte[:16], yte[:16])
    np.testing.assert_array_equal(s.radii, StructuralAttack()(knn, Xte[:16], yte[:16]).radii)


def test_boundary_walk_only_improves(digits_subset):
    """For one seed, a longer walk repeats the shorter one and then only accepts adversarial
    points that are closer: never a larger radius on any point."""
    Xtr, ytr, Xte, yte = digits_subset
    knn = MahalanobisKNN(3).fit(Xtr, ytr)
    short = BoundaryAttack(steps=100, random_state=5)(knn, Xte, yte)
    long = BoundaryAttack(steps=700, random_state=5)(knn, Xte, yte)
    check_result(knn, Xte, yte, long, "boundary")
    assert (long.radii <= short.radii).all() and (long.radii < short.radii).mean() > 0.25
    assert BoundaryAttack().steps == 25000  # foolbox 3's default, used by the ARML experiments


def test_boundary_refines_a_given_start(digits_subset):
    Xtr, ytr, Xte, yte = digits_subset
    knn = MahalanobisKNN(5).fit(Xtr, ytr)
    s = StructuralAttack()(knn, Xte, yte).radii
    h = BoundaryAttack(steps=50, random_state=0, init_attack=StructuralAttack())(knn, Xte, yte).radii
    assert (h <= s * (1 + 1e-12)).all()  # the walk only ever accepts shorter adversarial points


# ------------------------------------------------------------------------------ noise


def test_noise_attack(digits_subset):
    Xtr, ytr, Xte, yte = digits_subset
    knn = MahalanobisKNN(3).fit(Xtr, ytr)
    eps = [0.0, 0.5, 2.0, 8.0]
    cert = certified_radius_knn(Xtr, ytr, Xte, yte, n_neighbors=3)
    for kind in ("gaussian", "uniform"):
        res = NoiseAttack(kind=kind, n_draws=8, random_state=0, chunk_size=16)(knn, Xte, yte, eps=eps)
        assert res.accuracy.shape == (4,) and 0.0 <= res.accuracy.min() and res.accuracy.max() <= 1.0
        assert res.accuracy[0] == (knn.predict(Xte) == yte).mean()
        assert res.accuracy[-1] < res.accuracy[0]
        norms = np.linalg.norm(res.clipped - Xte[None], axis=2)
        np.testing.assert_allclose(norms, np.asarray(eps)[:, None] * np.ones((1, len(Xte))), rtol=1e-12, atol=1e-15)
        for e in range(4):
            assert (res.success[e] == (knn.predict(res.clipped[e]) != yte)).all()
        assert (cert <= res.radii).all()
        again = NoiseAttack(kind=kind, n_draws=8, random_state=0, chunk_size=16, n_jobs=2)(knn, Xte, yte, eps=eps)
        np.testing.assert_array_equal(again.clipped, res.clipped)
    free = NoiseAttack(exact_norm=False, n_draws=50, random_state=1)(knn, Xte[:4], yte[:4], eps=[1.0])
    rms = np.sqrt((np.linalg.norm(free.clipped[0] - Xte[:4], axis=1) ** 2).mean())
    assert 0.7 < rms < 1.3  # E||noise||^2 = eps^2
    scalar = knn.attack(Xte, yte, method="gaussian", eps=0.5, random_state=0)
    assert np.ndim(scalar.accuracy) == 0 and scalar.success.shape == (len(Xte),)


# -------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(X=np.array([[np.nan, 0.0]])), "X contains NaN or infinity"),
        (dict(X=np.zeros(2)), "X must be a 2-D array"),
        (dict(X=np.zeros((1, 3))), "X has 3 features, the model was fitted on 2"),
        (dict(y=np.zeros(5)), "y has 5 labels, X has 1 samples"),
        (dict(y=np.array(["a"])), "y has labels of dtype <U1, the model's classes_ have int64"),
        (dict(eps=[-0.1]), r"eps must be finite and >= 0, got \[-0.1\]"),
        (dict(eps=[np.nan]), "eps must be finite"),
        (dict(attack=StructuralAttack(max_qp=0)), r"The 'max_qp' parameter of StructuralAttack must be an int in \[1, inf\]; got 0"),
        (dict(attack=StructuralAttack(line_search="yes")), "'line_search' parameter of StructuralAttack must be bool; got 'yes'"),
        (dict(attack=BoundaryAttack(steps=-1)), r"'steps' parameter of BoundaryAttack must be an int in \[0, inf\]; got -1"),
        (dict(attack=BoundaryAttack(source_step=2.0)), r"'source_step' parameter of BoundaryAttack must be a number in \(0, 1\); got 2.0"),
        (dict(attack=NoiseAttack(kind="laplace")), "'kind' parameter of NoiseAttack must be one of 'gaussian', 'uniform'; got 'laplace'"),
        (dict(attack=NoiseAttack(n_draws=0)), r"'n_draws' parameter of NoiseAttack must be an int in \[1, inf\]; got 0"),
        (dict(attack=NoiseAttack()), "eps is required for NoiseAttack"),
        (dict(attack=ExactAttack(tol=1.5)), r"'tol' parameter of ExactAttack must be a number in \(0, 1\); got 1.5"),
        (dict(attack=BoundaryAttack(init_attack="structural")), "'init_attack' parameter of BoundaryAttack must be None or "
                                                               "MinimizationAttack; got 'structural'"),
        (dict(attack=StructuralAttack(n_jobs="x")), "'n_jobs' parameter of StructuralAttack must be None or Integral"),
        (dict(attack=StructuralAttack(chunk_size=0)), r"'chunk_size' parameter of StructuralAttack must be an int in \[1, inf\]; got 0"),
    ],
)
def test_bad_input_clear_errors(kwargs, match):
    knn = MahalanobisKNN(1).fit(np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 2.0]]), np.array([0, 0, 1, 1]))
    args = dict(X=np.array([[0.1, 0.1]]), y=np.array([0]), attack=StructuralAttack(), eps=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        args["attack"](knn, args["X"], args["y"], eps=args["eps"])


def test_bad_model_and_method():
    with pytest.raises(TypeError, match="model must be a fitted MahalanobisKNN, got KNeighborsClassifier"):
        from sklearn.neighbors import KNeighborsClassifier

        StructuralAttack()(KNeighborsClassifier(1).fit([[0.0], [1.0]], [0, 1]), [[0.0]], [0])
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        StructuralAttack()(MahalanobisKNN(), [[0.0]], [0])
    with pytest.raises(ValueError, match="method must be one of 'exact', 'structural'"):
        get_attack("pgd")
    with pytest.raises(ValueError, match=r"params \['steps'\] cannot be applied to an attack object"):
        get_attack(StructuralAttack(), steps=3)
    with pytest.raises(ValueError, match="X_train contains NaN"):
        attack_knn([[np.nan], [1.0]], [0, 1], [[0.5]], [0])
    with pytest.raises(ValueError, match="X has 2 features, X_train has 1"):
        attack_knn([[0.0], [1.0]], [0, 1], [[0.5, 0.1]], [0])
    with pytest.raises(ValueError, match="metric has 3 columns, X has 1 features"):
        attack_knn([[0.0], [1.0]], [0, 1], [[0.5]], [0], metric=np.eye(3))
