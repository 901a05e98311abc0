"""A fitted K-NN's training geometry and the one K-NN predict.

:class:`KNNGeometry` holds what every test point shares: the centred training points, their
images under the metric, the class codes and the tie magnitudes. It is built once (by
``MahalanobisKNN.fit``, or from raw data by the certify functions and the attacks) and gives
the one K-NN predict with the package's tie rule (:meth:`KNNGeometry.kneighbors`,
:meth:`KNNGeometry.predict_codes`). Below it live only :mod:`.margin` and :mod:`._validation`;
``certify``, the attacks and ``neighbors`` all build on it.

Also here: the per-class split of the training set with its cached pair norms
(:func:`class_split`), which the exact radius and the K-NN bound share.
"""

from __future__ import annotations

import threading
import uuid
import warnings
from functools import cached_property
from typing import Any

import numpy as np
import torch

from ._validation import (
    check_array_2d,
    check_labels,
    check_metric_scale,
    check_scale,
    resolve_metric,
)
from .margin import (
    NEAR_TIE,
    margin_from_distances,
    pairwise_sq_distances,
    repair_pair_norms,
    row_blocks,
    smallest_k,
    tie_tolerance,
    tie_window,
    vote,
)

__all__ = ["KNNGeometry", "ClassSplit", "class_split", "clear_split_cache", "exact_ties", "fit_geometry",
           "tied_margins"]


def _tensor(a: np.ndarray) -> torch.Tensor:
    """``a`` as a tensor sharing its memory, only ever read: joblib hands its workers read-only
    memory maps, for which torch warns that writing would be undefined."""
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def _sq(A: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", A, A)


class KNNGeometry:
    """A training set under a metric ``M = L^T L``, with everything the test points share.

    Parameters
    ----------
    X : ndarray of shape (n, d)
        Training points (finite, float64).
    codes : ndarray of int of shape (n,)
        Class codes ``0..n_classes-1``.
    n_classes : int
    L : ndarray of shape (r, d) or None
        Components (None: the identity).
    memory_budget : int
        Bytes allowed for one block of distances.
    classes : ndarray of shape (n_classes,), default=None
        The labels the codes stand for (for :meth:`codes_of`).

    Attributes
    ----------
    X_fit : (n, d) the training points as given; ``Zu``, ``Zu_sq``: ``X_fit L^T`` and its squared
        row norms, the coordinates of the predict (so that exact ties in the data stay exact).
    X, mean : centred training points and the centre; ``Z``, ``Z_sq``: ``X L^T`` and its squared
        row norms; ``MX``, ``MX_sq``: ``X M`` and its squared row norms; ``mag``: the magnitudes
        ``MX``'s rows are computed from, ``||L||_F^2 (||X_i|| + ||mean||)``. The coordinates of
        the radii (centring keeps the expanded squares accurate); computed on first use.
    counts : (n_classes,) training points per class.
    token : a unique key (per-process caches).
    """

    def __init__(self, X: np.ndarray, codes: np.ndarray, n_classes: int, L: np.ndarray | None, memory_budget: int,
                 classes: np.ndarray | None = None):
        self.X_fit = X
        self.codes = np.asarray(codes, dtype=np.int64)
        self.n_classes = int(n_classes)
        self.counts = np.bincount(self.codes, minlength=self.n_classes)
        self.L = L
        self.Zu = X if L is None else X @ L.T
        self.Zu_sq = _sq(self.Zu)
        self.memory_budget = int(memory_budget)
        self.classes = classes
        self.token = uuid.uuid4().hex
        self.l_norm = 1.0 if L is None else float(np.linalg.norm(L))  # ||L||_F >= ||L||_2
        self.xu_max = float(np.sqrt(_sq(X)).max())

    @cached_property
    def mean(self) -> np.ndarray:
        return self.X_fit.mean(0)

    @cached_property
    def X(self) -> np.ndarray:
        return np.ascontiguousarray(self.X_fit - self.mean)

    @cached_property
    def Z(self) -> np.ndarray:
        return self.X if self.L is None else self.X @ self.L.T

    @cached_property
    def Z_sq(self) -> np.ndarray:
        return _sq(self.Z)

    @cached_property
    def MX(self) -> np.ndarray:
        return self.X if self.L is None else self.Z @ self.L

    @cached_property
    def MX_sq(self) -> np.ndarray:
        return _sq(self.MX)

    @cached_property
    def mag(self) -> np.ndarray:
        return self.l_norm ** 2 * (np.sqrt(_sq(self.X)) + float(np.linalg.norm(self.mean)))

    def prepare(self) -> "KNNGeometry":
        """Compute the lazy attributes now (before the geometry is sent to parallel workers)."""
        self.Z_sq, self.MX_sq, self.mag  # noqa: B018
        return self

    @property
    def n_features(self) -> int:
        return self.X_fit.shape[1]

    def sq_dist(self, Q: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distances from raw query rows ``Q`` to all training points (in the
        centred coordinates)."""
        Qc = Q - self.mean
        ZQ = Qc if self.L is None else Qc @ self.L.T
        return pairwise_sq_distances(_tensor(np.ascontiguousarray(ZQ)), _tensor(self.Z),
                                     B_sq=_tensor(self.Z_sq)).numpy()

    def magnitude(self, Q: np.ndarray) -> np.ndarray:
        """Per raw query row, the magnitude its predict distances are computed from (for the tie
        tolerance of :func:`~robust_metric_learning.margin.smallest_k`)."""
        return self.l_norm * (self.xu_max + np.linalg.norm(Q, axis=1))

    def kneighbors(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest training points of each raw query row, with the package's tie rule.

        At equal distance the training point with the smaller index is the nearer; distances
        within rounding of the ``k``-th are recomputed exactly to decide
        (:func:`~robust_metric_learning.margin.smallest_k`), so the answer does not depend on
        the BLAS kernel. Blockwise within ``memory_budget``.

        Returns
        -------
        dist : ndarray of shape (m, k), squared distances, ascending.
        ind : ndarray of shape (m, k), training indices.
        """
        m = len(Q)
        dist = np.empty((m, k))
        ind = np.empty((m, k), dtype=np.int64)
        Z = _tensor(np.ascontiguousarray(self.Zu))
        Z_sq = _tensor(self.Zu_sq)
        L = None if self.L is None else torch.from_numpy(np.ascontiguousarray(self.L))
        tol_unit = tie_tolerance(self.Zu.shape[1])
        for sl in row_blocks(m, 2 * self.Zu.shape[0], memory_budget=self.memory_budget):
            ZQ = torch.from_numpy(np.ascontiguousarray(Q[sl], dtype=np.float64))
            ZQ = ZQ if L is None else ZQ @ L.T
            D = pairwise_sq_distances(ZQ, Z, B_sq=Z_sq)
            vals, idx = torch.topk(D, k, dim=1, largest=False, sorted=True)
            mag = self.magnitude(Q[sl])
            tol = tol_unit * mag * mag
            qq, d_max = (ZQ * ZQ).sum(1).numpy(), D.max(1).values.numpy()
            window = torch.as_tensor([tie_window(a, b, c) for a, b, c in zip(qq, d_max, tol)])[:, None]
            tied = ((D <= vals[:, -1:] + window).sum(1) > k).numpy() | _unordered(vals, window)
            idx, Dn, ZQn = idx.numpy(), D.numpy(), ZQ.numpy()
            for r in np.flatnonzero(tied):
                idx[r] = smallest_k(Dn[r], k, Z=self.Zu, q=ZQn[r], mag=mag[r])
            ind[sl] = idx
            dist[sl] = np.take_along_axis(Dn, idx, axis=1)
        return dist, ind

    def predict_codes(self, Q: np.ndarray, k: int) -> np.ndarray:
        """Class codes the K-NN vote gives raw query rows ``Q`` (a tied vote: the smaller code)."""
        _, ind = self.kneighbors(Q, k)
        return vote(self.codes[ind], self.n_classes)

    def codes_of(self, y: np.ndarray, *, against: str = "the model's classes_ have") -> np.ndarray:
        """Class codes of labels ``y``; -1 for labels the geometry does not know. Labels that
        cannot compare with the training labels (strings against numbers) raise ValueError,
        ``against`` naming the training labels in the message."""
        classes = self.classes
        if (y.dtype.kind in "USO") != (classes.dtype.kind in "USO"):
            raise ValueError(f"y has labels of dtype {y.dtype}, {against} {classes.dtype}; they must be comparable")
        pos = np.searchsorted(classes, y)
        ok = pos < classes.size
        ok[ok] = classes[pos[ok]] == y[ok]
        return np.where(ok, pos, -1)


def _unordered(vals: torch.Tensor, window: torch.Tensor) -> np.ndarray:
    """Rows whose ``k`` smallest values hold a pair within ``window`` of each other: their order
    (which kneighbors returns) needs the exact recomputation too."""
    if vals.shape[1] < 2:
        return np.zeros(vals.shape[0], dtype=bool)
    return ((vals[:, 1:] - vals[:, :-1]) <= window).any(1).numpy()


def fit_geometry(X: Any, y: Any, metric: Any, *, n_neighbors: int, memory_budget: int, name: str = "X",
                 y_name: str = "y", what: str = "a classifier", fit_learner: bool = True) -> tuple[KNNGeometry, Any]:
    """Validate a training set and a metric, and build their geometry.

    ``metric`` is resolved by :func:`~robust_metric_learning._validation.resolve_metric`; with
    ``fit_learner`` an unfitted learner is first cloned and fitted on ``X, y`` (as
    ``MahalanobisKNN`` does). Returns the geometry (with ``classes``) and the learner fitted
    here (or None).
    """
    from sklearn.base import clone

    X = check_scale(check_array_2d(X, name=name), name=name)
    y = check_labels(y, n_samples=X.shape[0], name=y_name, rows=name)
    classes, codes = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise ValueError(f"{y_name} has one class only ({classes[0].tolist()!r}); {what} needs at least 2 classes")
    if n_neighbors > X.shape[0]:
        raise ValueError(f"n_neighbors={n_neighbors} is larger than the {X.shape[0]} training samples")
    fitted = None
    if fit_learner and hasattr(metric, "fit") and not hasattr(metric, "components_"):
        fitted = metric = clone(metric).fit(X, y)
    L = resolve_metric(metric, X.shape[1])
    check_metric_scale(X, L, name=name)
    return KNNGeometry(X, codes, classes.size, L, memory_budget, classes=classes), fitted


# ------------------------------------------------------------------ the class split


def _norms(A: np.ndarray, B: np.ndarray, A_sq: np.ndarray, B_sq: np.ndarray) -> np.ndarray:
    """``||a_i - b_j||`` for rows of ``A`` and ``B`` given their squared row norms."""
    D = pairwise_sq_distances(_tensor(A), _tensor(B), A_sq=_tensor(A_sq), B_sq=_tensor(B_sq))
    return D.sqrt_().numpy()


def exact_ties(D: np.ndarray, rows: np.ndarray, cols: np.ndarray, geo: KNNGeometry) -> np.ndarray:
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


def tied_margins(dP: np.ndarray, dN: np.ndarray, norms: np.ndarray, P: np.ndarray, N: np.ndarray) -> np.ndarray:
    """``margin(x; x_i, x_j)`` of positives ``P`` (rows) against negatives ``N`` (columns), with
    tied pairs (norm 0) set by the index rule: ``+inf`` where the positive comes first (the
    negative can never be nearer), 0 where the negative does (it always is)."""
    m = margin_from_distances(dP[:, None], dN[None, :], norms)
    tied = norms == 0
    if tied.any():
        m = np.where(tied, np.where(P[:, None] < N[None, :], np.inf, 0.0), m)
    return m


class ClassSplit:
    """Positives (class ``c``) and negatives, with their pair norms ``||M (x_i - x_j)||``
    cached when the ``|P| x |N|`` matrix fits the memory budget, else computed on demand."""

    def __init__(self, geo: KNNGeometry, c: int):
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
        return exact_ties(D, self.P[rows], np.arange(self.geo.MX.shape[0]), self.geo)

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
        return exact_ties(D, self.P, J, self.geo)


_split_cache: dict[tuple[str, int], ClassSplit] = {}
_split_lock = threading.Lock()


def class_split(geo: KNNGeometry, c: int) -> ClassSplit:
    """Per-process cache of the last class split, so chunks of one class share its work."""
    key = (geo.token, c)
    with _split_lock:
        split = _split_cache.get(key)
    if split is None:
        split = ClassSplit(geo, c)
        with _split_lock:
            _split_cache.clear()
            _split_cache[key] = split
    return split


def clear_split_cache() -> None:
    """Free the cached class split (its pair norms)."""
    with _split_lock:
        _split_cache.clear()
