"""White-box attacks on Mahalanobis K-NN that use the geometry (DESIGN §2).

- :class:`ExactAttack` (K = 1): the exact minimal perturbation of
  :func:`~robust_metric_learning.certify.exact_radius_1nn`, pushed a tiny step past the
  decision boundary so the prediction really flips.
- :class:`StructuralAttack` (any K): with ``s = K//2 + 1``, pull ``s`` training points of one
  other class ``t`` into the neighbourhood (or, with three or more classes, fewer points of
  ``t`` plus a neighbourhood in which ``t`` still wins the vote). "Every chosen point is closer
  (under ``M``) than every rival, except a few excused ones" is a set of linear constraints on
  the perturbation, so the smallest perturbation is a least-distance QP, solved by constraint
  generation (compiled: Lawson-Hanson NNLS on the working set, warm-started; certify's scipy
  solver as the reference and fallback). Candidate templates are visited in increasing order
  of a cheap lower bound, the best is improved by a local search (templates read off the
  adversarial point, one-point swaps guided by the QP's multipliers), and the smallest
  perturbation that really flips ``predict`` is returned.

Speed: a QP stops as soon as a lower bound of its optimum reaches the best radius found (the
working set's optimum, and ``sqrt(|delta|^2 + d^2)`` with ``d`` the distance from the working
set's optimum ``delta`` to a violated half-space); the lower bounds of all target classes come
from one GEMM; each point's work runs single-threaded (use ``n_jobs`` for more cores).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from .._solver import effective_reach, farkas_reach, least_distance
from ..certify import exact_radius_1nn
from ..margin import NEAR_TIE, NORM_FLOOR, margin_from_distances, repair_pair_norms, tie_tolerance, vote
from .base import MinimizationAttack, _Target

__all__ = ["ExactAttack", "StructuralAttack"]

#: Relative steps tried, in order, when pushing a boundary point towards its target.
_PUSH_STEPS = (1e-9, 1e-7, 1e-5, 1e-3)
#: Relative tightening of the QP constraints (strict inequalities), and the retry value.
_TIGHTEN = (1e-8, 1e-5)
#: Local search starts from every one of the best templates within this factor of the best.
_RESTART = 1.25
#: Most violated pairs added to the working set per round of constraint generation.
_PER_ROUND = 10
#: Rounds of constraint generation first scan only this many nearest rivals.
_LOCAL_RIVALS = 64
#: A template whose region holds no point within this factor of the distance to its farthest
#: member counts as empty (the least-distance solver verifies that before it says so).
_FAR = 1e6
#: Compiled dot products may be reordered (vectorised) and fused; infinities keep their meaning.
_FAST = {"reassoc", "contract"}


def _check_int(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


class ExactAttack(MinimizationAttack):
    """The optimal attack on a 1-NN classifier: the exact minimal l2 perturbation.

    Wraps ``exact_radius_1nn(..., return_adversarial=True)``; the boundary point it returns
    is moved a relative step of at most ``1e-3`` (first ``1e-9``) towards its nearest
    other-class training point, which makes that point strictly the nearest, and kept once
    ``predict`` flips. The radius reported is the norm of the perturbation actually used.

    Parameters
    ----------
    tol : float, default=1e-10
        Tolerance of the exact QP (see :func:`exact_radius_1nn`).
    n_jobs, chunk_size, random_state, progress : see :class:`KNNAttack`.

    Examples
    --------
    >>> from robust_metric_learning.neighbors import MahalanobisKNN
    >>> knn = MahalanobisKNN().fit([[0.0], [2.0]], [0, 1])
    >>> res = ExactAttack()(knn, [[0.5]], [0])
    >>> bool(res.success[0]), round(float(res.radii[0]), 6)
    (True, 0.5)
    """

    name = "exact"

    def __init__(self, *, tol: float = 1e-10, n_jobs: int | None = None, chunk_size: int = 64,
                 random_state: int | None = None, progress: bool | None = None):
        super().__init__(n_jobs=n_jobs, chunk_size=chunk_size, random_state=random_state, progress=progress)
        self.tol = tol

    def _check_params(self, target: _Target) -> None:
        if target.k != 1:
            raise ValueError(f"ExactAttack is for 1-NN only; the model has n_neighbors={target.k} "
                             "(use StructuralAttack)")
        if not (isinstance(self.tol, (float, int)) and 0 < self.tol < 1):
            raise ValueError(f"tol must be a number in (0, 1), got {self.tol!r}")

    def _run(self, target: _Target, X: np.ndarray, codes: np.ndarray) -> np.ndarray:
        knn = target.knn
        _, Z = exact_radius_1nn(knn._fit_X, knn.classes_[knn._y_codes], X, target.classes[codes], metric=knn,
                                return_adversarial=True, n_jobs=self.n_jobs, memory_budget=target.memory_budget,
                                progress=self.progress, tol=self.tol, chunk_size=self.chunk_size)
        return _push_1nn(target, X, Z, codes)


def _push_1nn(target: _Target, X: np.ndarray, Z: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Move each boundary point ``Z[i]`` towards its nearest other-class training point, by the
    smallest step of ``_PUSH_STEPS`` that flips the prediction (``X[i]`` where none does)."""
    geo = target.geo
    D = np.where(geo.codes[None, :] == codes[:, None], np.inf, geo.sq_dist(Z))
    j = D.argmin(1)  # first minimum: the smaller training index at ties
    toward = geo.X[j] + geo.mean - Z
    out = X.copy()
    todo = np.ones(len(Z), dtype=bool)
    for eta in _PUSH_STEPS:
        idx = np.flatnonzero(todo)
        if idx.size == 0:
            break
        cand = Z[idx] + eta * toward[idx]
        flipped = target.predict_codes(cand) != codes[idx]
        out[idx[flipped]] = cand[flipped]
        todo[idx[flipped]] = False
    return out


# ------------------------------------------------------------------- one point's view


class _Point:
    """A test point against the training set: squared distances ``d``, the training points
    in (distance, index) order, and on demand the rival lists of templates, in the same order.

    A rival *kind* is ``(c, False)``: every training point not of class ``c``, or ``(c, True)``:
    the points of class ``c``.
    """

    def __init__(self, target: _Target, x: np.ndarray, d: np.ndarray, y: int, mx_norm: np.ndarray):
        self.target, self.x, self.d, self.y = target, x, d, y
        self.Zu, self.Zu_sq = target.Zu.numpy(), target.Zu_sq.numpy()
        self.xc = x - target.geo.mean
        self.order = np.argsort(d, kind="stable")
        self.codes_o = target.geo.codes[self.order]
        self.mx_norm = mx_norm  # ||M x_i|| of the centred training points
        self._rivals: dict[tuple, tuple] = {}
        self._heads: dict[tuple, np.ndarray] = {}
        self._euclid: np.ndarray | None = None

    def rivals(self, kind: tuple) -> tuple[np.ndarray, np.ndarray]:
        """The rivals of ``kind`` in (distance, index) order, and their (unsquared) distances."""
        got = self._rivals.get(kind)
        if got is None:
            c, same = kind
            riv = self.order[(self.codes_o == c) if same else (self.codes_o != c)]
            got = self._rivals[kind] = (riv, np.sqrt(self.d[riv]))
        return got

    def nearest(self, kind: tuple, m: int, excused: np.ndarray | None = None) -> np.ndarray:
        """The ``m`` nearest rivals of ``kind`` that are not ``excused``."""
        e = 0 if excused is None else excused.size
        head = self._heads.get(kind)
        if head is None or (head.size < m + e and head.size < self._n_rivals(kind)):
            c, same = kind
            want = max(m + e, 64)
            if kind in self._rivals or same:
                head = self.rivals(kind)[0][:want]
            else:  # the first ``want`` non-c points lie among the first want + |c| points
                lim = want + int(self.target.class_index[c].size)
                head = self.order[:lim][self.codes_o[:lim] != c][:want]
            self._heads[kind] = head
        if e:
            head = head[:m + e]
            head = head[~np.isin(head, excused)]
        return head[:m]

    def _n_rivals(self, kind: tuple) -> int:
        c, same = kind
        size = int(self.target.class_index[c].size)
        return size if same else self.d.size - size

    def euclid(self, idx: np.ndarray) -> np.ndarray:
        """Plain (not Mahalanobis) l2 distances from ``x`` to training points ``idx`` (each
        computed once per point, when first asked for)."""
        if self._euclid is None:
            self._euclid = np.full(self.d.size, np.nan)
        got = self._euclid[idx]
        miss = np.isnan(got)
        if miss.any():
            got[miss] = self._euclid[idx[miss]] = np.linalg.norm(self.target.geo.X[idx[miss]] - self.xc, axis=1)
        return got

    def sq_dist_from(self, z: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distances from the raw point ``z`` to every training point."""
        geo = self.target.geo
        zc = z - geo.mean
        zq = zc if geo.L is None else geo.L @ zc
        return np.maximum(geo.Z_sq - 2.0 * (geo.Z @ zq) + zq @ zq, 0.0)

    def max_half_space(self, P: np.ndarray, Q: np.ndarray) -> float:
        """The largest entry of ``half_space(P, Q)`` (compiled: no intermediate matrix)."""
        geo = self.target.geo
        return float(_max_half_space_compiled(geo.MX, geo.MX_sq, self.d, np.ascontiguousarray(P, dtype=np.int64),
                                              np.ascontiguousarray(Q, dtype=np.int64), NORM_FLOOR))

    def half_space(self, P: np.ndarray, Q: np.ndarray) -> np.ndarray:
        """``[distance from x to {z : z at least as close to x_p as to x_q}]_+`` (l2), all pairs:
        minus the margin (DESIGN §2), clipped at 0."""
        return np.clip(-margin_from_distances(self.d[P][:, None], self.d[Q][None, :],
                                              _pair_norms(self.target.geo, P, Q)), 0.0, None)


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _max_half_space_compiled(MX, MX_sq, d, P, Q, floor):  # pragma: no cover - compiled
    best = 0.0
    for p in P:
        for q in Q:
            nrm = np.sqrt(max(MX_sq[p] + MX_sq[q] - 2.0 * (MX[p] @ MX[q]), 0.0))
            best = max(best, (d[p] - d[q]) / (2.0 * max(nrm, floor)))
    return best


def _pair_norms(geo, P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """``||M (x_p - x_q)||`` for all pairs (one small GEMM)."""
    sq = geo.MX_sq[P][:, None] + geo.MX_sq[Q][None, :] - 2.0 * (geo.MX[P] @ geo.MX[Q].T)
    return np.sqrt(np.maximum(sq, 0.0))


# ----------------------------------------------------------------------- the region QP


def _region_qp(pt: _Point, members: np.ndarray, kind: tuple, excused: np.ndarray, *, tau: float, tol: float,
               bound: float = np.inf, max_rounds: int = 200) -> tuple | None:
    """``min ||delta||`` such that every ``members`` point is closer to ``x + delta`` (under ``M``)
    than every rival of ``kind`` outside ``excused``, by ``tau`` (l2 units).

    Pair ``(m, o)``: ``u^T delta <= margin(x; x_m, x_o) - tau`` with the unit row
    ``u = M (x_o - x_m) / ||M (x_o - x_m)||``. Constraint generation: only violated pairs enter
    the working set, whose least-distance problem is certify's NNLS solver. A rival with
    ``sqrt(d_o) > max_m sqrt(d_m) + 2 ||L delta||`` is farther from ``x + delta`` than every
    member (triangle inequality), so each round scans only the rivals nearer than that (a prefix
    of the sorted rival list); pair norms are computed for violated pairs only. The working
    set's optimum only grows as pairs are added, so the QP stops (None) once it reaches
    ``bound``. Returns ``(delta, (m, o, lam))`` with the working set's pairs (training indices)
    and multipliers, or None when the region is empty or its optimum is ``>= bound`` (each
    working set's problem through :func:`~robust_metric_learning._solver.least_distance`, which
    declares emptiness only with a verified certificate or a region without interior).
    """
    geo = pt.target.geo
    MX, MX_sq, L = geo.MX, geo.MX_sq, geo.L
    n, d = MX.shape[0], pt.d
    riv, root = pt.rivals(kind)
    d_m = d[members]
    reach0 = float(np.sqrt(d_m.max()))
    MXm = MX[members]
    nrm_m = pt.mx_norm[members]
    # screening slack: tau and tol times an upper bound of every pair norm ||M (x_o - x_m)||
    slack = (tau + tol) * 2.0 * float(pt.mx_norm.max())
    used_m = np.zeros(0, dtype=np.int64)  # pairs (positions in members, in riv) already in the
    used_o = np.zeros(0, dtype=np.int64)  # working set, or coincident under M
    U = np.zeros((0, MX.shape[1]))
    b = np.zeros(0)
    W_m, W_o = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    delta, lam = np.zeros(MX.shape[1]), np.zeros(0)
    for _ in range(max_rounds):
        L_delta = float(np.linalg.norm(delta if L is None else L @ delta))
        q = int(np.searchsorted(root, (reach0 + 2.0 * L_delta) * (1 + 1e-9), side="right"))
        near = riv[:q]
        # g = (M delta)^T (x_o - x_m) - (d_o - d_m) / 2; the pair needs g <= -tau * ||M (x_o - x_m)||
        g = -0.5 * (d[near][None, :] - d_m[:, None])
        if W_m.size:  # delta != 0: gather the rows, or one pass over all of them
            g += (MX[near] @ delta if 4 * q < n else (MX @ delta)[near])[None, :] - (MXm @ delta)[:, None]
        if excused.size:
            g[:, np.isin(near, excused)] = -np.inf
        if used_m.size:
            sel = used_o < q
            g[used_m[sel], used_o[sel]] = -np.inf
        pm, po = np.nonzero(g > -slack)
        if pm.size == 0:
            return delta, (W_m, W_o, lam)
        if pm.size > 8 * _PER_ROUND:  # exact norms for a shortlist: the largest g / (norm bound)
            short = np.argsort(-g[pm, po] / (nrm_m[pm] + pt.mx_norm[near[po]]), kind="stable")[:8 * _PER_ROUND]
            if (g[pm[short], po[short]] > 0).any():  # some surely violated: enough to go on
                pm, po = pm[short], po[short]
        m_idx, o_idx = members[pm], near[po]
        dot = np.einsum("ij,ij->i", MXm[pm], MX[o_idx])
        norm = repair_pair_norms(np.sqrt(np.maximum(MX_sq[m_idx] + MX_sq[o_idx] - 2.0 * dot, 0.0)),
                                 MX[m_idx], MX[o_idx], geo.mag[m_idx], geo.mag[o_idx])
        coincident = norm == 0  # tied under M: the index rule decides, not delta
        if (coincident & (o_idx < m_idx)).any():
            return None  # a rival always ranks before a member: the template cannot be met
        viol = np.full(pm.size, -np.inf)
        ok = ~coincident
        viol[ok] = g[pm[ok], po[ok]] / norm[ok] + tau
        top = np.argsort(-viol, kind="stable")[:_PER_ROUND]
        top = top[viol[top] > tol]
        new = np.concatenate([np.flatnonzero(coincident), top])
        used_m, used_o = np.concatenate([used_m, pm[new]]), np.concatenate([used_o, po[new]])
        if top.size == 0:
            return delta, (W_m, W_o, lam)
        W_m, W_o = np.concatenate([W_m, m_idx[top]]), np.concatenate([W_o, o_idx[top]])
        U = np.vstack([U, (MX[o_idx[top]] - MX[m_idx[top]]) / norm[top, None]])
        b = np.concatenate([b, margin_from_distances(d[m_idx[top]], d[o_idx[top]], norm[top]) - tau])
        got = least_distance(U, b, tol=tol, reach=bound)
        if got is None:
            return None  # verified: no point of the region is nearer than ``bound``
        delta, lam = got
        if np.linalg.norm(delta) >= bound:
            return None  # the working set's optimum only grows as constraints are added
    return None


# ------------------------------------------------- the region QP, compiled (the fast path)
#
# The same constraint generation as ``_region_qp``, compiled: the scan of the rivals within reach,
# the shortlist, the exact pair norms, and the least-distance problem of the working set through
# Lawson and Hanson's NNLS (E = [-U^T; -b^T]), warm started from the previous round (adding
# columns to E leaves the old solution optimal on its support). Where NNLS or the final
# feasibility check fails, it reports so and the caller reruns the reference ``_region_qp``
# (the checked solver). Where NNLS finds the working set empty, it returns the working set and
# the Farkas candidate; the caller accepts the verdict only if the certificate verifies.

_QP_DONE, _QP_NONE, _QP_NUMERIC, _QP_EMPTY = 0, 1, 2, 3


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
def _nnls_ldp(U, b, u, max_iter):  # pragma: no cover - compiled
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


@numba.njit(cache=True, nogil=True)
def _top_stable(v, k):  # pragma: no cover - compiled
    """``np.argsort(-v, kind="stable")[:k]`` by selection: the ``k`` largest, ties by index."""
    n = v.size
    if n <= k:
        return np.argsort(-v, kind="mergesort")
    thr = np.partition(v, n - k)[n - k]  # the k-th largest value
    idx = np.empty(k, dtype=np.int64)
    c = 0
    for i in range(n):
        if v[i] > thr:
            idx[c] = i
            c += 1
    for i in range(n):
        if c == k:
            break
        if v[i] == thr:
            idx[c] = i
            c += 1
    return idx[np.argsort(-v[idx], kind="mergesort")]


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _region_qp_compiled(MX, MX_sq, Lm, has_L, d, members, riv, root, excused, mx_norm, mag, tau, tol, bound,
                        max_rounds, per_round, floor, q_local, near_tie, tie):  # pragma: no cover - compiled
    """See ``_region_qp``; the rounds first scan only the ``q_local`` nearest rivals (their QP is a
    lower bound, often enough to stop at ``bound``), then all within reach. Returns
    ``(status, delta, W_m, W_o, lam)``."""
    n, dim = MX.shape
    k = members.size
    d_m = np.empty(k)
    nrm_m = np.empty(k)
    for i in range(k):
        d_m[i] = d[members[i]]
        nrm_m[i] = mx_norm[members[i]]
    reach0 = np.sqrt(d_m.max())
    slack = (tau + tol) * 2.0 * mx_norm.max()
    cap = 32
    U = np.empty((cap, dim))
    b = np.empty(cap)
    Wm = np.empty(cap, dtype=np.int64)
    Wo = np.empty(cap, dtype=np.int64)
    u = np.zeros(cap)
    nw = 0
    delta = np.zeros(dim)
    lam = np.zeros(0)
    used = np.zeros((k, 64), dtype=np.bool_)
    local = q_local > 0
    for _ in range(max_rounds):
        if has_L:
            L_delta = np.sqrt(((Lm @ delta) ** 2).sum())
        else:
            L_delta = np.sqrt((delta ** 2).sum())
        q_reach = np.searchsorted(root, (reach0 + 2.0 * L_delta) * (1 + 1e-9), side="right")
        q = min(q_reach, q_local) if local else q_reach
        if q > used.shape[1]:
            grown = np.zeros((k, max(q, 2 * used.shape[1])), dtype=np.bool_)
            grown[:, :used.shape[1]] = used
            used = grown
        md = np.zeros(k)
        if nw > 0:
            for i in range(k):
                acc = 0.0
                for t in range(dim):
                    acc += MX[members[i], t] * delta[t]
                md[i] = acc
        dd = delta @ delta
        skip = np.zeros(q, dtype=np.bool_)
        for e in range(excused.size):
            for j in range(q):
                if riv[j] == excused[e]:
                    skip[j] = True
        # pairs whose constraint g <= -tau ||M (x_o - x_m)|| may be violated, scanned rival by
        # rival (nearest first) and then put in row-major order. A surely violated pair (g > 0)
        # whose half-space is so far from delta that it proves the optimum >= bound (see below)
        # ends the QP; its exact norm is computed only where |(|M x_m| - |M x_o|)|, a lower
        # bound of that norm, leaves this possible
        cand_i = np.empty(k * q, dtype=np.int64)
        cand_j = np.empty(k * q, dtype=np.int64)
        cand_g = np.empty(k * q)
        per_i = np.zeros(k + 1, dtype=np.int64)
        cnt = 0
        for j in range(q):
            if skip[j]:
                continue
            o = riv[j]
            mo = 0.0
            if nw > 0:
                for t in range(dim):
                    mo += MX[o, t] * delta[t]
            for i in range(k):
                if used[i, j]:
                    continue
                g = -0.5 * (d[o] - d_m[i]) + (mo - md[i])
                if g > -slack:
                    cand_i[cnt], cand_j[cnt], cand_g[cnt] = i, j, g
                    per_i[i + 1] += 1
                    cnt += 1
                    gap = abs(nrm_m[i] - mx_norm[o])  # <= ||M (x_o - x_m)||: g / gap + tau bounds its distance
                    if g > 0 and (g + tau * gap) ** 2 >= (bound * bound - dd) * gap * gap:
                        acc = 0.0  # could prove the bound: its exact distance to the half-space
                        m_ = members[i]
                        for t in range(dim):
                            acc += (MX[m_, t] - MX[o, t]) ** 2  # by subtraction: no cancellation
                        nr = np.sqrt(acc)
                        if nr > tie * (mag[m_] + mag[o]):
                            v = g / nr + tau
                            if dd + v * v >= bound * bound:
                                return _QP_NONE, delta, Wm[:nw].copy(), Wo[:nw].copy(), lam
        for i in range(k):
            per_i[i + 1] += per_i[i]
        pm = np.empty(cnt, dtype=np.int64)
        po = np.empty(cnt, dtype=np.int64)
        gv = np.empty(cnt)
        for c in range(cnt):
            at = per_i[cand_i[c]]
            pm[at], po[at], gv[at] = cand_i[c], cand_j[c], cand_g[c]
            per_i[cand_i[c]] += 1
        if cnt == 0:
            if q < q_reach:  # the nearest rivals are satisfied: now all of them
                local = False
                continue
            return _QP_DONE, delta, Wm[:nw].copy(), Wo[:nw].copy(), lam
        if cnt > 8 * per_round:  # exact norms for a shortlist: the largest g / (norm bound)
            key = np.empty(cnt)
            for c in range(cnt):
                key[c] = gv[c] / (nrm_m[pm[c]] + mx_norm[riv[po[c]]])
            short = _top_stable(key, 8 * per_round)
            if (gv[short] > 0).any():
                pm, po, gv = pm[short], po[short], gv[short]
                cnt = short.size
        viol = np.empty(cnt)
        norms = np.empty(cnt)
        max_viol = 0.0
        for c in range(cnt):
            m_, o_ = members[pm[c]], riv[po[c]]
            acc = 0.0
            for t in range(dim):
                acc += MX[m_, t] * MX[o_, t]
            nr = np.sqrt(max(MX_sq[m_] + MX_sq[o_] - 2.0 * acc, 0.0))
            size = mag[m_] + mag[o_]
            if nr <= near_tie * size:  # as margin.repair_pair_norms: recompute by subtraction
                acc = 0.0
                for t in range(dim):
                    acc += (MX[m_, t] - MX[o_, t]) ** 2
                nr = np.sqrt(acc)
            norms[c] = nr
            if nr <= tie * size:  # tied under M: the index rule decides, not delta
                if o_ < m_:  # a rival always ranks before a member: the template cannot be met
                    return _QP_NONE, delta, Wm[:nw].copy(), Wo[:nw].copy(), lam
                used[pm[c], po[c]] = True
                viol[c] = -np.inf
            else:
                viol[c] = gv[c] / nr + tau
                max_viol = max(max_viol, viol[c])
        # delta is the nearest point of the working set's polyhedron, so every point of it is at
        # least sqrt(|delta|^2 + dist(delta, H)^2) from the origin for each violated half-space H
        if (delta @ delta) + max_viol * max_viol >= bound * bound:
            return _QP_NONE, delta, Wm[:nw].copy(), Wo[:nw].copy(), lam
        top = _top_stable(viol, per_round)
        n_new = 0
        for c in top:
            if viol[c] > tol:
                n_new += 1
        if n_new == 0:
            if q < q_reach:
                local = False
                continue
            return _QP_DONE, delta, Wm[:nw].copy(), Wo[:nw].copy(), lam
        if nw + n_new > cap:
            cap2 = max(2 * cap, nw + n_new)
            U2 = np.empty((cap2, dim))
            U2[:nw] = U[:nw]
            b2 = np.empty(cap2)
            b2[:nw] = b[:nw]
            Wm2 = np.empty(cap2, dtype=np.int64)
            Wm2[:nw] = Wm[:nw]
            Wo2 = np.empty(cap2, dtype=np.int64)
            Wo2[:nw] = Wo[:nw]
            u2 = np.zeros(cap2)
            u2[:nw] = u[:nw]
            U, b, Wm, Wo, u, cap = U2, b2, Wm2, Wo2, u2, cap2
        for c in top:
            if viol[c] <= tol:
                continue
            m_, o_ = members[pm[c]], riv[po[c]]
            used[pm[c], po[c]] = True
            U[nw] = (MX[o_] - MX[m_]) / norms[c]
            b[nw] = (d[o_] - d[m_]) / (2.0 * max(norms[c], floor)) - tau
            Wm[nw], Wo[nw] = m_, o_
            u[nw] = 0.0
            nw += 1
        uu, ok = _nnls_ldp(U[:nw], b[:nw], u[:nw].copy(), 5 * nw + 100)
        if not ok:
            return _QP_NUMERIC, delta, Wm[:nw].copy(), Wo[:nw].copy(), lam
        u[:nw] = uu
        denom = 1.0 + b[:nw] @ uu
        if denom <= 1e-12:  # the region looks empty: uu is the Farkas candidate, checked by the caller
            return _QP_EMPTY, delta, Wm[:nw].copy(), Wo[:nw].copy(), uu
        lam = uu / denom
        delta = -(U[:nw].T @ lam)
        worst = np.inf
        for r in range(nw):
            worst = min(worst, b[r] - U[r] @ delta)
        if not np.isfinite(worst) or worst < -10 * tol:
            return _QP_NUMERIC, delta, Wm[:nw].copy(), Wo[:nw].copy(), lam
        if np.sqrt((delta ** 2).sum()) >= bound:
            return _QP_NONE, delta, Wm[:nw].copy(), Wo[:nw].copy(), lam
    return _QP_NONE, delta, Wm[:nw].copy(), Wo[:nw].copy(), lam


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _predict_one_compiled(Z, Z_sq, codes, zq, k, n_classes):  # pragma: no cover - compiled
    """The K-NN vote at one point (``zq``: its transformed coordinates), with the package's
    rules: nearer first, then the smaller index; a tied vote to the smaller code. One pass
    keeping the ``k`` best (distance, index) pairs in order."""
    n, r = Z.shape
    zz = 0.0
    for t in range(r):
        zz += zq[t] * zq[t]
    best_v = np.full(k, np.inf)
    best_i = np.full(k, -1, dtype=np.int64)
    for i in range(n):
        acc = 0.0
        for t in range(r):
            acc += Z[i, t] * zq[t]
        v = max(Z_sq[i] - 2.0 * acc + zz, 0.0)
        if v < best_v[k - 1]:  # strictly: at equal distance the earlier (smaller) index stays
            j = k - 1
            while j > 0 and best_v[j - 1] > v:
                best_v[j] = best_v[j - 1]
                best_i[j] = best_i[j - 1]
                j -= 1
            best_v[j] = v
            best_i[j] = i
    votes = np.zeros(n_classes, dtype=np.int64)
    for i in best_i:
        votes[codes[i]] += 1
    return np.argmax(votes)


def _flips(pt: _Point, delta: np.ndarray) -> bool:
    """Whether the K-NN prediction at ``x + delta`` differs from the true class (in the
    coordinates of ``knn.kneighbors``, like ``_Target.predict_codes``)."""
    target = pt.target
    z = pt.x + delta
    zq = z if target.geo.L is None else target.geo.L @ z
    return int(_predict_one_compiled(pt.Zu, pt.Zu_sq, target.geo.codes, zq, target.k, target.n_classes)) != pt.y


def _region_qp_fast(pt: _Point, members: np.ndarray, kind: tuple, excused: np.ndarray, *, tau: float, tol: float,
                    bound: float = np.inf, max_rounds: int = 200) -> tuple | None:
    """``_region_qp`` through the compiled path; the reference reruns it where that path reports
    dependent working rows."""
    geo = pt.target.geo
    riv, root = pt.rivals(kind)
    L = geo.L
    status, delta, W_m, W_o, lam = _region_qp_compiled(
        geo.MX, geo.MX_sq, np.zeros((1, geo.MX.shape[1])) if L is None else np.ascontiguousarray(L), L is not None,
        pt.d, np.ascontiguousarray(members, dtype=np.int64), riv, root,
        np.ascontiguousarray(excused, dtype=np.int64), pt.mx_norm, geo.mag, float(tau), float(tol), float(bound),
        max_rounds, _PER_ROUND, NORM_FLOOR, _LOCAL_RIVALS, NEAR_TIE, tie_tolerance(geo.MX.shape[1]))
    if status == _QP_DONE:
        return delta, (W_m, W_o, lam)
    if status == _QP_NONE:
        return None
    if status == _QP_EMPTY:
        dot = np.einsum("ij,ij->i", geo.MX[W_m], geo.MX[W_o])
        nrm = repair_pair_norms(np.sqrt(np.maximum(geo.MX_sq[W_m] + geo.MX_sq[W_o] - 2.0 * dot, 0.0)),
                                geo.MX[W_m], geo.MX[W_o], geo.mag[W_m], geo.mag[W_o])
        U = (geo.MX[W_o] - geo.MX[W_m]) / nrm[:, None]
        b = margin_from_distances(pt.d[W_m], pt.d[W_o], nrm) - tau
        if farkas_reach(U, b, lam) >= effective_reach(b, bound):
            return None
    return _region_qp(pt, members, kind, excused, tau=tau, tol=tol, bound=bound, max_rounds=max_rounds)


# ------------------------------------------------------------------ structural attack
#
# A template (members, rivals, excused) asks that every member be closer to x + delta than every
# rival outside ``excused``. Two kinds guarantee a vote for class t:
#   majority:  members = s points of class t, excused = K - s rivals (t gets >= s votes);
#   plurality: members = A (a < s points of t) + B (K - a points of other classes, few enough
#              per class that t wins the vote A + B), rivals = all points not of class t,
#              excused = B (then the neighbourhood is A, B's survivors and more points of t).
# With rivals = the true class only (majority), the template is cheaper but not a guarantee;
# its result is kept only if ``predict`` flips, like every other. Rivals are given by kind:
# (t, False) = every point not of class t, (y, True) = the points of the true class y.


def _top_positions(values: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` smallest ``values``, ascending (ties: smaller position)."""
    n = min(n, values.size)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(values, n - 1)[:n] if n < values.size else np.arange(values.size)
    return part[np.lexsort((part, values[part]))]


def _kth_largest(w: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th largest (1-based) along the last axis of ``w``; 0 where it has fewer entries."""
    if k > w.shape[-1]:
        return np.zeros(w.shape[:-1])
    return -np.partition(-w, k - 1, axis=-1)[..., k - 1]


@numba.njit(cache=True, nogil=True)
def _greedy_compiled(viol, size, n_keep, base):  # pragma: no cover - compiled
    """See ``_greedy``; ``viol`` of shape (B, P, S), ``base`` (B, S)."""
    n_b, n_p, n_s = viol.shape
    out = np.empty((n_b, size), dtype=np.int64)
    k = n_keep + 1
    lb = np.empty(n_p)
    top = np.empty(k)  # the k largest so far, descending
    for bi in range(n_b):
        cur = base[bi].copy()
        taken = np.zeros(n_p, dtype=np.bool_)
        for i in range(size):
            for r in range(n_p):
                if taken[r]:
                    lb[r] = np.inf
                elif k > n_s:
                    lb[r] = 0.0
                else:  # the k-th largest of max(cur, viol[bi, r])
                    top[:] = -np.inf
                    for c in range(n_s):
                        v = max(cur[c], viol[bi, r, c])
                        if v > top[k - 1]:
                            j = k - 1
                            while j > 0 and top[j - 1] < v:
                                top[j] = top[j - 1]
                                j -= 1
                            top[j] = v
                    lb[r] = top[k - 1]
            arg = 0
            for r in range(1, n_p):  # np.argmin: the first minimum
                if lb[r] < lb[arg]:
                    arg = r
            out[bi, i] = arg
            taken[arg] = True
            cur = np.maximum(cur, viol[bi, arg])
        out[bi] = np.sort(out[bi])
    return out


def _greedy(viol: np.ndarray, size: int, n_keep: int, base: np.ndarray | None = None) -> np.ndarray:
    """Grow a set of rows of ``viol`` (shape ``(..., P, S)``: one problem per leading index) one
    at a time, each time the row that keeps the bound (``n_keep + 1``-th largest column-wise
    maximum) smallest; ties go to the smaller row. Returns the sorted rows, shape ``(..., size)``."""
    lead, (n_p, n_s) = viol.shape[:-2], viol.shape[-2:]
    V = np.ascontiguousarray(viol, dtype=np.float64).reshape(-1, n_p, n_s)
    B = np.zeros((V.shape[0], n_s)) if base is None else \
        np.ascontiguousarray(np.broadcast_to(base, lead + (n_s,)), dtype=np.float64).reshape(-1, n_s)
    return _greedy_compiled(V, size, n_keep, B).reshape(lead + (size,))


def _member_sets(viol: np.ndarray, pool_d2: np.ndarray, s: int, n_keep: int, n_clusters: int,
                 greedy: np.ndarray | None = None) -> np.ndarray:
    """Candidate sets of ``s`` pool positions, one per row: nearest, easiest, greedy (given or
    computed), and clusters (a pool point and its ``s - 1`` nearest pool neighbours)."""
    h = _kth_largest(viol, n_keep + 1)  # each point alone, its worst n_keep rivals excused
    sets = [np.arange(s), np.sort(np.argsort(h, kind="stable")[:s]),
            _greedy(viol, s, n_keep) if greedy is None else greedy]
    n_c = min(n_clusters, viol.shape[0])
    clusters = np.sort(np.argsort(pool_d2[:n_c], axis=1, kind="stable")[:, :s], axis=1)
    return np.vstack([np.stack(sets), clusters])


def _class_rank(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """For each position, how many earlier positions hold the same class."""
    by = np.argsort(codes, kind="stable")
    first = np.r_[0, np.cumsum(np.bincount(codes, minlength=n_classes))]
    rank = np.empty(codes.size, dtype=np.int64)
    rank[by] = np.arange(codes.size) - first[codes[by]]
    return rank


def _capped_fill(codes: np.ndarray, rank: np.ndarray, t: int, a: int, need: int, n_classes: int) -> np.ndarray | None:
    """First ``need`` positions (in order) whose classes stay below the caps that let class ``t``
    with ``a`` votes win (ties go to the smaller code); None if they run out. ``rank``:
    ``_class_rank(codes)``."""
    caps = np.where(np.arange(n_classes) < t, a - 1, a)
    out = np.flatnonzero(rank < caps[codes])[:need]
    return out if out.size == need else None


def _candidates(pt: _Point, s: int, n_pool: int, n_screen: int, n_targets: int) -> list[tuple]:
    """Templates ``(lower bound, members, kind, excused)`` for a point of class ``y``, by
    increasing lower bound (the distance from ``x`` to the farthest single half-space among the
    nearest ``n_screen + K`` rivals). Only the ``n_targets`` classes with the smallest greedy
    bound get every kind of template. One GEMM gives the half-spaces of every class's pool
    against every screen; the greedy bounds of all classes run as one batch."""
    target, y = pt.target, pt.y
    geo, K, C = target.geo, target.k, target.n_classes
    n_keep, m = K - s, n_screen + K
    out: dict[tuple, tuple] = {}

    def add(lb, members, kind, excused, tag):
        key = (np.sort(members).tobytes(), np.sort(excused).tobytes(), tag)
        if key not in out or out[key][0] > lb:
            out[key] = (lb, members, kind, excused)

    # each class's points in distance order: positions of ``order`` grouped by class
    by_class = np.argsort(pt.codes_o.astype(np.int16 if C < 2**15 else np.int64), kind="stable")  # radix sort
    first = np.r_[0, np.cumsum(np.bincount(pt.codes_o, minlength=C))]
    classes = [t for t in range(C) if t != y and first[t + 1] > first[t]]
    if not classes:
        return []
    pools = [pt.order[by_class[first[t]:min(first[t + 1], first[t] + max(n_pool, s))]] for t in classes]
    screens = [pt.nearest((t, False), m) for t in classes]
    screen_y = pt.order[by_class[first[y]:min(first[y + 1], first[y] + m)]] if C > 2 else None
    cols, inv = np.unique(np.concatenate(screens + ([screen_y] if C > 2 else [])), return_inverse=True)
    H = pt.half_space(np.concatenate(pools), cols)
    row0 = np.r_[0, np.cumsum([p.size for p in pools])]
    col0 = np.r_[0, np.cumsum([sc.size for sc in screens])]
    modes = []  # per class: [(tag, kind, screen, viol)], the cheapest (last) bounds both
    for i, t in enumerate(classes):
        rows = H[row0[i]:row0[i + 1]]
        mode = [("all", (t, False), screens[i], rows[:, inv[col0[i]:col0[i + 1]]])]
        if C > 2:
            mode.append(("y", (y, True), screen_y, rows[:, inv[col0[-1]:]]))
        modes.append(mode)
    # greedy bound of every class at once (pools padded with never-chosen rows)
    P = max(p.size for p in pools)
    V = np.full((len(classes), P, modes[0][-1][3].shape[1]), np.inf)
    for i, mode in enumerate(modes):
        V[i, :pools[i].size] = mode[-1][3]  # one screen width: screen_y, or the only class's
    ok = np.array([p.size >= s for p in pools])
    greedy = _greedy(V, s, n_keep) if ok.any() and P >= s else np.zeros((len(classes), s), dtype=np.int64)
    cur = np.take_along_axis(V, greedy[:, :, None], axis=1).max(1)
    score = np.where(ok, _kth_largest(cur, n_keep + 1), 0.0)
    for i in np.argsort(score, kind="stable")[:n_targets]:
        t, pool = classes[i], pools[i]
        Zp = geo.Z[pool]
        pool_d2 = np.maximum((Zp * Zp).sum(1)[:, None] + (Zp * Zp).sum(1)[None, :] - 2.0 * (Zp @ Zp.T), 0.0)
        for tag, kind, screen, viol in modes[i]:
            if pool.size >= s:  # majority templates
                sets = _member_sets(viol, pool_d2, s, n_keep, n_clusters=8,
                                    greedy=greedy[i] if tag == modes[i][-1][0] else None)
                w = viol[sets].max(1)  # (n_sets, |screen|)
                n_ex = min(n_keep, w.shape[1])
                worst = np.argsort(-w, axis=1, kind="stable")[:, :n_keep]
                nearest = np.broadcast_to(np.arange(n_ex), (len(sets), n_ex))
                members = pool[sets]
                lbs = []
                for ex in (worst, nearest):
                    kept = w.copy()
                    np.put_along_axis(kept, ex, -np.inf, axis=1)
                    lbs.append(np.maximum(kept.max(1), 0.0) if w.shape[1] > n_ex else np.zeros(len(sets)))
                for j in range(len(sets)):
                    add(float(lbs[0][j]), members[j], kind, screen[worst[j]], tag)
                    add(float(lbs[1][j]), members[j], kind, screen[nearest[j]], tag)
            if tag != "all" or C < 3:
                continue
            sc_codes = geo.codes[screen]
            rank = _class_rank(sc_codes, C)
            for a in range(1, min(s, pool.size + 1)):  # plurality templates
                B = _capped_fill(sc_codes, rank, t, a, K - a, C)
                if B is None:
                    continue
                keep = np.ones(screen.size, dtype=bool)
                keep[B] = False
                base = pt.half_space(screen[B], screen[keep]).max(0)
                vk = viol[:, keep]
                for A in (np.arange(a), _greedy(vk, a, 0, base)):
                    lb = float(np.maximum(base, vk[A].max(0)).max()) if keep.any() else 0.0
                    add(lb, np.concatenate([pool[A], screen[B]]), kind, screen[B], "p")
    return sorted(out.values(), key=lambda c: c[0])


def _recentred(pt: _Point, z: np.ndarray, dz: np.ndarray, s: int) -> list[tuple]:
    """Templates read off an adversarial point ``z`` (``dz``: its squared distances): its own
    nearest sets. Each region holds ``z`` (up to ties), so its QP is never worse than ``||z - x||``.
    The sets come from an exact prefix of the (distance, index) order at ``z`` (every point at
    most as far as the ``16 K``-th), the whole order where a class runs short there."""
    target = pt.target
    geo, K, y = target.geo, target.k, pt.y
    codes = geo.codes
    m = min(dz.size, 16 * K)
    kth = np.partition(dz, m - 1)[m - 1]
    pre = np.flatnonzero(dz <= kth)
    pre = pre[np.lexsort((pre, dz[pre]))]

    def first(mask_fn, idx_full, n):
        got = pre[mask_fn(codes[pre])][:n]
        return got if got.size == n or pre.size == dz.size else idx_full[_top_positions(dz[idx_full], n)]

    nb = pre[:K]
    t = int(vote(codes[nb][None, :], target.n_classes)[0])
    A = first(lambda c: c == t, target.class_index[t], s)
    out = []
    if A.size == s:
        out.append((A, (t, False), first(lambda c: c != t, target.other_index[t], K - s)))
        if target.n_classes > 2:
            out.append((A, (y, True), first(lambda c: c == y, target.class_index[y], K - s)))
    if (codes[nb] == t).sum() < s:
        out.append((nb, (t, False), nb[codes[nb] != t]))
    return out


def _swaps(target: _Target, dz: np.ndarray, tmpl: tuple, duals: tuple, n_swap: int) -> list[tuple]:
    """One-point changes of template ``tmpl`` that relieve its most expensive constraints (largest
    multipliers ``duals`` at its optimum): excuse a binding rival in place of the excused rival
    farthest from the adversarial point (same class in a plurality template, so the vote is
    unchanged), or replace a binding chosen point by one of the ``n_swap`` points of its class
    nearest to the adversarial point (``dz``: squared distances from it). Most promising first."""
    members, kind, excused = tmpl
    W_m, W_o, lam = duals
    codes = target.geo.codes
    in_exc = np.isin(members, excused)
    plural = bool(in_exc.any())
    weight_o: dict[int, float] = {}
    weight_m: dict[int, float] = {}
    for m, o, v in zip(W_m.tolist(), W_o.tolist(), lam.tolist()):
        if v > 0:
            weight_o[o] = weight_o.get(o, 0.0) + v
            weight_m[m] = weight_m.get(m, 0.0) + v
    excuse_moves, member_moves = [], []
    exc_far = excused[np.argsort(-dz[excused], kind="stable")]
    binding = [o for o, _ in sorted(weight_o.items(), key=lambda kv: -kv[1])[:n_swap]]
    for rank in range(2):  # every binding rival against the farthest excused one, then the next
        for o in binding:
            same = exc_far[(codes[exc_far] == codes[o]) if plural else slice(None)]
            if rank < same.size:
                e = same[rank]
                ex = np.where(excused == e, o, excused)
                excuse_moves.append((np.where(members == e, o, members) if plural else members, kind, ex))
    chosen = set(members[~in_exc].tolist())
    T = target.class_index[int(codes[members[~in_exc][0]])]
    free_t = T[~np.isin(T, members)]
    alternatives = free_t[_top_positions(dz[free_t], n_swap)]
    for m, _ in sorted(weight_m.items(), key=lambda kv: -kv[1])[:2]:
        if m in chosen:
            member_moves += [(np.where(members == m, c, members), kind, excused) for c in alternatives]
    out = []  # alternate the two kinds, each most promising first
    for i in range(max(len(excuse_moves), len(member_moves))):
        out += [moves[i] for moves in (excuse_moves, member_moves) if i < len(moves)]
    return out


class StructuralAttack(MinimizationAttack):
    """Geometry-based attack on a K-NN classifier under a Mahalanobis metric (any K).

    With ``s = K//2 + 1``: choose ``s`` training points of one other class ``t`` and find the
    smallest perturbation that brings all of them closer than every rival point but ``K - s``,
    so that ``t`` holds a strict majority of the neighbours; with three or more classes, also
    ``a < s`` points of ``t`` plus a set of other-class neighbours small enough per class that
    ``t`` wins the vote (ties go to the smallest code). Each choice is a least-distance QP;
    candidates are visited in increasing order of a lower bound, the best is then improved by
    a local search. Only perturbations that flip ``predict`` are kept. For K = 1 this is
    :class:`ExactAttack` (with this search where the exact point cannot be pushed across).

    Parameters
    ----------
    n_pool : int, default=16
        Nearest points of each other class from which the chosen points are drawn.
    n_screen : int, default=32
        Nearest rivals used by the lower bounds that order (and prune) the candidate QPs.
    max_qp : int, default=24
        Most candidate QPs solved per point.
    n_targets : int, default=3
        Other classes explored with every kind of template (those with the smallest bounds).
    n_refine : int, default=4
        Rounds of local search from the best template: the sets read off its adversarial point,
        and ``n_swap_qp`` one-point swaps that relieve its most binding constraints (of
        ``n_swap`` binding rivals, or alternatives to a binding chosen point).
    n_swap, n_swap_qp : int, default=6 and 4
    n_starts : int, default=1
        Best templates (within 25% of the best) from which the local search starts; 3 finds
        slightly shorter perturbations (0.4% on average on pendigits) in 1.5x the time.
    line_search : bool, default=True
        Also try shorter multiples of the best perturbation (kept only if ``predict`` flips).
    n_jobs, chunk_size, random_state, progress : see :class:`KNNAttack`.

    Examples
    --------
    >>> import numpy as np
    >>> from robust_metric_learning.neighbors import MahalanobisKNN
    >>> X = np.array([[0.], [0.2], [0.4], [2.], [2.2], [2.4]]); y = [0, 0, 0, 1, 1, 1]
    >>> res = StructuralAttack()(MahalanobisKNN(3).fit(X, y), [[0.1]], [0])
    >>> bool(res.success[0])
    True
    """

    name = "structural"

    def __init__(self, *, n_pool: int = 16, n_screen: int = 32, max_qp: int = 24, n_targets: int = 3,
                 n_refine: int = 4, n_swap: int = 6, n_swap_qp: int = 4, n_starts: int = 1,
                 line_search: bool = True, n_jobs: int | None = None, chunk_size: int = 16,
                 random_state: int | None = None, progress: bool | None = None):
        super().__init__(n_jobs=n_jobs, chunk_size=chunk_size, random_state=random_state, progress=progress)
        self.n_pool = n_pool
        self.n_screen = n_screen
        self.max_qp = max_qp
        self.n_targets = n_targets
        self.n_refine = n_refine
        self.n_swap = n_swap
        self.n_swap_qp = n_swap_qp
        self.n_starts = n_starts
        self.line_search = line_search

    def _check_params(self, target: _Target) -> None:
        _check_int(self.n_pool, "n_pool")
        _check_int(self.n_screen, "n_screen")
        _check_int(self.max_qp, "max_qp")
        _check_int(self.n_targets, "n_targets")
        _check_int(self.n_refine, "n_refine", low=0)
        _check_int(self.n_swap, "n_swap")
        _check_int(self.n_swap_qp, "n_swap_qp", low=0)
        _check_int(self.n_starts, "n_starts")
        if not isinstance(self.line_search, (bool, np.bool_)):
            raise ValueError(f"line_search must be True or False, got {self.line_search!r}")

    def _run(self, target: _Target, X: np.ndarray, codes: np.ndarray) -> np.ndarray:
        if target.k != 1:
            return super()._run(target, X, codes)
        out = ExactAttack(n_jobs=self.n_jobs, progress=self.progress)._run(target, X, codes)
        # the exact point cannot be pushed across where the nearest other-class point ties (under M)
        # with a same-class one that wins by index: search the other negatives' regions there
        failed = np.flatnonzero((out == X).all(1))
        if failed.size:
            out[failed] = super()._run(target, X[failed], codes[failed])
        return out

    def _run_chunk(self, target, X, codes, rng, extra):
        D = target.geo.sq_dist(X)
        mx_norm = np.sqrt(target.geo.MX_sq)
        out = X.copy()
        # the work per point is many tiny products: threads only add wake-up latency (the
        # caller restores torch's thread count; use n_jobs to occupy more cores)
        torch.set_num_threads(1)
        with threadpool_limits(limits=1):
            for r in range(len(X)):
                delta = self._attack_point(_Point(target, X[r], D[r], int(codes[r]), mx_norm))
                if delta is not None:
                    out[r] = X[r] + delta
        return out

    @staticmethod
    def _solve(pt: _Point, members: np.ndarray, kind: tuple, excused: np.ndarray, best: float) -> tuple | None:
        """The template's QP: ``(delta, duals)`` if shorter than ``best`` and ``predict`` flips."""
        scale = float(pt.euclid(members).max())
        bound = min(best, _FAR * scale)
        for rel in _TIGHTEN:
            res = _region_qp_fast(pt, members, kind, excused, tau=rel * scale, tol=1e-10 * scale, bound=bound)
            if res is None or np.linalg.norm(res[0]) >= best:
                return None
            if _flips(pt, res[0]):
                return res
        return None

    def _promising(self, pt: _Point, moves: list, r: float) -> list:
        """The first ``n_swap_qp`` of ``moves`` whose lower bound (over each template's nearest
        rivals) is below ``r``."""
        out = []
        for members, kind, excused in moves[:3 * self.n_swap_qp]:
            if len(out) >= self.n_swap_qp:
                break
            near = pt.nearest(kind, self.n_screen, excused)
            if near.size == 0 or pt.max_half_space(members, near) < r * (1 - 1e-7):
                out.append((members, kind, excused))
        return out

    def _attack_point(self, pt: _Point) -> np.ndarray | None:
        target, x, y = pt.target, pt.x, pt.y
        s = target.k // 2 + 1
        seen: set = set()
        starts: list[tuple] = []  # verified solutions: (radius, delta, duals, template)

        def key(tmpl):
            return np.sort(tmpl[0]).tobytes(), np.sort(tmpl[2]).tobytes(), tmpl[1]

        def best_r():
            return starts[0][0] if starts else np.inf

        for n_solved, (lb, *tmpl) in enumerate(_candidates(pt, s, self.n_pool, self.n_screen, self.n_targets)):
            slack = _RESTART if self.n_starts > 1 else 1.0
            if n_solved >= self.max_qp or lb * (1 - 1e-9) >= slack * best_r():
                break
            seen.add(key(tmpl))
            bound = starts[self.n_starts - 1][0] if len(starts) >= self.n_starts else np.inf
            res = self._solve(pt, *tmpl, min(bound, slack * best_r()))
            if res is not None:
                starts.append((float(np.linalg.norm(res[0])), res[0], res[1], tuple(tmpl)))
                starts.sort(key=lambda v: v[0])
                del starts[self.n_starts:]
        # local search from the best few templates (those not far behind the best)
        best, best_delta = best_r(), None
        for r, delta, duals, tmpl in starts:
            if r > _RESTART * best:
                break
            for _ in range(self.n_refine):
                z = x + delta
                dz = pt.sq_dist_from(z)
                tried = _recentred(pt, z, dz, s)
                tried += self._promising(pt, _swaps(target, dz, tmpl, duals, self.n_swap), r)
                improved = False
                for t in tried:
                    if key(t) in seen:
                        continue
                    seen.add(key(t))
                    res = self._solve(pt, *t, r * (1 - 1e-7))
                    if res is not None:
                        r, (delta, duals), tmpl, improved = float(np.linalg.norm(res[0])), res, t, True
                if not improved:
                    break
            if best_delta is None or r < best:
                best, best_delta = r, delta
        if best_delta is not None and self.line_search:
            alphas = np.array([0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99])
            flipped = target.predict_codes(x + alphas[:, None] * best_delta) != y
            if flipped.any():
                best_delta = alphas[np.argmax(flipped)] * best_delta
        return best_delta
