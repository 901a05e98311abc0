"""The least-distance solver (``_solver``) and the QPs built on it, against independent oracles:
scipy's HiGHS linear program for feasibility (the largest inscribed ball), quadprog for the
optimum, and a brute-force exact 1-NN radius on degenerate data."""

import numpy as np
import pytest
import quadprog
from scipy.optimize import linprog

from robust_metric_learning import exact_radius_1nn
from robust_metric_learning._solver import farkas_reach, least_distance
from robust_metric_learning.attacks.knn.base import _Target
from robust_metric_learning.attacks.knn._region import _Point, _region_qp, _region_qp_fast
from robust_metric_learning.margin import tie_tolerance
from robust_metric_learning.neighbors import MahalanobisKNN


def psd(rng, dim, rank, cond):
    """A PSD metric of the given rank whose nonzero eigenvalues span ``cond``."""
    Q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    ev = np.zeros(dim)
    ev[:rank] = np.logspace(0, -np.log10(cond), rank)
    return (Q * ev) @ Q.T


def degenerate_data(rng, n, dim, n_classes=3):
    """Gaussian points with duplicates (under the same and other labels) and a collinear run."""
    X = rng.normal(size=(n, dim))
    y = rng.integers(0, n_classes, n)
    y[:n_classes] = np.arange(n_classes)
    dup = rng.choice(n, 4, replace=False)
    X[dup[2:]] = X[dup[:2]]  # duplicated points, labels as drawn (same or other)
    line = rng.choice(n, 5, replace=False)
    X[line] = X[line[0]] + np.linspace(0.2, 1.0, 5)[:, None] * rng.normal(size=dim)
    return X, y


def oracle_constraints(geo, pt, members, kind, excused, tau):
    """Every constraint of a template written out (None: a tied pair rules it out)."""
    c, same = kind
    rivals = np.flatnonzero((geo.codes == c) if same else (geo.codes != c))
    rivals = rivals[~np.isin(rivals, excused)]
    nrm = np.sqrt(geo.MX_sq)
    A, b = [], []
    for m in members:
        for o in rivals:
            u = geo.MX[o] - geo.MX[m]
            size = np.linalg.norm(u)
            if size <= tie_tolerance(u.size) * (nrm[m] + nrm[o]):
                if o < m:
                    return None
                continue
            A.append(u / size)
            b.append((pt.d[o] - pt.d[m]) / (2 * size) - tau)
    return np.array(A).reshape(-1, geo.MX.shape[1]), np.array(b)


def inscribed(A, b, scale, box=np.inf):
    """``-t`` for ``min t`` s.t. ``A delta - t <= b`` (unit rows), ``|delta|_inf <= box``: the
    radius of the largest inscribed ball in the box when positive, minus the least uniform
    violation when negative."""
    dim = A.shape[1]
    c = np.zeros(dim + 1)
    c[-1] = 1.0
    box = None if np.isinf(box) else box
    res = linprog(c, A_ub=np.hstack([A, -np.ones((len(b), 1))]), b_ub=b,
                  bounds=[(None if box is None else -box, box)] * dim + [(-10 * scale, None)], method="highs")
    assert res.status == 0
    return -res.x[-1]


def quadprog_ld(A, b):
    try:
        return quadprog.solve_qp(np.eye(A.shape[1]), np.zeros(A.shape[1]), -A.T, -b, 0)[0]
    except ValueError:
        return None


@pytest.mark.parametrize("seed", range(4))
def test_region_qp_feasibility_and_optimum_against_lp_and_quadprog(seed):
    """>= 500 templates per seed (2000+ in all) on degenerate data and metrics of several ranks
    with condition numbers up to 1e8: the reference and the compiled region QP say "empty"
    exactly where HiGHS finds no ball of radius 1e-9 (of the data scale) inside, and their
    optimum is quadprog's to relative 1e-6."""
    rng = np.random.default_rng(100 + seed)
    n_templates = n_feasible = n_empty = 0
    for dim in (2, 3, 5, 8):
        for rank in sorted({1, max(1, dim // 2), dim}):
            for cond in (1.0, 1e4, 1e8):
                X, y = degenerate_data(rng, 30, dim)
                scale = float(np.median(np.linalg.norm(X[:, None] - X[None], axis=-1)))
                s = int(rng.integers(1, 4))
                knn = MahalanobisKNN(2 * s - 1, metric=psd(rng, dim, rank, cond)).fit(X, y)
                target = _Target(knn)
                geo = target.geo
                for _ in range(20):
                    x = X[rng.integers(30)] + 0.3 * rng.normal(size=dim) if rng.random() < 0.5 \
                        else rng.normal(size=dim)
                    yy = int(rng.integers(3))
                    pt = _Point(target, x, geo.sq_dist(x[None])[0], yy, np.sqrt(geo.MX_sq))
                    t = int(rng.choice([c for c in range(3) if c != yy]))
                    T = np.flatnonzero(geo.codes == t)
                    members = rng.choice(T, min(s, T.size), replace=False)
                    kind = (t, False) if rng.random() < 0.6 else (yy, True)
                    riv = pt.rivals(kind)[0]
                    excused = rng.choice(riv, int(rng.integers(0, min(3, riv.size))), replace=False)
                    excused = excused[~np.isin(excused, members)]
                    tau = 0.0 if rng.random() < 0.5 else 1e-6 * scale
                    tol = 1e-10 * scale
                    far = 1e6 * scale  # as the attack: regions farther than this do not matter
                    ref = _region_qp(pt, members, kind, excused, tau=tau, tol=tol, bound=far)
                    fast = _region_qp_fast(pt, members, kind, excused, tau=tau, tol=tol, bound=far)
                    n_templates += 1
                    cons = oracle_constraints(geo, pt, members, kind, excused, tau)
                    if cons is None:  # a rival tied with a member and ranked before it
                        assert ref is None and fast is None
                        n_empty += 1
                        continue
                    A, b = cons
                    if b.size == 0:
                        continue
                    for res in (ref, fast):  # any point returned meets every constraint
                        if res is not None:
                            r = float(np.linalg.norm(res[0]))
                            assert (A @ res[0] - b).max() <= 1e-9 * max(scale, r)
                    # HiGHS in a box of 100 data scales (far outside it, its own tolerances
                    # decide): a ball inside -> both find the optimum; no point -> none inside
                    box = 100 * scale
                    rho = inscribed(A, b, scale, box)
                    if abs(rho) <= 1e-9 * scale:
                        continue  # no interior to speak of: either answer is right
                    if rho < 0:
                        for res in (ref, fast):
                            assert res is None or np.abs(res[0]).max() > box, (dim, rank, cond, rho)
                        n_empty += 1
                        continue
                    qp = quadprog_ld(A, b)
                    assert qp is not None
                    r_qp = float(np.linalg.norm(qp))
                    for res in (ref, fast):
                        assert res is not None, (dim, rank, cond, rho, r_qp)
                        np.testing.assert_allclose(np.linalg.norm(res[0]), r_qp, rtol=1e-6, atol=1e-12 * scale)
                    n_feasible += 1
    assert n_templates >= 500 and n_feasible >= 150 and n_empty >= 50, (n_templates, n_feasible, n_empty)


def test_least_distance_never_declares_a_thin_region_empty():
    """A polyhedron of nearly parallel constraints (multipliers ~1e5, where the NNLS optimum
    misses its constraints by more than the tolerance) holding a ball of radius 1e-4: the solver
    returns its optimum, quadprog's; a region with no point at all is declared empty with a
    verified Farkas certificate."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        dim = int(rng.integers(2, 6))
        n = rng.normal(size=dim)
        n /= np.linalg.norm(n)
        tilt = rng.normal(size=(3, dim)) * 1e-5
        A = np.vstack([n + tilt[0], -(n + tilt[1]), rng.normal(size=(4, dim))])
        A /= np.linalg.norm(A, axis=1, keepdims=True)
        centre = 5.0 * n + rng.normal(size=dim)  # inside, 1e-4 from the two near-parallel faces
        b = A @ centre + np.concatenate([[1e-4, 1e-4], rng.uniform(1, 3, 4)])
        got = least_distance(A, b, tol=1e-12)
        qp = quadprog_ld(A, b)
        assert got is not None and qp is not None
        assert (A @ got[0] - b).max() <= 1e-9
        np.testing.assert_allclose(np.linalg.norm(got[0]), np.linalg.norm(qp), rtol=1e-6)
        A_empty, b_empty = A.copy(), b.copy()
        A_empty[1] = -A_empty[0]
        b_empty[1] = -b[0] - 1e-3  # a^T delta <= b_0 and a^T delta >= b_0 + 1e-3: no point (verified)
        assert inscribed(A_empty, b_empty, 1.0) < 0
        assert least_distance(A_empty, b_empty, tol=1e-12) is None


def test_farkas_reach_is_a_valid_radius():
    """No point of norm below the certified reach satisfies the constraints: sampled points and
    the constraints' own least-violation point."""
    rng = np.random.default_rng(1)
    A = np.array([[1.0, 0.0], [-1.0, 1e-3]])
    b = np.array([1.0, -1.5])  # x <= 1 and x >= 1.5 + 1e-3 y: empty in the strip, feasible far away
    y = np.array([1.0, 1.0])
    R = farkas_reach(A, b, y)
    assert 400 < R <= 500 + 1e-9  # -b^T y / ||A^T y|| = 0.5 / 1e-3
    for _ in range(2000):
        d = rng.normal(size=2)
        d *= R * rng.uniform(0, 1) / np.linalg.norm(d)
        assert (A @ d > b).any()
    far = np.array([1.0, -500.0 - 1e-6])  # a feasible point just beyond the reach
    assert (A @ far <= b).all() and np.linalg.norm(far) >= R
    assert farkas_reach(A, b, np.array([1.0, 0.0])) == 0.0  # proves nothing
    got = least_distance(A, b, tol=1e-12)
    assert got is not None and np.linalg.norm(got[0]) >= R


def brute_exact_radius(X, y, x, yq, M):
    """min over negatives j of the projection onto {z : x_j at least as near as every positive},
    skipping a negative tied with an earlier positive (quadprog)."""
    d = np.einsum("ij,jk,ik->i", X - x, M, X - x)
    P, N = np.flatnonzero(y == yq), np.flatnonzero(y != yq)
    MX = X @ M
    size = np.linalg.norm(MX, axis=1)
    best = np.inf
    for j in N:
        A, b, skip = [], [], False
        for i in P:
            u = 2 * (MX[i] - MX[j])
            if np.linalg.norm(u) / 2 <= tie_tolerance(u.size) * (size[i] + size[j]):
                skip |= i < j
                continue
            A.append(u / np.linalg.norm(u))
            b.append((d[i] - d[j]) / np.linalg.norm(u))
        if skip:
            continue
        if not A:
            return 0.0
        z = quadprog_ld(np.array(A), np.array(b))
        best = min(best, float(np.linalg.norm(z)))
    return best


@pytest.mark.parametrize("cond", [1.0, 1e4, 1e8])
def test_exact_radius_on_degenerate_data_matches_brute_force(cond):
    """Duplicated and collinear training points, metrics of low rank and condition up to 1e8:
    the exact radius is the brute-force one (quadprog per negative) wherever 1-NN is right."""
    rng = np.random.default_rng(int(np.log10(cond)))
    n_checked = 0
    for dim, rank in ((3, 1), (4, 2), (5, 5)):
        X, y = degenerate_data(rng, 40, dim)
        M = psd(rng, dim, rank, cond)
        Q = rng.normal(size=(15, dim))
        yq = MahalanobisKNN(1, metric=M).fit(X, y).predict(Q)
        radii = exact_radius_1nn(X, y, Q, yq, metric=M)
        for x, c, r in zip(Q, yq, radii):
            want = brute_exact_radius(X, y, x, c, M)
            if np.isinf(want):
                assert np.isinf(r)
            else:
                np.testing.assert_allclose(r, want, rtol=1e-6, atol=1e-9)
            n_checked += 1
    assert n_checked == 45


def test_exact_radius_follows_the_index_tie_rule():
    """A training point duplicated under another label, and M = 0: the prediction can never
    change where the earlier of the tied points is of the predicted class (radius inf, and the
    structural attack finds nothing either); where the later one is, the other points decide."""
    from robust_metric_learning.attacks import StructuralAttack

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 3)), np.arange(20) % 2
    q = X[:1] + 0.01
    X_later, y_later = np.vstack([X, X[:1]]), np.append(y, 1)  # duplicate of x_0 under label 1, later
    r_later = exact_radius_1nn(X_later, y_later, q, [0])[0]
    assert r_later == pytest.approx(exact_radius_1nn(X, y, q, [0])[0])  # the duplicate never wins
    att = StructuralAttack()(MahalanobisKNN(1).fit(X_later, y_later), q, [0])
    assert att.radii[0] == pytest.approx(r_later, rel=1e-6)
    zero = np.zeros((3, 3))
    assert MahalanobisKNN(1, metric=zero).fit(X, y).predict(q)[0] == y[0]
    assert np.isinf(exact_radius_1nn(X, y, q, [y[0]], metric=zero)[0])
    assert np.isinf(StructuralAttack()(MahalanobisKNN(1, metric=zero).fit(X, y), q, [y[0]]).radii[0])
    # the duplicate placed first: it wins every tie, so 1-NN already predicts its label
    X_first, y_first = np.vstack([X[:1], X]), np.append(1, y)
    assert MahalanobisKNN(1).fit(X_first, y_first).predict(q)[0] == 1
    assert exact_radius_1nn(X_first, y_first, q, [0])[0] == 0.0


def test_null_space_pairs_follow_the_index_rule_in_predict_and_the_radii():
    """Two training points that differ only in the null space of M (under other labels) are tied
    at every query: predict orders them by index, and the exact radius and the certified bound
    are 0 exactly where predict is wrong (never a positive radius on a wrong prediction)."""
    from robust_metric_learning import certified_radius_knn

    rng = np.random.default_rng(0)
    L = rng.normal(size=(2, 3))
    v = np.linalg.svd(L)[2][-1]  # L v = 0
    n_wrong = n_right = 0
    for trial in range(40):
        x0 = rng.normal(size=3)
        X = np.vstack([x0, x0 + 0.7 * v, x0 + 10, x0 - 10])
        y = np.array([0, 1, 1, 0]) if trial % 2 else np.array([1, 0, 1, 0])
        Q = x0 + 0.01 * rng.normal(size=(5, 3))
        yq = np.zeros(5, dtype=int)
        knn = MahalanobisKNN(1, metric=L).fit(X, y)
        wrong = knn.predict(Q) != yq
        assert (wrong == (y[0] != 0)).all()  # the earlier of the tied pair decides, everywhere
        exact = exact_radius_1nn(X, y, Q, yq, metric=L)
        bound = certified_radius_knn(X, y, Q, yq, metric=L)
        assert ((exact == 0) == wrong).all() and ((bound == 0) | ~wrong).all() and (bound[wrong] == 0).all()
        n_wrong, n_right = n_wrong + wrong.sum(), n_right + (~wrong).sum()
    assert n_wrong > 50 and n_right > 50
