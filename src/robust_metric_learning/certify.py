"""Robustness radii of Mahalanobis K-NN classifiers (DESIGN §2-§3).

- :func:`exact_radius_1nn`: the exact minimal l2 perturbation that changes a 1-NN prediction.
  For each other-class training point ``x_j`` it is the projection of ``x`` onto the
  polyhedron where ``x_j`` beats every same-class point; negatives are screened by the
  margin bound and each projection is solved by constraint generation over a small
  dual non-negative QP (only a few constraints are active at the optimum).
- :func:`certified_radius_knn`: the K-NN lower bound
  ``s-th smallest over negatives of (s-th largest over positives of [margin]_+)``,
  ``s = (K+1)//2``, computed exactly with pruning and per-class shared pair norms.
- :func:`robust_error_curve`, :func:`plot_robust_error`.

A radius is 0 where the classifier is already wrong on the point.
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from joblib import Parallel, delayed, effective_n_jobs

from ._validation import (
    check_array_2d,
    check_eps,
    check_labels,
    check_metric_scale,
    check_n_features,
    check_odd_k,
    resolve_metric,
)
from ._solver import least_distance
from .margin import (
    DEFAULT_MEMORY_BUDGET,
    NEAR_TIE,
    margin_from_distances,
    pairwise_sq_distances,
    repair_pair_norms,
    row_blocks,
    smallest_k,
    vote,
)

__all__ = [
    "exact_radius_1nn",
    "certified_radius_knn",
    "robust_error_curve",
    "plot_robust_error",
]

#: Relative safety factor applied to screening bounds (guards pruning against rounding).
_SCREEN_SAFETY = 1.0 - 1e-9


# --------------------------------------------------------------------------- geometry


@dataclass
class _Geometry:
    """A training set under a metric, with everything the test points share."""

    X: np.ndarray  # (n, d) centred training points
    mean: np.ndarray  # (d,) the centre
    codes: np.ndarray  # (n,) class codes 0..C-1
    n_classes: int
    L: np.ndarray | None  # (r, d) components, None = identity
    Z: np.ndarray  # (n, r) = X L^T (centred)
    Z_sq: np.ndarray  # (n,) squared row norms of Z
    MX: np.ndarray  # (n, d) = X M (centred)
    MX_sq: np.ndarray  # (n,) squared row norms of MX
    mag: np.ndarray  # (n,) magnitudes that MX's rows are computed from: ||M|| (||X_i|| + ||mean||)
    memory_budget: int
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def build(cls, X: np.ndarray, codes: np.ndarray, n_classes: int, L: np.ndarray | None,
              memory_budget: int) -> "_Geometry":
        mean = X.mean(0)
        Xc = np.ascontiguousarray(X - mean)
        if L is None:
            Z = MX = Xc
        else:
            Z = Xc @ L.T
            MX = Z @ L
        sq = lambda A: np.einsum("ij,ij->i", A, A)  # noqa: E731
        m_norm = 1.0 if L is None else float((L * L).sum())  # ||L||_F^2 >= ||M||_2
        mag = m_norm * (np.sqrt(sq(Xc)) + float(np.linalg.norm(mean)))
        return cls(Xc, mean, codes, n_classes, L, Z, sq(Z), MX, sq(MX), mag, memory_budget)

    def sq_dist(self, Q: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distances from raw query rows ``Q`` to all training points."""
        Qc = Q - self.mean
        ZQ = Qc if self.L is None else Qc @ self.L.T
        return pairwise_sq_distances(_tensor(np.ascontiguousarray(ZQ)), _tensor(self.Z),
                                     B_sq=_tensor(self.Z_sq)).numpy()


def _tensor(a: np.ndarray) -> torch.Tensor:
    """``a`` as a tensor sharing its memory, only ever read: joblib hands its workers read-only
    memory maps, for which torch warns that writing would be undefined."""
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def _norms(A: np.ndarray, B: np.ndarray, A_sq: np.ndarray, B_sq: np.ndarray) -> np.ndarray:
    """``||a_i - b_j||`` for rows of ``A`` and ``B`` given their squared row norms."""
    D = pairwise_sq_distances(_tensor(A), _tensor(B), A_sq=_tensor(A_sq), B_sq=_tensor(B_sq))
    return D.sqrt_().numpy()


class _ClassSplit:
    """Positives (class ``c``) and negatives, with their pair norms ``||M (x_i - x_j)||``
    cached when the ``|P| x |N|`` matrix fits the memory budget, else computed on demand."""

    def __init__(self, geo: _Geometry, c: int):
        self.geo = geo
        self.P = np.flatnonzero(geo.codes == c)
        self.N = np.flatnonzero(geo.codes != c)
        self.MXP = np.ascontiguousarray(geo.MX[self.P])
        self.MXP_sq = geo.MX_sq[self.P]
        self.norms = None
        if self.P.size * geo.MX.shape[0] * 8 <= geo.memory_budget:
            self.norms = np.ascontiguousarray(self._rows_vs_all(np.arange(self.P.size))[:, self.N])

    def _rows_vs_all(self, rows: np.ndarray) -> np.ndarray:
        # against every training point, then keep the negatives' columns: no copy of MX[N]
        D = _norms(np.ascontiguousarray(self.MXP[rows]), self.geo.MX, self.MXP_sq[rows], self.geo.MX_sq)
        return _exact_ties(D, self.P[rows], np.arange(self.geo.MX.shape[0]), self.geo)

    def norm_rows(self, rows: np.ndarray) -> np.ndarray:
        """Pair norms of positives ``P[rows]`` against every negative (0: tied under ``M``)."""
        if self.norms is not None:
            return self.norms[rows]
        return self._rows_vs_all(rows)[:, self.N]

    def norm_cols(self, cols: np.ndarray) -> np.ndarray:
        """Pair norms of every positive against negatives ``N[cols]`` (0: tied under ``M``)."""
        if self.norms is not None:
            return self.norms[:, cols]
        J = self.N[cols]
        D = _norms(self.MXP, np.ascontiguousarray(self.geo.MX[J]), self.MXP_sq, self.geo.MX_sq[J])
        return _exact_ties(D, self.P, J, self.geo)


def _exact_ties(D: np.ndarray, rows: np.ndarray, cols: np.ndarray, geo: _Geometry) -> np.ndarray:
    """``D`` (pair norms ``||M (x_i - x_j)||`` from the expanded square) repaired by
    :func:`~robust_metric_learning.margin.repair_pair_norms`: 0 where the pair is tied under ``M``
    to rounding (a duplicated point, a difference in the null space of ``M``), so that
    ``predict``'s index rule decides between them."""
    mag = geo.mag
    ri, ci = np.nonzero(D <= NEAR_TIE * (mag[rows][:, None] + mag[cols][None, :]))
    if ri.size:
        D = D.copy() if not D.flags.writeable else D
        r, c = rows[ri], cols[ci]
        D[ri, ci] = repair_pair_norms(D[ri, ci], geo.MX[r], geo.MX[c], mag[r], mag[c])
    return D


def _margins(dP: np.ndarray, dN: np.ndarray, norms: np.ndarray, P: np.ndarray, N: np.ndarray) -> np.ndarray:
    """``margin(x; x_i, x_j)`` of positives ``P`` (rows) against negatives ``N`` (columns), with
    tied pairs (norm 0) set by the index rule: ``+inf`` where the positive comes first (the
    negative can never be nearer), 0 where the negative does (it always is)."""
    m = margin_from_distances(dP[:, None], dN[None, :], norms)
    tied = norms == 0
    if tied.any():
        m = np.where(tied, np.where(P[:, None] < N[None, :], np.inf, 0.0), m)
    return m


_split_cache: dict[tuple[str, int], _ClassSplit] = {}
_split_lock = threading.Lock()


def _get_split(geo: _Geometry, c: int) -> _ClassSplit:
    """Per-process cache of the last class split, so chunks of one class share its work."""
    key = (geo.token, c)
    with _split_lock:
        split = _split_cache.get(key)
    if split is None:
        split = _ClassSplit(geo, c)
        with _split_lock:
            _split_cache.clear()
            _split_cache[key] = split
    return split


# ------------------------------------------------------------------- exact 1-NN radius


def _nonneg_qp(G: np.ndarray, b: np.ndarray, lam: np.ndarray, tol: float) -> tuple[np.ndarray, bool]:
    """Solve ``min 1/2 l^T G l + b^T l`` over ``l >= 0`` (active set, Lawson-Hanson style).

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


def _project_negative(split: _ClassSplit, j: int, dP: np.ndarray, d_j: float, unit_norm: np.ndarray,
                      scale: float, tol: float, start: np.ndarray) -> np.ndarray:
    """Minimal ``delta`` with ``x + delta`` at least as close to negative ``j`` as to every positive.

    Constraints ``a_i^T delta <= b_i`` with ``a_i = 2 M (x_i - x_j) / ||.||`` (unit rows) and
    ``b_i = (d_M(x, x_i) - d_M(x, x_j)) / ||2 M (x_i - x_j)||`` (= minus the margin).
    Constraint generation: solve on a working set, add the most violated, repeat.
    """
    geo = split.geo
    mx_j = geo.MX[j]
    anorm = 2.0 * unit_norm
    safe = np.where(anorm > 0, anorm, 1.0)
    bhat = (dP - d_j) / safe
    zero = anorm <= 0  # tied under M with a later positive: the index rule gives x_j the tie
    bhat[zero] = np.inf
    # start from the few constraints with the largest margin (most binding in isolation)
    W = list(np.argsort(bhat)[: min(3, bhat.size)])
    lam = np.zeros(len(W))
    thresh = tol * scale
    for _ in range(200):
        Wi = np.asarray(W)
        AW = 2.0 * (split.MXP[Wi] - mx_j) / safe[Wi, None]
        G = AW @ AW.T
        lam, ok = _nonneg_qp(G, bhat[Wi], lam, thresh)
        delta = -(AW.T @ lam)
        slack = bhat - 2.0 * (split.MXP @ delta - mx_j @ delta) / safe
        slack[zero] = np.inf
        if not ok or slack[Wi].min() < -thresh:
            # x_j itself (delta = x_j - x) meets every constraint: the region is never empty
            got = least_distance(AW, bhat[Wi], tol=thresh, start=start)
            if got is None:  # x_j meets every constraint, so this is a numerical failure
                raise RuntimeError(f"exact 1-NN projection onto negative {j}: the least-distance solver "
                                   f"found no point although x_j itself is one ({Wi.size} constraints)")
            delta, lam = got
            slack = bhat - 2.0 * (split.MXP @ delta - mx_j @ delta) / safe
            slack[zero] = np.inf
        slack[Wi] = np.inf
        worst = np.argsort(slack)[:5]
        worst = worst[slack[worst] < -thresh]
        if worst.size == 0:
            return delta
        W.extend(int(w) for w in worst)
        lam = np.concatenate([lam, np.zeros(worst.size)])
    raise RuntimeError("exact 1-NN projection did not converge in 200 constraint-generation rounds")


def _exact_point(split: _ClassSplit, d: np.ndarray, x: np.ndarray, n_screen: int, tol: float,
                 batch: int = 16) -> tuple[float, np.ndarray]:
    """Exact 1-NN radius of one correctly classified point, and its minimal perturbation."""
    P, N, geo = split.P, split.N, split.geo
    dP, dN = d[P], d[N]
    m = min(n_screen, P.size)
    S = np.argpartition(dP, m - 1)[:m]
    lb = _margins(dP[S], dN, split.norm_rows(S), P[S], N).clip(min=0.0).max(0)
    order = np.argsort(lb, kind="stable")
    best, best_delta = np.inf, None
    xc = x - geo.mean
    for start in range(0, N.size, batch):
        cols = order[start:start + batch]
        if lb[cols[0]] * _SCREEN_SAFETY >= best:
            break
        norms = split.norm_cols(cols)
        full = _margins(dP, dN[cols], norms, P, N[cols]).max(0)
        for t, col in enumerate(cols):
            if lb[col] * _SCREEN_SAFETY >= best:
                break
            if full[t] * _SCREEN_SAFETY >= best:
                continue  # (inf: tied with an earlier positive, x_j can never be the nearest)
            j = N[col]
            scale = float(np.linalg.norm(geo.X[j] - xc))
            delta = _project_negative(split, j, dP, dN[col], norms[:, t], scale, tol, geo.X[j] - xc)
            r = float(np.linalg.norm(delta))
            if r < best:
                best, best_delta = r, delta
    return best, best_delta


# ------------------------------------------------------------------------ K-NN bound


def _bound_point(split: _ClassSplit, d: np.ndarray, s: int, n_screen: int, batch: int = 64) -> float:
    """``s``-th smallest over negatives of the ``s``-th largest positive margin (clamped at 0)."""
    P, N = split.P, split.N
    dP, dN = d[P], d[N]
    m = min(P.size, max(n_screen, 4 * s))
    S = np.argpartition(dP, m - 1)[:m]
    mS = _margins(dP[S], dN, split.norm_rows(S), P[S], N).clip(min=0.0)
    # s-th largest over a subset of positives <= s-th largest over all: a lower bound per negative
    lb = -np.partition(-mS, s - 1, axis=0)[s - 1]
    order = np.argsort(lb, kind="stable")
    found = np.empty(0)
    for start in range(0, N.size, batch):
        cols = order[start:start + batch]
        if found.size >= s and np.partition(found, s - 1)[s - 1] <= lb[cols[0]]:
            break
        mP = _margins(dP, dN[cols], split.norm_cols(cols), P, N[cols]).clip(min=0.0)
        found = np.concatenate([found, -np.partition(-mP, s - 1, axis=0)[s - 1]])
    return float(np.partition(found, s - 1)[s - 1])


# ------------------------------------------------------------------------- driver


def _run_chunk(geo: _Geometry, c: int, Xq: np.ndarray, task: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """Radii (and perturbations) of test points ``Xq``, all predicted correctly as class ``c``."""
    torch.set_num_threads(max(1, task["threads"]))
    split = _get_split(geo, c)
    D = geo.sq_dist(Xq)
    radii = np.empty(len(Xq))
    deltas = np.zeros_like(Xq) if task["return_adversarial"] else None
    for r in range(len(Xq)):
        if task["method"] == "exact":
            radii[r], delta = _exact_point(split, D[r], Xq[r], task["n_screen"], task["tol"])
            if deltas is not None and delta is not None:
                deltas[r] = delta
        else:
            radii[r] = _bound_point(split, D[r], task["s"], task["n_screen"])
    return radii, deltas


def _prepare(X_train, y_train, X, y, metric, n_neighbors, memory_budget):
    X_train = check_array_2d(X_train, name="X_train")
    y_train = check_labels(y_train, n_samples=X_train.shape[0], name="y_train")
    X = check_array_2d(X, name="X")
    check_n_features(X, X_train.shape[1], name="X", what="X_train has")
    y = check_labels(y, n_samples=X.shape[0], name="y")
    if (y.dtype.kind in "USO") != (y_train.dtype.kind in "USO"):
        raise ValueError(f"y has labels of dtype {y.dtype}, y_train has {y_train.dtype}; they must be comparable")
    classes, codes, counts = np.unique(y_train, return_inverse=True, return_counts=True)
    if classes.size < 2:
        raise ValueError(f"y_train has one class only ({classes[0].tolist()!r}); certification needs at least 2 classes")
    if n_neighbors > counts.min():
        small = classes[counts.argmin()].tolist()
        raise ValueError(
            f"n_neighbors={n_neighbors} is larger than the smallest class of y_train "
            f"(label {small!r} has {counts.min()} points)"
        )
    if not isinstance(memory_budget, (int, np.integer)) or memory_budget < 1:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    L = resolve_metric(metric, X_train.shape[1])
    check_metric_scale(X_train, L, name="X_train")
    check_metric_scale(X, L, name="X")
    geo = _Geometry.build(X_train, codes, classes.size, L, int(memory_budget))
    pos = np.searchsorted(classes, y)
    y_codes = np.where((pos < classes.size) & (classes[np.minimum(pos, classes.size - 1)] == y), pos, -1)
    return geo, X, y_codes


def _magnitude(geo: _Geometry, Q: np.ndarray) -> np.ndarray:
    """Per query row, the magnitude its transformed distances are computed from (for the tie
    tolerance of :func:`~robust_metric_learning.margin.smallest_k`)."""
    l_norm = 1.0 if geo.L is None else float(np.linalg.norm(geo.L))
    x_max = float(np.sqrt(np.einsum("ij,ij->i", geo.X, geo.X)).max()) + float(np.linalg.norm(geo.mean))
    return l_norm * (x_max + np.linalg.norm(Q, axis=1))


def _predict_codes(geo: _Geometry, X: np.ndarray, k: int) -> np.ndarray:
    out = np.empty(len(X), dtype=np.int64)
    for sl in row_blocks(len(X), geo.X.shape[0], memory_budget=geo.memory_budget):
        D = geo.sq_dist(X[sl])
        ZQ = (X[sl] - geo.mean) if geo.L is None else (X[sl] - geo.mean) @ geo.L.T
        mag = _magnitude(geo, X[sl])
        idx = np.stack([smallest_k(row, k, Z=geo.Z, q=zq, mag=m) for row, zq, m in zip(D, ZQ, mag)])
        out[sl] = vote(geo.codes[idx], geo.n_classes)
    return out


def _progress(progress: bool | None, total: int, desc: str):
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if progress is None else not progress
    return tqdm(total=total, desc=desc, unit="pt", disable=disable, leave=False)


def _certify(geo: _Geometry, X: np.ndarray, y_codes: np.ndarray, *, k: int, method: str, n_jobs,
             progress, return_adversarial: bool, n_screen: int, tol: float, chunk_size: int):
    pred = _predict_codes(geo, X, k)
    radii = np.zeros(len(X))
    deltas = np.zeros_like(X) if return_adversarial else None
    correct = pred == y_codes
    workers = effective_n_jobs(n_jobs)
    tasks = []
    for c in range(geo.n_classes):
        idx = np.flatnonzero(correct & (pred == c))
        for start in range(0, idx.size, chunk_size):
            tasks.append((c, idx[start:start + chunk_size]))
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    task = {"method": method, "s": (k + 1) // 2, "n_screen": n_screen, "tol": tol,
            "return_adversarial": return_adversarial, "threads": threads}
    jobs = (delayed(_run_chunk)(geo, c, X[idx], task) for c, idx in tasks)
    prev_threads = torch.get_num_threads()
    try:
        with _progress(progress, int(correct.sum()), f"certify ({method}, K={k})") as bar:
            results = Parallel(n_jobs=n_jobs, return_as="generator")(jobs)
            for (_, idx), (r, dl) in zip(tasks, results):
                radii[idx] = r
                if deltas is not None:
                    deltas[idx] = dl
                bar.update(idx.size)
    finally:
        torch.set_num_threads(prev_threads)
        with _split_lock:
            _split_cache.clear()  # free the last class's cached pair norms
    return radii, deltas


def exact_radius_1nn(X_train, y_train, X, y, *, metric: Any = "euclidean", return_adversarial: bool = False,
                     n_jobs: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                     progress: bool | None = None, tol: float = 1e-10, n_screen: int = 16,
                     chunk_size: int = 64):
    """Exact minimal l2 perturbation that changes the 1-NN prediction under ``M``.

    Parameters
    ----------
    X_train, y_train : array-like of shape (n, d) and (n,)
        The 1-NN classifier's training set (any labels).
    X, y : array-like of shape (m, d) and (m,)
        Points to certify and their true labels.
    metric : "euclidean", array of shape (d, d) (M), array of shape (r, d) (L), or fitted learner
    return_adversarial : bool, default=False
        Also return ``X + delta``: points on the decision boundary (for a radius of 0, the
        point itself).
    n_jobs : int, default=None
        Parallel workers through joblib (any backend, Dask included).
    memory_budget : int, default=512 MiB
        Bytes allowed for one cached block (pair norms of one class, a distance block).
    progress : bool, default=None
        Show a progress bar; None shows it on a terminal only.
    tol : float, default=1e-10
        Constraint violation allowed at the optimum, relative to ``||x - x_j||``; the radius
        returned is the exact optimum of the working-set QP, so it never exceeds the true radius
        by more than this relative amount.
    n_screen : int, default=16
        Nearest positives used by the cheap screening bound.
    chunk_size : int, default=64
        Test points per parallel task.

    Returns
    -------
    radii : ndarray of shape (m,)
        l2 norm of the minimal perturbation (0 where 1-NN is already wrong; inf where no
        perturbation changes the prediction: every other-class point is tied under ``M`` with an
        earlier same-class point, as with ``M = 0``).
    X_adv : ndarray of shape (m, d), only when ``return_adversarial``.

    Examples
    --------
    >>> import numpy as np
    >>> exact_radius_1nn([[0.], [2.]], [0, 1], [[0.5]], [0])
    array([0.5])
    """
    geo, X, y_codes = _prepare(X_train, y_train, X, y, metric, 1, memory_budget)
    radii, deltas = _certify(geo, X, y_codes, k=1, method="exact", n_jobs=n_jobs, progress=progress,
                             return_adversarial=return_adversarial, n_screen=n_screen, tol=tol,
                             chunk_size=chunk_size)
    if return_adversarial:
        return radii, X + deltas
    return radii


def certified_radius_knn(X_train, y_train, X, y, *, n_neighbors: int = 1, metric: Any = "euclidean",
                         n_jobs: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                         progress: bool | None = None, n_screen: int = 32, chunk_size: int = 64) -> np.ndarray:
    """Certified lower bound on the l2 robustness radius of a K-NN classifier (odd K).

    With ``s = (K+1)//2``, positives = training points of the predicted label and negatives =
    all others: ``radius >= s-th smallest_j ( s-th largest_i [margin(x; x_i, x_j)]_+ )``.
    Any perturbation of l2 norm below the radius keeps a strict majority of the K nearest
    neighbours in the predicted class. Parameters as in :func:`exact_radius_1nn`.

    Returns
    -------
    radii : ndarray of shape (m,), 0 where the classifier is already wrong.

    Examples
    --------
    >>> certified_radius_knn([[0.], [1.], [3.], [4.]], [0, 0, 1, 1], [[0.5]], [0], n_neighbors=1)
    array([1.5])
    """
    k = check_odd_k(n_neighbors)
    geo, X, y_codes = _prepare(X_train, y_train, X, y, metric, k, memory_budget)
    radii, _ = _certify(geo, X, y_codes, k=k, method="bound", n_jobs=n_jobs, progress=progress,
                        return_adversarial=False, n_screen=n_screen, tol=0.0, chunk_size=chunk_size)
    return radii


# ----------------------------------------------------------------- robust error curves


def robust_error_curve(radii, eps) -> np.ndarray:
    """Robust error at each ``eps``: the fraction of points with ``radius <= eps``.

    At ``eps = 0`` this is the clean error (radius 0 = misclassified).

    Examples
    --------
    >>> robust_error_curve([0.0, 0.5, 2.0], [0.0, 1.0])
    array([0.33333333, 0.66666667])
    """
    r = np.asarray(radii, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"radii must be a non-empty 1-D array, got shape {r.shape}")
    if np.isnan(r).any() or (r < 0).any():
        raise ValueError("radii must be >= 0 (inf allowed) and not NaN")
    e = check_eps(eps)
    return (r[None, :] <= e[:, None]).mean(1)


def plot_robust_error(curves: Mapping[str, Sequence[float]], eps, *, ax=None, path=None,
                      title: str | None = None, xlabel: str = "ε (ℓ2)"):
    """Plot robust error against ε, one line per model.

    Parameters
    ----------
    curves : mapping name -> robust errors (one per ε), e.g. from :func:`robust_error_curve`
    eps : sequence of float
    ax : matplotlib Axes, optional
    path : str or Path, optional
        Write a PNG there (atomically).
    """
    from matplotlib.figure import Figure

    e = check_eps(eps)
    fig = None
    if ax is None:
        fig = Figure(figsize=(5, 3.5), dpi=120)
        ax = fig.subplots()
    for name, errs in curves.items():
        errs = np.asarray(errs, dtype=float)
        if errs.shape != e.shape:
            raise ValueError(f"curve {name!r} has {errs.size} values, eps has {e.size}")
        ax.plot(e, errs, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("robust error")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    if path is not None:
        import io

        from ._io import atomic_write_bytes

        buf = io.BytesIO()
        (fig or ax.figure).savefig(buf, format="png", bbox_inches="tight")
        atomic_write_bytes(path, buf.getvalue())
    return ax
