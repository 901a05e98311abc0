"""The one least-distance QP, ``min ||delta||_2`` subject to ``A delta <= b``, with checked answers.

Every polyhedron of the package (the exact 1-NN radius's per-negative region, the structural
attack's templates) is a least-distance problem. :func:`least_distance` answers it with the
fast path of least-distance programming (Lawson and Hanson, ch. 23: one non-negative least
squares problem), and trusts that path only as far as it can be checked:

- a point is returned only if it satisfies every constraint to ``tol`` plus the rounding error
  of evaluating the constraint (a bound computed per row);
- the polyhedron is declared empty only with a Farkas vector ``y >= 0`` whose certificate is
  verified with correctly rounded sums (:func:`farkas_reach`): no ``delta`` with
  ``||delta|| < reach`` satisfies ``A delta <= b``;
- otherwise a slower, robust path takes over: a phase-one linear program (scipy's HiGHS) finds
  the largest ball inside the polyhedron, then a primal active-set method walks from its
  centre to the optimum, solving each working set by least squares (no squared condition
  numbers, no dependence on which BLAS kernel rounds first).

A polyhedron with no interior at working precision (its largest inscribed ball has radius 0 to
``tol``) and no verified emptiness is reported as empty: a template of the attack that can only
be met with equality cannot be moved into strictly.

Also here, the unchecked fast paths that callers verify and back with :func:`least_distance`:
:func:`dual_active_set` (the exact radius's warm-started working-set dual) and
:func:`nnls_compiled` (the structural attack's compiled NNLS).
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["least_distance", "farkas_reach", "effective_reach", "nnls_least_distance", "dual_active_set",
           "nnls_compiled"]

_EPS = float(np.finfo(np.float64).eps)
#: the largest reach a certificate of emptiness has to cover, relative to max |b_i|
_FAR = 1e8
_SPLIT = 134217729.0  # 2**27 + 1, Veltkamp's splitting constant for float64


def _two_products(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a * b = p + e`` exactly, elementwise (Dekker's product; no overflow assumed)."""
    p = a * b
    ca, cb = _SPLIT * a, _SPLIT * b
    ah = ca - (ca - a)
    al = a - ah
    bh = cb - (cb - b)
    bl = b - bh
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


def _dot_exact(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``A^T y``, each component correctly rounded (error at most half an ulp)."""
    p, e = _two_products(A, y[:, None])
    terms = np.concatenate([p, e], axis=0)
    return np.array([math.fsum(col) for col in terms.T])


def farkas_reach(A: np.ndarray, b: np.ndarray, y: np.ndarray) -> float:
    """The radius of the ball around 0 that ``y`` proves free of points with ``A delta <= b``.

    For ``y >= 0`` and every feasible ``delta``: ``y^T b >= y^T A delta >= -||A^T y|| ||delta||``,
    so ``b^T y < 0`` gives ``||delta|| >= -b^T y / ||A^T y||``. Both quantities are evaluated
    with correctly rounded sums of exact products and bounded towards the safe side, so the
    returned radius holds for the floating-point ``A`` and ``b`` whatever the BLAS kernel.
    Returns 0 when ``y`` proves nothing, ``inf`` when ``A^T y`` is exactly 0 and ``b^T y < 0``.
    """
    y = np.clip(np.asarray(y, dtype=np.float64), 0.0, None)
    if not np.isfinite(y).all() or not y.any():
        return 0.0
    s = _dot_exact(A, y)
    bty = _dot_exact(b[:, None], y)[0]
    bty_hi = bty + abs(bty) * _EPS  # an upper bound of the exact b^T y
    if not bty_hi < 0:
        return 0.0
    norm_hi = float(np.sqrt(np.sum(np.abs(s) ** 2))) * (1.0 + (s.size + 4) * _EPS) + np.abs(s).sum() * _EPS
    if norm_hi == 0:
        return np.inf
    return float(-bty_hi / norm_hi * (1.0 - 4 * _EPS))


def _slack_floor(A: np.ndarray, b: np.ndarray, delta: np.ndarray, tol: float) -> np.ndarray:
    """Per-row tolerance of ``A delta - b <= 0``: ``tol`` plus the rounding bound of the row's
    evaluation."""
    return tol + 16 * (A.shape[1] + 2) * _EPS * (np.abs(A) @ np.abs(delta) + np.abs(b))


def _feasible(A: np.ndarray, b: np.ndarray, delta: np.ndarray, tol: float) -> bool:
    if not np.isfinite(delta).all():
        return False
    return bool(((A @ delta - b) <= _slack_floor(A, b, delta, tol)).all())


def nnls_least_distance(A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The least-distance problem's NNLS form: ``min ||E u - f||`` over ``u >= 0`` with
    ``E = [-A^T; -b^T]``, ``f = e_last``. Returns ``(delta, lam, u, denom)``: the candidate
    optimum ``delta = -A^T lam``, its multipliers ``lam = u / denom``, and ``denom = 1 + b^T u``,
    which is 0 (and ``u`` a Farkas vector) when the polyhedron is empty."""
    from scipy.optimize import nnls

    E = np.vstack([-A.T, -b[None, :]])
    f = np.zeros(E.shape[0])
    f[-1] = 1.0
    try:
        u, _ = nnls(E, f, maxiter=50 * E.shape[1] + 100)
    except RuntimeError:  # scipy's iteration limit
        nan = np.full(A.shape[1], np.nan)
        return nan, np.full(b.size, np.nan), np.zeros(b.size), np.nan
    denom = float(1.0 + b @ u)
    with np.errstate(all="ignore"):
        lam = u / denom
        delta = -(A.T @ lam)
    return delta, lam, u, denom


def _refine(A: np.ndarray, b: np.ndarray, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The optimum from its support: the minimum-norm solution of ``A_S delta = b_S`` over the
    constraints with positive multipliers (least squares, so dependent rows are harmless)."""
    S = np.flatnonzero(lam > 0)
    if S.size == 0:
        return np.zeros(A.shape[1]), np.zeros(b.size)
    delta = np.linalg.lstsq(A[S], b[S], rcond=None)[0]
    full = np.zeros(b.size)
    full[S] = np.linalg.lstsq(A[S].T, -delta, rcond=None)[0]
    return delta, full


def _phase_one(A: np.ndarray, b: np.ndarray, reach: float) -> tuple[np.ndarray | None, float, np.ndarray | None]:
    """The largest ball inside ``{A delta <= b}`` (unit rows) and the box ``|delta|_inf <= reach``:
    ``min t`` s.t. ``A delta - t <= b``, ``t >= -1``, by HiGHS. Returns ``(centre, t, duals)``:
    ``-t`` is the radius when ``t < 0``; ``duals`` (``>= 0``) is a Farkas candidate when ``t > 0``."""
    from scipy.optimize import linprog

    m, dim = A.shape
    scale = float(np.abs(b).max(initial=0.0)) or 1.0  # relative: data of any scale
    c = np.zeros(dim + 1)
    c[-1] = 1.0
    A_ub = np.hstack([A, -np.ones((m, 1))])
    box = None if np.isinf(reach) else reach / scale
    bounds = [(None if box is None else -box, box)] * dim + [(-1.0, None)]
    res = linprog(c, A_ub=A_ub, b_ub=b / scale, bounds=bounds, method="highs",
                  options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
    if res.status != 0:
        raise RuntimeError(f"least-distance QP: HiGHS's phase one failed on {m} constraints in {dim} "
                           f"dimensions (status {res.status}: {res.message})")
    duals = -np.asarray(res.ineqlin.marginals, dtype=np.float64)
    return res.x[:dim] * scale, float(res.x[-1]) * scale, duals


def _primal_active_set(A: np.ndarray, b: np.ndarray, x: np.ndarray, tol: float,
                       max_iter: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """``min ||delta||`` over ``A delta <= b`` from a feasible ``x`` (Nocedal and Wright,
    algorithm 16.3): each step projects onto the null space of the working rows (least
    squares), stops at blocking constraints, and drops the most negative multiplier."""
    m, dim = A.shape
    floor = _slack_floor(A, b, x, tol)
    W = [int(i) for i in np.argsort(b - A @ x, kind="stable") if b[i] - A[i] @ x <= floor[i]]
    W = _independent(A, W)
    max_iter = max_iter or 50 * (m + dim) + 100
    for _ in range(max_iter):
        p = -x  # the step minimising ||x + p|| with A_W p = 0: -x less its part in A_W's row space
        coef = np.zeros(0)
        if W:
            Aw = A[W]
            _, sv, Vt = np.linalg.svd(Aw, full_matrices=False)
            basis = Vt[sv > 1e-12 * sv[0]]
            p = np.zeros(dim) if basis.shape[0] == dim else -(x - basis.T @ (basis @ x))
            coef = np.linalg.lstsq(Aw.T, x, rcond=None)[0]
        # a step below 1e-9 of |x| (an ill-conditioned working set's rounding; it can bring the
        # constraint just dropped straight back) changes |x| by a relative 1e-9 at most: stationary
        if np.linalg.norm(p) <= 1e-9 * np.linalg.norm(x):
            lam = -coef  # x = -Aw^T lam at a stationary point of the working set
            if not W or lam.min() >= -1e-12 * np.abs(lam).max():
                full = np.zeros(m)
                full[W] = np.clip(lam, 0.0, None)
                return x, full
            W.pop(int(np.argmin(lam)))
            continue
        Ap = A @ p
        room = b - A @ x
        alpha, block = 1.0, -1
        for i in np.flatnonzero(Ap > 1e-14 * np.linalg.norm(p)):
            if i in W:
                continue
            a_i = max(room[i], 0.0) / Ap[i]
            if a_i < alpha:
                alpha, block = a_i, int(i)
        x = x + alpha * p
        if block >= 0:
            W.append(block)
    return None


def _independent(A: np.ndarray, rows: list[int]) -> list[int]:
    """A maximal linearly independent prefix-greedy subset of ``rows``."""
    kept: list[int] = []
    for r in rows:
        if len(kept) >= A.shape[1]:
            break
        trial = kept + [r]
        sv = np.linalg.svd(A[trial], compute_uv=False)
        if sv[-1] > 1e-10 * sv[0]:
            kept = trial
    return kept


def least_distance(A: np.ndarray, b: np.ndarray, *, tol: float, reach: float = np.inf,
                   start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """``min ||delta||_2`` subject to ``A delta <= b`` (rows of ``A`` of unit length).

    Parameters
    ----------
    A : ndarray of shape (m, dim)
    b : ndarray of shape (m,)
    tol : float
        Absolute feasibility tolerance of a returned point (plus the rounding bound of each row).
    reach : float, default=inf
        Emptiness is declared when a verified Farkas certificate excludes every point of norm
        below ``min(reach, 1e8 max|b_i|)`` (an infinite reach cannot be verified in floating
        point), or when the polyhedron has no interior within reach at working precision.
    start : ndarray of shape (dim,), optional
        A known feasible point (skips the phase-one program of the robust path).

    Returns
    -------
    (delta, lam) or None
        The optimum and its multipliers (``delta = -A^T lam`` up to rounding), or None.
    """
    A = np.ascontiguousarray(A, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    if b.size == 0:
        return np.zeros(A.shape[1]), np.zeros(0)
    reach = effective_reach(b, reach)
    with np.errstate(all="ignore"):
        delta, lam, u, denom = nnls_least_distance(A, b)
        if np.isfinite(denom) and denom > 1e-12 and np.isfinite(delta).all():
            if _optimal(A, b, delta, lam, tol):
                return delta, lam
            delta, lam = _refine(A, b, lam)
            if _optimal(A, b, delta, lam, tol):
                return delta, lam
        elif farkas_reach(A, b, u) >= reach:
            return None
        return _robust(A, b, tol=tol, reach=reach, start=start)


def effective_reach(b: np.ndarray, reach: float) -> float:
    """The reach an emptiness certificate must cover: ``min(reach, 1e8 max|b_i|)`` (an infinite
    reach cannot be verified in floating point; with ``b = 0``, ``delta = 0`` is feasible)."""
    far = _FAR * float(np.abs(b).max(initial=0.0))
    return min(float(reach), far) if far > 0 else float(reach)


def _optimal(A: np.ndarray, b: np.ndarray, delta: np.ndarray, lam: np.ndarray, tol: float) -> bool:
    """Feasible (:func:`_feasible`), multipliers non-negative, and the duality gap
    ``lam^T (b - A delta)`` (which bounds ``||delta||^2 - ||delta*||^2``) small: the norm returned
    is within a relative 1e-9 (plus ``tol``) of the optimum's."""
    if not (_feasible(A, b, delta, tol) and np.isfinite(lam).all()):
        return False
    scale = float(np.abs(lam).max(initial=0.0))
    if lam.min(initial=0.0) < -1e-9 * max(scale, 1e-300):
        return False
    gap = float(np.clip(lam, 0.0, None) @ np.clip(b - A @ delta, 0.0, None))
    dd = float(delta @ delta)
    return gap <= 2e-9 * dd + 2.0 * tol * np.sqrt(dd) + 1e-300


def _robust(A, b, *, tol, reach, start):
    """The slow path: phase one (or ``start``), then the primal active-set method."""
    if start is None or not _feasible(A, b, start, tol):
        centre, t, duals = _phase_one(A, b, reach)
        if abs(t) <= tol:  # no interior within reach at working precision: met with equality at best
            return None
        if t > tol:  # every point within reach violates a constraint by t: HiGHS's duals must prove it
            y = _polish(A, duals)
            if farkas_reach(A, b, y) >= reach or _farkas_box(A, b, y, reach):
                return None
            if t <= 1e-7 * float(np.abs(b).max()):  # within working precision of feasible: no interior
                return None
            raise RuntimeError(f"least-distance QP: HiGHS finds no point within reach {reach:.3g} of {len(b)} "
                               f"constraints in {A.shape[1]} dimensions (violation {t:.3g}), and its duals "
                               "do not verify it")
        start = centre
    got = _primal_active_set(A, b, np.asarray(start, dtype=np.float64), tol)
    if got is None or not _feasible(A, b, got[0], tol):
        raise RuntimeError(f"least-distance QP: the active-set method did not reach a feasible optimum of "
                           f"{len(b)} constraints in {A.shape[1]} dimensions (tolerance {tol:.3g})")
    return got


def _polish(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A Farkas candidate on the support of ``y`` with ``A^T y`` as small as rounding allows:
    ``min ||A_S^T z||`` over ``z >= 0`` summing to 1 (NNLS; an LP's duals are only as exact
    as its tolerances)."""
    from scipy.optimize import nnls

    y = np.clip(np.nan_to_num(np.asarray(y, dtype=np.float64)), 0.0, None)
    S = np.flatnonzero(y > 1e-12 * y.max(initial=0.0))
    out = np.zeros(y.size)
    if S.size:
        weight = 1e3 * max(1.0, float(np.abs(A[S]).max()))
        E = np.vstack([A[S].T, np.full(S.size, weight)])
        f = np.zeros(E.shape[0])
        f[-1] = weight
        try:
            out[S] = nnls(E, f, maxiter=50 * S.size + 100)[0]
        except RuntimeError:
            out[S] = y[S]
    return out


def _farkas_box(A: np.ndarray, b: np.ndarray, y: np.ndarray, reach: float) -> bool:
    """Whether ``y >= 0`` proves that no ``delta`` with ``|delta|_inf <= reach`` (a box holding the
    ball of radius ``reach``) meets ``A delta <= b``: ``b^T y + reach ||A^T y||_1 < 0``, evaluated
    with correctly rounded sums and bounded towards the safe side."""
    if not np.isfinite(reach):
        return False
    y = np.clip(np.asarray(y, dtype=np.float64), 0.0, None)
    if not np.isfinite(y).all() or not y.any():
        return False
    s = _dot_exact(A, y)
    bty = _dot_exact(b[:, None], y)[0]
    l1 = math.fsum(np.abs(s)) * (1.0 + (s.size + 2) * _EPS)
    return bool(bty + abs(bty) * _EPS + reach * l1 * (1.0 + 2 * _EPS) < 0)


# ------------------------------------------------------------------ fast paths
#
# Unchecked solvers that the callers verify (feasibility, multipliers) and back with
# ``least_distance``: a warm-started dual active set (the exact radius's per-negative projection)
# and a compiled NNLS through a QR factorisation updated column by column (the structural
# attack's region QP, :mod:`robust_metric_learning.attacks.knn._compiled`).


def dual_active_set(G: np.ndarray, b: np.ndarray, lam: np.ndarray, tol: float) -> tuple[np.ndarray, bool]:
    """The dual of a least-distance problem on a working set, ``min 1/2 l^T G l + b^T l`` over
    ``l >= 0`` with ``G = A A^T`` (active set, Lawson-Hanson style): the warm-started fast path
    of the exact radius, which falls back to :func:`least_distance` where it does not converge.

    ``lam`` is a feasible warm start (optimal on its support). Stops when every gradient
    entry ``(G l + b)_i`` (the primal slack of constraint ``i``) is ``>= -tol``. Returns the
    solution and whether it converged (False on degenerate, linearly dependent supports).
    """
    n = b.size
    F = lam > 0
    for _ in range(3 * n + 20):
        grad = G @ lam + b
        viol = np.where(F, np.inf, grad + tol)
        t = int(np.argmin(viol))
        if viol[t] >= 0:
            return lam, True
        F[t] = True
        for inner in range(n + 1):
            idx = np.flatnonzero(F)
            try:
                s = np.linalg.solve(G[np.ix_(idx, idx)], -b[idx])
            except np.linalg.LinAlgError:
                return lam, False
            if (s > 0).all():
                lam[:] = 0.0
                lam[idx] = s
                break
            if inner == 0 and s[np.searchsorted(idx, t)] <= 0:
                return lam, False  # the entering constraint depends on the support
            cur = lam[idx]
            neg = s <= 0
            alpha = np.min(cur[neg] / (cur[neg] - s[neg]))
            lam[idx] = cur + alpha * (s - cur)
            drop = idx[lam[idx] <= 0]
            F[drop] = False
            lam[drop] = 0.0
    return lam, False


@numba.njit(cache=True, nogil=True)
def _qr_add(Et, j, Qt, R, p):  # pragma: no cover - compiled
    """Append column ``j`` of ``E`` (row ``j`` of ``Et``) to the thin QR factors (rows of
    ``Qt[:p]``, ``R[:p, :p]``) by Gram-Schmidt, twice; False if numerically dependent on them."""
    v = Et[j].copy()
    ref = np.sqrt(v @ v)
    for _ in range(2):
        for k in range(p):
            r = Qt[k] @ v
            R[k, p] += r
            v -= r * Qt[k]
    nrm = np.sqrt(v @ v)
    if nrm <= 1e-11 * ref:
        R[:p + 1, p] = 0.0
        return False
    Qt[p] = v / nrm
    R[p, p] = nrm
    return True


@numba.njit(cache=True, nogil=True)
def _qr_solve(Qt, R, p, last):  # pragma: no cover - compiled
    """Least-squares solution on the factored columns for the right-hand side ``e_last``."""
    x = np.empty(p)
    for i in range(p - 1, -1, -1):
        acc = Qt[i, last]
        for k in range(i + 1, p):
            acc -= R[i, k] * x[k]
        x[i] = acc / R[i, i]
    return x


@numba.njit(cache=True, nogil=True)
def nnls_compiled(U, b, u, max_iter):  # pragma: no cover - compiled
    """Lawson-Hanson NNLS ``min ||E u - f||`` over ``u >= 0`` with ``E = [-U^T; -b^T]`` and
    ``f = e_last`` (least-distance programming), the passive columns kept as thin QR factors
    (appended one at a time, refactored when columns leave). ``u``: a feasible start.
    Returns ``(u, ok)``."""
    w, dim = U.shape
    Et = np.empty((w, dim + 1))
    Et[:, :dim] = -U
    Et[:, dim] = -b
    Qt = np.zeros((w, dim + 1))
    R = np.zeros((w, w))
    cols = np.empty(w, dtype=np.int64)
    p = 0
    for i in range(w):  # factor the warm start's support
        if u[i] > 0:
            if not _qr_add(Et, i, Qt, R, p):
                return u, False
            cols[p] = i
            p += 1
    passive = u > 0
    blocked = np.zeros(w, dtype=np.bool_)
    tol = 1e-12 * max(1.0, np.abs(Et).max())
    it = 0
    j = -1
    inner = p > 0
    while True:
        while inner:  # make u optimal on the passive set (Lawson-Hanson's inner loop)
            it += 1
            if it > max_iter:
                return u, False
            sol = _qr_solve(Qt, R, p, dim)
            if j >= 0:
                j = -1
                if sol[p - 1] <= 0:  # the entering column cannot grow: leave it out
                    p -= 1
                    passive[cols[p]] = False
                    blocked[cols[p]] = True
                    R[:p + 1, p] = 0.0
                    break
            if (sol > 0).all():
                u[:] = 0.0
                for a in range(p):
                    u[cols[a]] = sol[a]
                blocked[:] = False
                break
            alpha = np.inf
            for a in range(p):
                if sol[a] <= 0:
                    alpha = min(alpha, u[cols[a]] / (u[cols[a]] - sol[a]))
            keep = np.empty(p, dtype=np.int64)
            n_keep = 0
            for a in range(p):
                c = cols[a]
                u[c] += alpha * (sol[a] - u[c])
                if u[c] <= 0:
                    u[c] = 0.0
                    passive[c] = False
                else:
                    keep[n_keep] = c
                    n_keep += 1
            R[:] = 0.0
            p = 0
            for a in range(n_keep):
                if not _qr_add(Et, keep[a], Qt, R, p):
                    return u, False
                cols[p] = keep[a]
                p += 1
            if p == 0:
                break
        inner = False
        r = -(Et.T @ u)
        r[dim] += 1.0  # f - E u
        grad = Et @ r
        j, best = -1, tol
        for i in range(w):
            if not passive[i] and not blocked[i] and grad[i] > best:
                j, best = i, grad[i]
        if j < 0:
            return u, True
        if not _qr_add(Et, j, Qt, R, p):  # dependent on the passive columns: no progress there
            blocked[j] = True
            j = -1
            continue
        passive[j] = True
        cols[p] = j
        p += 1
        inner = True
