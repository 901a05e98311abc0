"""One point's view of the training geometry and the structural attack's least-distance QP
over a template's region.

A template asks that every member be closer to ``x + delta`` than every rival outside the
excused ones: linear constraints on ``delta``, so the smallest perturbation is a least-distance
QP, solved by constraint generation. ``_region_qp`` is the reference (the checked solver of
:mod:`robust_metric_learning._solver` on each working set); ``_region_qp_fast`` runs the same
generation compiled (:mod:`._compiled`) and falls back to the reference where that reports a
numerical failure, accepting "empty" only with a verified Farkas certificate.
"""

from __future__ import annotations

import numpy as np

from ..._solver import effective_reach, farkas_reach, least_distance
from ...margin import (
    NEAR_TIE,
    NORM_FLOOR,
    margin_from_distances,
    repair_pair_norms,
    tie_tolerance,
)
from ._compiled import (
    _QP_DONE,
    _QP_EMPTY,
    _QP_NONE,
    _max_half_space_compiled,
    _predict_one_compiled,
    _region_qp_compiled,
)
from .base import _Target

#: Most violated pairs added to the working set per round of constraint generation.
_PER_ROUND = 10
#: Rounds of constraint generation first scan only this many nearest rivals.
_LOCAL_RIVALS = 64


# ------------------------------------------------------------------- one point's view


class _Point:
    """A test point against the training set: squared distances ``d``, the training points
    in (distance, index) order, and on demand the rival lists of templates, in the same order.

    A rival *kind* is ``(c, False)``: every training point not of class ``c``, or ``(c, True)``:
    the points of class ``c``.
    """

    def __init__(self, target: _Target, x: np.ndarray, d: np.ndarray, y: int, mx_norm: np.ndarray):
        self.target, self.x, self.d, self.y = target, x, d, y
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
        minus the margin, clipped at 0."""
        return np.clip(-margin_from_distances(self.d[P][:, None], self.d[Q][None, :],
                                              _pair_norms(self.target.geo, P, Q)), 0.0, None)


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


def _flips(pt: _Point, delta: np.ndarray) -> bool:
    """Whether the K-NN prediction at ``x + delta`` differs from the true class: the compiled
    one-point form of :meth:`~robust_metric_learning._geometry.KNNGeometry.predict_codes`, in
    its coordinates (the attack's result is checked by that predict itself)."""
    geo = pt.target.geo
    z = pt.x + delta
    zq = z if geo.L is None else geo.L @ z
    return int(_predict_one_compiled(geo.Zu, geo.Zu_sq, geo.codes, zq, pt.target.k, pt.target.n_classes)) != pt.y


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
