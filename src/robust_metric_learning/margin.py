"""Mahalanobis distances and the margin formula.

``d_M(a, b) = (a - b)^T M (a - b)`` with ``M = L^T L``. For a point ``z``, a same-class
point ``x+`` and an other-class point ``x-``, the l2 distance from ``z`` to the half-space of
points at least as close to ``x-`` as to ``x+`` is

    margin(z; x+, x-) = (d_M(z, x-) - d_M(z, x+)) / (2 ||M (x+ - x-)||_2)

(negative when ``z`` is already closer to ``x-``). This module is the only place that
formula is written; certification, ARML training and the perturbation loss all call it.
"""

from __future__ import annotations

from typing import Iterator

import numba
import numpy as np
import torch

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "NORM_FLOOR",
    "NEAR_TIE",
    "tie_tolerance",
    "tie_window",
    "repair_pair_norms",
    "margin",
    "margin_from_distances",
    "pairwise_sq_distances",
    "exact_near_sq_distances",
    "pairwise_mahalanobis",
    "row_blocks",
    "smallest_k",
    "class_neighbors",
    "components_from_metric",
    "vote",
]

#: Default memory budget, in bytes, for one block of a pairwise computation.
DEFAULT_MEMORY_BUDGET: int = 512 * 2**20
#: Floor on ``||M (x+ - x-)||`` so coincident pairs give a zero margin, not NaN.
NORM_FLOOR: float = 1e-12
#: A pair norm ``||M (x_i - x_j)||`` below ``NEAR_TIE`` times ``||M x_i|| + ||M x_j||`` is
#: recomputed by subtraction (the expanded square cancels); below :func:`tie_tolerance` times that
#: sum the pair is tied under ``M`` to rounding (equal distances from every point: the index rule
#: decides).
NEAR_TIE: float = 1e-6


def tie_tolerance(dim: int) -> float:
    """Relative size of the rounding of a product with a ``dim``-column metric: differences below
    it (relative to the magnitudes involved) are ties, whatever the BLAS kernel. ``8 (dim + 8) eps``."""
    return 8.0 * (int(dim) + 8) * float(np.finfo(np.float64).eps)


def repair_pair_norms(norms, A, B, a_norm, b_norm):
    """``norms[t] = ||A[t] - B[t]||`` from the expanded square (which cancels for near pairs), with
    the near entries recomputed by subtraction and the tied ones (see :func:`tie_tolerance`) set to
    exactly 0. ``a_norm``, ``b_norm``: the magnitudes the rows were computed from (their norms, or
    for ``A = X M`` the norms of ``X`` times that of ``M``). Works on numpy arrays and torch
    tensors; ``norms`` is updated in place and returned."""
    near = norms <= NEAR_TIE * (a_norm + b_norm)
    if bool(near.any()):
        diff = ((A[near] - B[near]) ** 2).sum(-1) ** 0.5
        tol = tie_tolerance(A.shape[-1]) * (a_norm[near] + b_norm[near])
        norms[near] = diff * (diff > tol)
    return norms


def margin_from_distances(d_pos, d_neg, pair_norm, *, floor: float = NORM_FLOOR):
    """The margin from its parts; works on numpy arrays and torch tensors (broadcasting).

    Parameters
    ----------
    d_pos, d_neg : array or tensor
        Squared Mahalanobis distances ``d_M(z, x+)`` and ``d_M(z, x-)``.
    pair_norm : array or tensor
        ``||M (x+ - x-)||_2``.
    floor : float, default=NORM_FLOOR
        Smallest denominator used.
    """
    return (d_neg - d_pos) / (2 * pair_norm.clip(min=floor))


def margin(z: torch.Tensor, x_pos: torch.Tensor, x_neg: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Margin of each triplet ``(z[t], x_pos[t], x_neg[t])`` under ``M``; differentiable in all.

    Parameters
    ----------
    z, x_pos, x_neg : tensor of shape (n, d)
    M : tensor of shape (d, d), symmetric PSD

    Returns
    -------
    tensor of shape (n,), the l2 distance (signed) from ``z`` to the decision half-space.

    Examples
    --------
    >>> import torch
    >>> margin(torch.zeros(1, 2), torch.tensor([[1., 0.]]), torch.tensor([[-3., 0.]]), torch.eye(2))
    tensor([1.])
    """
    # d_M(z, x-) - d_M(z, x+) = (x+ - x-)^T M (2 z - x+ - x-): one product with M, not three
    Mu = (x_pos - x_neg) @ M
    gap = (Mu * (2 * z - x_pos - x_neg)).sum(-1)
    return margin_from_distances(0.0, gap, torch.linalg.vector_norm(Mu, dim=-1))


def row_blocks(n_rows: int, n_cols: int, *, memory_budget: int = DEFAULT_MEMORY_BUDGET,
               itemsize: int = 8) -> Iterator[slice]:
    """Slices of rows such that a ``(block, n_cols)`` array fits ``memory_budget`` bytes."""
    per_row = max(1, n_cols * itemsize)
    step = max(1, int(memory_budget // per_row))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def components_from_metric(M: np.ndarray, *, drop_null: bool = False) -> np.ndarray:
    """A factor ``L`` with ``L.T @ L = M`` for a symmetric ``M``, by eigendecomposition.

    Negative (rounding) eigenvalues count as 0. Rows are ordered by decreasing eigenvalue,
    each signed so that its largest-magnitude entry is positive. With ``drop_null`` only the
    rows of eigenvalues above ``1e-10`` times the largest are kept (at least one).
    """
    w, V = np.linalg.eigh((M + M.T) / 2)
    w, V = w[::-1], V[:, ::-1]
    if drop_null:
        keep = w > 1e-10 * max(float(np.abs(w).max()) if w.size else 0.0, 1e-300)
        keep[0] = True
        w, V = w[keep], V[:, keep]
    L = np.sqrt(np.clip(w, 0.0, None))[:, None] * V.T
    top = np.abs(L).argmax(axis=1)
    return np.ascontiguousarray(L * np.where(L[np.arange(L.shape[0]), top] < 0, -1.0, 1.0)[:, None])


def pairwise_sq_distances(A: torch.Tensor, B: torch.Tensor, *, A_sq: torch.Tensor | None = None,
                          B_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances between the rows of ``A`` and ``B`` (clamped at 0)."""
    if A_sq is None:
        A_sq = (A * A).sum(1)
    if B_sq is None:
        B_sq = (B * B).sum(1)
    D = torch.addmm(B_sq.unsqueeze(0), A, B.T, alpha=-2.0)
    D += A_sq.unsqueeze(1)
    return D.clamp_(min=0.0)


def exact_near_sq_distances(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of ``A`` and ``B``, differentiable, with the
    near pairs exact.

    The expanded square ``||a||^2 + ||b||^2 - 2 a.b`` has an absolute error of a few ulps of
    ``||a||^2 + ||b||^2``: a row's distance to itself comes out as about 1e-8 (float64) instead
    of 0, and the order of two near items follows the BLAS kernel. Pairs whose square falls below
    ``sqrt(eps)`` of that scale are recomputed by subtraction (few in practice: duplicates,
    a point and its small perturbation), so every distance has a relative error of at most about
    ``sqrt(eps)`` and coincident rows are at exactly 0.
    """
    A_sq, B_sq = (A * A).sum(1), (B * B).sum(1)
    D = (torch.addmm(B_sq[None, :], A, B.T, alpha=-2.0) + A_sq[:, None]).clamp_min(0.0)
    if D.numel() == 0:
        return D
    root = float(torch.finfo(D.dtype).eps) ** 0.5
    # a cheap superset (one bound for all pairs), then each candidate against its own scale
    r, c = torch.nonzero(D <= root * float((A_sq.max() + B_sq.max()).detach()), as_tuple=True)
    if len(r):
        own = (D[r, c] <= root * (A_sq[r] + B_sq[c])).detach()
        r, c = r[own], c[own]
        if len(r):
            D.index_put_((r, c), ((A[r] - B[c]) ** 2).sum(1))
    return D


def _transform(X: torch.Tensor, components: torch.Tensor | None) -> torch.Tensor:
    return X if components is None else X @ components.T


def pairwise_mahalanobis(A, B, components=None, *, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                         dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Squared Mahalanobis distances ``d_M(a_i, b_j)`` with ``M = L^T L`` (``L = components``).

    Computed block by block so no intermediate larger than ``memory_budget`` bytes is formed
    besides the ``(n_a, n_b)`` result itself. ``components=None`` means the identity.
    """
    A = torch.as_tensor(A, dtype=dtype)
    B = torch.as_tensor(B, dtype=dtype)
    L = None if components is None else torch.as_tensor(components, dtype=dtype)
    ZB = _transform(B, L)
    ZB_sq = (ZB * ZB).sum(1)
    out = torch.empty((A.shape[0], B.shape[0]), dtype=dtype)
    width = B.shape[0] + (L.shape[0] if L is not None else A.shape[1])
    for sl in row_blocks(A.shape[0], width, memory_budget=memory_budget):
        out[sl] = pairwise_sq_distances(_transform(A[sl], L), ZB, B_sq=ZB_sq)
    return out


def tie_window(qq: float, d_max: float, tol: float) -> float:
    """How far above the k-th expanded distance a neighbour may lie and still tie with it after
    the exact recomputation: the expanded square's rounding, or a chain of ties of size ``tol``."""
    return max(1e-12 * (qq + d_max + 1.0), 16.0 * tol)


def smallest_k(d: np.ndarray, k: int, *, kth: float | None = None, Z: np.ndarray | None = None,
               q: np.ndarray | None = None, mag: float | None = None) -> np.ndarray:
    """Indices of the ``k`` smallest entries of ``d``, ordered by (value, index).

    This is the package's one tie rule for neighbours: at equal distance the training
    point with the smaller index comes first. With the transformed training points ``Z`` and
    query ``q`` (``d`` their squared distances from the expanded square, whose rounding depends
    on the BLAS kernel and on each row's position), every entry within rounding of the k-th is
    recomputed by subtraction, and distances that differ by less than the rounding of the
    transformed points (:func:`tie_tolerance` times ``mag**2``; ``mag``: the magnitude they were
    computed from, ``||L|| (max_i ||x_i|| + ||x||)``, default the norms of ``Z`` and ``q``) are
    tied: equal points (a duplicate, a point in another's ``M`` null space) are ordered by the
    index rule, not by rounding.
    """
    if kth is None:
        kth = np.partition(d, k - 1)[k - 1]
    if Z is not None:
        qq = float(q @ q)
        if mag is None:
            mag = np.sqrt(qq) + np.sqrt(np.einsum("ij,ij->i", Z, Z).max())
        # distances within the rounding of the transformed points are ties: grouped, index first
        tol = tie_tolerance(Z.shape[1]) * mag * mag
        cand = np.flatnonzero(d <= kth + tie_window(qq, float(d.max(initial=0.0)), tol))
        diff = Z[cand] - q
        exact = np.einsum("ij,ij->i", diff, diff)
        order = np.lexsort((cand, exact))
        e = exact[order]
        group = np.concatenate([[0], np.cumsum(np.diff(e) > tol)])
        return cand[order][np.lexsort((cand[order], group))[:k]]
    cand = np.flatnonzero(d <= kth)
    return cand[np.lexsort((cand, d[cand]))[:k]]


def vote(neighbor_codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Majority vote over the last axis of class codes; ties go to the smallest code."""
    codes = np.atleast_2d(neighbor_codes)
    counts = np.zeros((codes.shape[0], n_classes), dtype=np.int64)
    np.add.at(counts, (np.arange(codes.shape[0])[:, None], codes), 1)
    return counts.argmax(1)


def class_neighbors(Z: torch.Tensor, codes: torch.Tensor, k_same: int, k_other: int, *,
                    memory_budget: int = DEFAULT_MEMORY_BUDGET) -> tuple[torch.Tensor, torch.Tensor]:
    """For every row of ``Z`` (already transformed: ``Z = X L^T``), its ``k_same`` nearest
    same-class rows (itself excluded) and ``k_other`` nearest other-class rows.

    Rows are grouped by class and every pair of classes is visited once: one Gram block
    ``Z_a Z_b^T`` (in cache-sized tiles, a GEMM in ``Z``'s dtype) serves the rows of ``a``
    and, read by columns, those of ``b``, so the search costs half of ``n^2 r`` multiply-adds.
    A compiled pass streams each tile once, keeping every row's ``k`` best so far.
    Each list is ordered by (distance, index); ``k_same`` is at most the smallest class
    size - 1 and ``k_other`` at most the number of points outside the largest class.

    Returns
    -------
    same : LongTensor (n, k_same), other : LongTensor (n, k_other)
    """
    n = Z.shape[0]
    counts = torch.bincount(codes)
    if k_same > int(counts[counts > 0].min()) - 1 or k_other > n - int(counts.max()):
        raise ValueError(f"k_same={k_same} / k_other={k_other} exceed the class sizes {counts.tolist()}")
    order = torch.argsort(codes, stable=True)
    Zs = Z.detach()[order].contiguous()
    sq = (Zs * Zs).sum(1).numpy()
    orig = order.numpy()  # heaps hold original indices: ties go to the smaller one
    bounds = torch.searchsorted(codes[order], torch.arange(int(codes.max()) + 2)).tolist()
    classes = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    dt = sq.dtype
    heaps = {"same": _Heaps(n, k_same, dt), "other": _Heaps(n, k_other, dt)}
    tile = max(64, int((min(memory_budget, 16 * 2**20) // Z.element_size()) ** 0.5))  # cache-sized
    for a, (alo, ahi) in enumerate(classes):
        for b, (blo, bhi) in enumerate(classes[a:], start=a):
            h = heaps["same" if a == b else "other"]
            if h.k == 0:
                continue
            for r0 in range(alo, ahi, tile):
                r1 = min(r0 + tile, ahi)
                for c0 in range(r0 if a == b else blo, bhi, tile):
                    c1 = min(c0 + tile, bhi)
                    G = (Zs[r0:r1] @ Zs[c0:c1].T).numpy()
                    _scan_tile(G, sq, orig, r0, c0, a == b and c0 == r0, h.dist, h.idx, h.worst, h.thr, h.thr_idx)
    out = []
    for h in heaps.values():  # sort each row by (distance, index), back to the original order
        key = np.lexsort((h.idx, h.dist), axis=1) if h.k else np.zeros((n, 0), dtype=np.intp)
        res = torch.empty((n, h.k), dtype=torch.long)
        res[order] = torch.as_tensor(np.take_along_axis(h.idx, key, 1))
        out.append(res)
    return out[0], out[1]


class _Heaps:
    """Every row's ``k`` best (distance, original index) so far, the position of its worst
    and that worst entry itself (the admission threshold, in contiguous arrays)."""

    def __init__(self, n: int, k: int, dtype):
        self.k = k
        self.dist = np.full((n, k), np.inf, dtype=dtype)
        self.idx = np.full((n, k), np.iinfo(np.int64).max, dtype=np.int64)
        self.worst = np.zeros(n, dtype=np.int64)
        self.thr = np.full(n, np.inf, dtype=np.float64)
        self.thr_idx = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)


@numba.njit(cache=True, nogil=True)
def _scan_tile(G, sq, orig, r0, c0, diagonal, dist, idx, worst, thr, thr_idx):  # pragma: no cover
    """Offer ``d(i, j) = sq_i + sq_j - 2 G_ij`` of one Gram tile (rows ``r0 + i``, columns
    ``c0 + j``, in class-sorted positions) to the heaps of both ``i`` and ``j``; on a diagonal
    tile only ``j > i``. An entry enters a full heap if it beats the worst by (distance, index)."""
    nr, nc = G.shape
    k = dist.shape[1]
    d = np.empty(nc, dtype=dist.dtype)  # distances rounded once to the heaps' dtype
    hit = np.empty(nc, dtype=np.bool_)
    tc = thr[c0:c0 + nc]  # the columns' thresholds (a view: it sees the updates)
    sc = sq[c0:c0 + nc]
    for i in range(nr):
        gi = r0 + i
        si, ti = sq[gi], thr[gi]
        for j in range(nc):  # vectorised: distances and a superset of the admissions
            d[j] = si + sc[j] - 2.0 * G[i, j]
            hit[j] = (d[j] <= ti) | (d[j] <= tc[j])
        for j in range(i + 1 if diagonal else 0, nc):
            if hit[j]:
                gj = c0 + j
                dj = d[j]
                if dj < thr[gi] or (dj == thr[gi] and orig[gj] < thr_idx[gi]):
                    _heap_offer(dist, idx, worst, thr, thr_idx, gi, dj, orig[gj], k)
                if dj < thr[gj] or (dj == thr[gj] and orig[gi] < thr_idx[gj]):
                    _heap_offer(dist, idx, worst, thr, thr_idx, gj, dj, orig[gi], k)


@numba.njit(cache=True, nogil=True, inline="always")
def _heap_offer(dist, idx, worst, thr, thr_idx, row, d, j, k):  # pragma: no cover - compiled
    """Replace ``row``'s worst entry by ``(d, j)`` and find its new worst."""
    w = worst[row]
    dist[row, w] = d
    idx[row, w] = j
    w = 0
    for t in range(1, k):
        if dist[row, t] > dist[row, w] or (dist[row, t] == dist[row, w] and idx[row, t] > idx[row, w]):
            w = t
    worst[row] = w
    thr[row] = dist[row, w]
    thr_idx[row] = idx[row, w]
