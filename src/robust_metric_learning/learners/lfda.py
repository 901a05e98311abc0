"""Local Fisher Discriminant Analysis (Sugiyama, JMLR 2007), in closed form.

LFDA is Fisher discriminant analysis with pairs weighted by a local affinity
``A_ij = exp(-||x_i - x_j||^2 / (sigma_i sigma_j))`` (``sigma_i``: distance from ``x_i`` to
its k-th nearest neighbour in its class), so that multimodal classes keep their clusters
apart instead of being collapsed. The metric comes from the generalised eigenproblem
``S_b v = lambda S_w v`` of the local between- and within-class scatter matrices.

This implementation is hardened for degenerate data: the within-class scatter gets a small
ridge, the symmetric-definite solver ``scipy.linalg.eigh`` is used, and zero neighbour
distances are floored, so constant or collinear features, duplicate points and singleton
classes give finite, real output.
"""

from __future__ import annotations

from numbers import Integral
from typing import ClassVar

import numpy as np
from scipy.linalg import LinAlgError, eigh

from .._validation import Interval, Options
from ._init import resolve_n_components
from .base import PREPROCESSOR, MetricLearner

__all__ = ["LFDA"]

#: distance blocks hold at most this many float64 entries (32 MiB)
_BLOCK_ENTRIES = 1 << 22
#: ridge added to S_w, relative to its mean eigenvalue trace(S_w) / d
_RIDGE = 1e-6
#: floor on sigma_i, relative to the root-mean-square norm of the centred data
_SIGMA_FLOOR = 1e-6


class LFDA(MetricLearner):
    """Local Fisher Discriminant Analysis.

    Parameters
    ----------
    n_components : int, default=None
        Dimension of the embedding (rows of ``components_``); None keeps ``n_features``.
        At most ``n_features``.
    k : int or None, default=None
        The k-th nearest neighbour (within the class) sets the local scale ``sigma_i``;
        clamped to ``class size - 1``. None is metric-learn's rule, ``min(7, n_features - 1)``
        (at least 1): Sugiyama's suggested 7, smaller for data with few features.
    embedding_type : {"weighted", "orthonormalized", "plain"}, default="weighted"
        How the generalised eigenvectors ``V`` (columns, ``V.T @ (S_w + ridge I) @ V = I``)
        become ``components_ = W.T``: "weighted" scales each by the square root of its
        eigenvalue (negative eigenvalues give 0); "orthonormalized" takes an orthonormal basis of
        their span (QR), so ``components_ @ components_.T = I``; "plain" keeps ``V``.
    preprocessor : array of shape (n_points, n_features), callable or None, default=None
        ``X`` holds identifiers of points instead of points (see :class:`MetricLearner`).

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        ``L``; rows ordered by decreasing generalised eigenvalue.
    eigenvalues_ : ndarray of shape (n_components,)
        The generalised eigenvalues kept (local Fisher ratios), in decreasing order.
    n_iter_ : int
        Always 1 (closed form).

    Notes
    -----
    ``S_b`` is built as in Sugiyama's reference code (local mixture scatter minus ``S_w``).
    metric-learn 0.7 adds ``S_w`` instead of subtracting it, which shifts every eigenvalue by
    2 and so changes only the "weighted" embedding's scaling. With "plain" and directions that
    ``S_w`` does not see (constant features), the eigenvectors are large (about
    ``1 / sqrt(ridge)``); "weighted" gives them weight 0.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> X, y = load_iris(return_X_y=True)
    >>> LFDA(n_components=2).fit(X, y).transform(X).shape
    (150, 2)
    """

    _parameter_constraints: ClassVar[dict] = {
        "n_components": [None, Interval(Integral, 1, None)],
        "k": [None, Interval(Integral, 1, None)],
        "embedding_type": [Options("weighted", "orthonormalized", "plain")],
        "preprocessor": PREPROCESSOR,
    }

    def __init__(self, n_components: int | None = None, k: int | None = None, embedding_type: str = "weighted",
                 preprocessor=None):
        self.n_components = n_components
        self.k = k
        self.embedding_type = embedding_type
        self.preprocessor = preprocessor

    def _fit(self, X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        d = X.shape[1]
        r = resolve_n_components(self.n_components, d, owner=type(self).__name__)
        k = max(1, min(7, d - 1)) if self.k is None else int(self.k)
        S_b, S_w = _local_scatter(X, y, k)
        vals, V = _generalized_eigh(S_b, S_w)
        vals, V = vals[:r], V[:, :r]
        if self.embedding_type == "weighted":
            V = V * np.sqrt(np.clip(vals, 0.0, None))
        elif self.embedding_type == "orthonormalized":
            Q, R = np.linalg.qr(V)
            V = Q * np.where(np.diag(R) < 0, -1.0, 1.0)  # same orientation as the eigenvectors
        self.eigenvalues_ = vals
        return V.T.copy(), 1


def _local_scatter(X: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Local between- and within-class scatter matrices ``(S_b, S_w)``, symmetric (d, d).

    ``S_w = sum_c G_c / n_c`` and ``S_b = sum_c [(1 - n_c/n) Z_c^T Z_c + s_c s_c^T / n + G_c / n]
    - S_w`` for centred data ``Z`` (so the global sum is 0), with ``G_c = Z_c^T (D_c - A_c) Z_c``
    the affinity Laplacian of class c and ``s_c`` the sum of its points. Distances are computed
    in row blocks, never more than ``_BLOCK_ENTRIES`` at once.
    """
    n, d = X.shape
    Z = X - X.mean(axis=0)
    sq = np.einsum("ij,ij->i", Z, Z)
    rms = float(np.sqrt(sq.mean()))
    floor = _SIGMA_FLOOR * (rms if rms > 0 else 1.0)
    S_w = np.zeros((d, d))
    S_b = np.zeros((d, d))
    for c in range(int(y.max()) + 1):
        Zc, sqc = Z[y == c], sq[y == c]
        nc = Zc.shape[0]
        if nc == 0:
            continue
        kk = min(k, nc - 1)
        rows = max(1, _BLOCK_ENTRIES // nc)
        blocks = [(s, min(s + rows, nc)) for s in range(0, nc, rows)]
        D_all = _sq_dists(Zc, sqc, 0, nc) if len(blocks) == 1 else None  # reused when it fits
        sigma = np.empty(nc)
        for s, e in blocks:
            D = D_all if D_all is not None else _sq_dists(Zc, sqc, s, e)
            sigma[s:e] = np.sqrt(np.partition(D, kk, axis=1)[:, kk])
        np.maximum(sigma, floor, out=sigma)  # duplicates give sigma = 0
        G = np.zeros((d, d))
        for s, e in blocks:
            D = D_all if D_all is not None else _sq_dists(Zc, sqc, s, e)
            with np.errstate(over="ignore", under="ignore"):
                A = np.exp(-D / (sigma[s:e, None] * sigma[None, :]))
            Zb = Zc[s:e]
            G += Zb.T @ (A.sum(axis=1)[:, None] * Zb) - Zb.T @ (A @ Zc)
        sc = Zc.sum(axis=0)
        S_w += G / nc
        S_b += (1.0 - nc / n) * (Zc.T @ Zc) + np.outer(sc, sc) / n + G / n
    S_b -= S_w
    return (S_b + S_b.T) / 2, (S_w + S_w.T) / 2


def _sq_dists(Z: np.ndarray, sq: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Squared distances from rows ``start:stop`` of ``Z`` to all rows, clipped at 0."""
    D = sq[start:stop, None] + sq[None, :] - 2.0 * (Z[start:stop] @ Z.T)
    np.maximum(D, 0.0, out=D)
    D[np.arange(stop - start), np.arange(start, stop)] = 0.0  # exact zero self-distance
    return D


def _generalized_eigh(S_b: np.ndarray, S_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``S_b v = lambda (S_w + ridge I) v``; eigenvalues descending, real.

    Eigenvectors are normalised ``V.T @ (S_w + ridge I) @ V = I`` and signed so that the
    largest-magnitude entry of each is positive. The ridge is ``1e-6 * trace(S_w) / d``
    (``trace(|S_b|)`` or 1 when S_w is zero) and grows if the Cholesky factorisation fails.
    """
    d = S_w.shape[0]
    scale = np.trace(S_w) / d
    if not scale > 0:
        scale = np.abs(S_b).trace() / d
    if not scale > 0:
        scale = 1.0
    ridge = _RIDGE * scale
    for _ in range(6):
        try:
            vals, V = eigh(S_b, S_w + ridge * np.eye(d))
            break
        except LinAlgError:
            ridge *= 100.0
    else:  # pragma: no cover - S_w + ridge I is positive definite for any finite S_w
        raise LinAlgError("LFDA: the within-class scatter could not be regularised")
    order = np.argsort(-vals, kind="stable")
    vals, V = vals[order], V[:, order]
    top = np.abs(V).argmax(axis=0)
    V = V * np.where(V[top, np.arange(d)] < 0, -1.0, 1.0)
    return vals, V
