"""Information-Theoretic Metric Learning (Davis, Kulis, Jain, Sra and Dhillon, ICML 2007).

ITML finds the Mahalanobis matrix ``M`` closest to a prior ``M0`` in LogDet divergence such
that similar pairs are at squared distance at most ``u`` and dissimilar pairs at least ``l``
(with slack). It is solved by cyclic Bregman projections onto one pair constraint at a time,
each a rank-one update ``M <- M + beta M v v^T M`` that keeps ``M`` positive (semi-)definite.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import ClassVar

import numba
import numpy as np
from scipy.linalg import pinvh
from scipy.spatial.distance import pdist
from sklearn.exceptions import ConvergenceWarning

from .._validation import Interval, Options, check_params, resolve_metric
from ..margin import components_from_metric
from .base import PREPROCESSOR, RANDOM_STATE, MetricLearner

__all__ = ["ITML", "ITML_Supervised"]

_BOUNDS = [Options("distance", "squared"), list, tuple, np.ndarray]

#: at most this many points enter the percentile estimate of the default bounds
_MAX_BOUND_POINTS = 2000


class ITML(MetricLearner):
    """Information-Theoretic Metric Learning from class labels.

    Pairs are sampled from the labels (similar: same class; dissimilar: different classes),
    as metric-learn's ``ITML_Supervised``, whose defaults these are.

    Parameters
    ----------
    gamma : float, default=1.0
        Slack trade-off (> 0): larger values enforce the distance bounds more strictly.
    max_iter : int, default=1000
        Maximum number of passes over all pair constraints.
    tol : float, default=1e-3
        Convergence threshold on the relative change of the dual variables over one pass,
        ``||lambda - lambda_old||_1 / (||lambda||_2 + ||lambda_old||_2)``.
    n_constraints : int, default=None
        Number of similar pairs, and separately of dissimilar pairs, to sample. None gives
        ``20 * n_classes**2`` (metric-learn's ``num_constraints`` default). Fewer are used when
        the data have fewer distinct pairs.
    prior : {"identity", "covariance", "random"} or ndarray of shape (n_features, n_features), \
default="identity"
        The matrix ``M0`` the metric is pulled towards. "covariance" is the (pseudo-)inverse of
        the data covariance (a pseudo-inverse where features are constant or collinear, where
        metric-learn raises: those directions carry no distance in the data); "random" a random
        SPD matrix with eigenvalues in [1, 2]; an array is read as ``M0`` (a non-square
        ``(r, n_features)`` array as ``L0``, ``M0 = L0.T @ L0``). An array ``M0`` must be
        symmetric positive definite (else ``numpy.linalg.LinAlgError``): the LogDet divergence
        is undefined otherwise, and the Bregman updates never leave the range of ``M0``.
    verbose : bool, default=False
        Print the convergence measure after each pass.
    preprocessor : array of shape (n_points, n_features), callable or None, default=None
        ``X`` holds identifiers of points instead of points (see :class:`MetricLearner`).
    random_state : int, RandomState, Generator or None, default=None
        Seeds the pair sampling and the "random" prior.
    bounds : {"distance", "squared"} or array-like of 2 floats, default="distance"
        ``(u, l)``: similar pairs should have squared distance ``<= u``, dissimilar ``>= l``.
        A string takes ``(u, l)`` as the 5th and 95th percentiles of the pairwise distances
        under the prior among the distinct points that appear in the sampled pairs (at most
        2000 of them): of the plain distances for "distance" (metric-learn's convention; it
        asks for tighter similar pairs, and measured better 3-NN accuracy on digits), of the
        squared distances for "squared" (the authors' code; makes the fit scale-equivariant).
        ``fit(X, y, bounds=...)`` overrides it for one fit (metric-learn's convention).

    Attributes
    ----------
    components_ : ndarray of shape (n_features, n_features)
        ``L`` with ``M = L.T @ L``; rows ordered by decreasing eigenvalue of ``M``.
    bounds_ : ndarray of shape (2,)
        The bounds ``(u, l)`` used, in squared distance units.
    n_iter_ : int
        Number of passes run.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> X, y = load_iris(return_X_y=True)
    >>> ITML(random_state=0).fit(X, y).transform(X).shape
    (150, 4)
    """

    _parameter_constraints: ClassVar[dict] = {
        "gamma": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None)],
        "tol": [Interval(Real, 0, None, closed="left")],
        "n_constraints": [None, Interval(Integral, 1, None)],
        "prior": [Options("identity", "covariance", "random"), np.ndarray, list],
        "verbose": [bool],
        "preprocessor": PREPROCESSOR,
        "random_state": RANDOM_STATE,
        "bounds": _BOUNDS,
    }

    def __init__(self, gamma: float = 1.0, max_iter: int = 1000, tol: float = 1e-3,
                 n_constraints: int | None = None, prior: str | np.ndarray = "identity", verbose: bool = False,
                 preprocessor=None, random_state=None, *, bounds: str | tuple[float, float] | np.ndarray = "distance"):
        self.gamma = gamma
        self.max_iter = max_iter
        self.tol = tol
        self.n_constraints = n_constraints
        self.prior = prior
        self.verbose = verbose
        self.preprocessor = preprocessor
        self.random_state = random_state
        self.bounds = bounds

    def fit(self, X, y, bounds=None) -> "ITML":
        """Learn the metric from ``X`` and labels ``y``; ``bounds`` (None: the ``bounds`` parameter)
        gives ``(u, l)`` or the rule for this fit, as metric-learn's ``fit(X, y, bounds)``."""
        check_params(f"{type(self).__name__}.fit", {"bounds": bounds}, {"bounds": [None, *_BOUNDS]})
        self._fit_bounds = self.bounds if bounds is None else bounds
        try:
            return super().fit(X, y)
        finally:
            del self._fit_bounds

    # ------------------------------------------------------------------ pieces

    def _make_pairs(self, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Similar and dissimilar index pairs, each of shape (m, 2)."""
        n_classes = int(y.max()) + 1
        n_pairs = self.n_constraints if self.n_constraints is not None else 20 * n_classes**2
        return _sample_pairs(y, n_pairs, same=True, rng=rng), _sample_pairs(y, n_pairs, same=False, rng=rng)

    def _prior_matrix(self, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        d = X.shape[1]
        prior = self.prior
        if isinstance(prior, str):
            if prior == "identity":
                return np.eye(d)
            if prior == "covariance":
                cov = np.atleast_2d(np.cov(X, rowvar=False))
                M0 = pinvh((cov + cov.T) / 2, rtol=1e-8)  # constant features: pseudo-inverse
                return M0 if np.abs(M0).max() > 0 else np.eye(d)
            Q, _ = np.linalg.qr(rng.standard_normal((d, d)))  # "random"
            return (Q * (1.0 + rng.random(d))) @ Q.T
        L0 = resolve_metric(np.asarray(prior), d, name="prior")
        M0 = np.eye(d) if L0 is None else L0.T @ L0
        w = np.linalg.eigvalsh(M0)
        if not w.min() > 1e-10 * max(w.max(), 0.0):
            raise np.linalg.LinAlgError(
                f"The 'prior' parameter of {type(self).__name__} must be positive definite (ITML's LogDet "
                f"divergence is undefined otherwise); its smallest eigenvalue is {w.min():.3g}")
        return M0

    def _resolve_bounds(self, X: np.ndarray, pairs: np.ndarray, M0: np.ndarray, rng) -> np.ndarray:
        bounds = getattr(self, "_fit_bounds", self.bounds)
        if not isinstance(bounds, str):
            b = np.asarray(bounds)
            if b.dtype.kind not in "biuf" or b.size != 2 or not np.isfinite(b).all() or (b < 0).any():
                raise ValueError(f"bounds must be 2 finite numbers >= 0 (u, l), got {bounds!r}")
            b = b.astype(np.float64).ravel()
        else:
            P = np.unique(X[np.unique(pairs)], axis=0)  # distinct points, as metric-learn
            if P.shape[0] > _MAX_BOUND_POINTS:
                P = P[rng.choice(P.shape[0], _MAX_BOUND_POINTS, replace=False)]
            Z = P @ components_from_metric(M0).T  # Euclidean coordinates under M0
            kind = "sqeuclidean" if bounds == "squared" else "euclidean"
            dist = pdist(Z, kind) if P.shape[0] > 1 else np.zeros(1)
            b = np.percentile(dist, [5.0, 95.0])
        b[b == 0] = 1e-9
        return b

    # ------------------------------------------------------------------ fit

    def _fit(self, X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        pos, neg = self._make_pairs(y, rng)
        M0 = self._prior_matrix(X, rng)
        pairs = np.concatenate([pos, neg])
        self.bounds_ = self._resolve_bounds(X, pairs, M0, rng)
        V = X[pairs[:, 0]] - X[pairs[:, 1]]
        similar = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
        M, n_iter, converged = _itml_projections(
            V, similar, M0, u=self.bounds_[0], l=self.bounds_[1], gamma=float(self.gamma),
            max_iter=self.max_iter, tol=float(self.tol), verbose=self.verbose,
        )
        if not converged:
            warnings.warn(
                f"ITML did not converge in max_iter={self.max_iter} passes (tol={self.tol}); "
                "increase max_iter or tol",
                ConvergenceWarning,
            )
        return components_from_metric(M), n_iter


class ITML_Supervised(ITML):  # noqa: N801 - metric-learn's name
    """:class:`ITML` under metric-learn's name and signature (``metric_learn.ITML_Supervised``).

    The same learner: its parameters are metric-learn's, and the bounds are given to
    ``fit(X, y, bounds=None)`` (None: the 5th and 95th percentiles of the pairwise distances,
    metric-learn's rule, :class:`ITML`'s ``bounds="distance"``).

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> X, y = load_iris(return_X_y=True)
    >>> ITML_Supervised(random_state=0).fit(X, y, bounds=None).transform(X).shape
    (150, 4)
    """

    _parameter_constraints: ClassVar[dict] = {k: v for k, v in ITML._parameter_constraints.items() if k != "bounds"}
    bounds = "distance"

    def __init__(self, gamma: float = 1.0, max_iter: int = 1000, tol: float = 1e-3,
                 n_constraints: int | None = None, prior: str | np.ndarray = "identity", verbose: bool = False,
                 preprocessor=None, random_state=None):
        self.gamma = gamma
        self.max_iter = max_iter
        self.tol = tol
        self.n_constraints = n_constraints
        self.prior = prior
        self.verbose = verbose
        self.preprocessor = preprocessor
        self.random_state = random_state


# ---------------------------------------------------------------------- helpers


def _sample_pairs(y: np.ndarray, n_pairs: int, *, same: bool, rng: np.random.Generator) -> np.ndarray:
    """Distinct unordered pairs ``(i, j)``, ``i != j``, uniform among same- (or different-)
    class pairs; all of them (shuffled) when fewer than ``n_pairs`` exist. Shape (m, 2)."""
    n = y.size
    counts = np.bincount(y)
    n_partners = counts[y] - 1 if same else n - counts[y]  # partners of each point
    available = int(n_partners.sum()) // 2
    if available == 0:
        return np.empty((0, 2), dtype=np.intp)
    if 2 * n_pairs >= available:  # dense regime: enumerate every pair (at most 2 n_pairs)
        members = [np.flatnonzero(y == c) for c in range(counts.size)]
        blocks = []
        for c, idx in enumerate(members):
            if same:
                i, j = np.triu_indices(idx.size, k=1)
                blocks.append(np.stack([idx[i], idx[j]], axis=1))
            else:
                for other in members[c + 1 :]:
                    a, b = np.meshgrid(idx, other, indexing="ij")
                    blocks.append(np.stack([np.minimum(a, b).ravel(), np.maximum(a, b).ravel()], axis=1))
        all_pairs = np.concatenate(blocks)
        take = rng.permutation(all_pairs.shape[0])[: min(n_pairs, available)]
        return all_pairs[take]
    order = np.argsort(y, kind="stable")  # points grouped by class
    start = np.r_[0, np.cumsum(counts)[:-1]]
    rank = np.empty(n, dtype=np.intp)
    rank[order] = np.arange(n) - start[y[order]]  # position of each point inside its class
    p = n_partners / n_partners.sum()
    codes = np.empty(0, dtype=np.int64)
    while codes.size < n_pairs:
        m = 2 * (n_pairs - codes.size) + 16
        a = rng.choice(n, size=m, p=p)  # anchor drawn by its number of partners: pairs uniform
        r = (rng.random(m) * n_partners[a]).astype(np.intp)
        if same:
            r += r >= rank[a]  # skip the anchor itself
            b = order[start[y[a]] + r]
        else:
            r += np.where(r >= start[y[a]], counts[y[a]], 0)  # skip the anchor's class block
            b = order[r]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        codes = np.unique(np.r_[codes, lo.astype(np.int64) * n + hi])
    codes = codes[rng.permutation(codes.size)[:n_pairs]]
    return np.stack([codes // n, codes % n], axis=1).astype(np.intp)


def _itml_projections(
    V: np.ndarray,
    similar: np.ndarray,
    M0: np.ndarray,
    *,
    u: float,
    l: float,
    gamma: float,
    max_iter: int,
    tol: float,
    verbose: bool = False,
) -> tuple[np.ndarray, int, bool]:
    """Cyclic LogDet Bregman projections onto the pair constraints (Davis et al., Alg. 1).

    ``V`` holds the difference vectors (m, d), ``similar`` their kind. Returns the learned
    ``M`` (symmetric), the number of passes and whether the convergence test was met.
    Each pass is one compiled sweep (:func:`_itml_pass`).
    """
    M = np.array(M0, dtype=np.float64, order="C", copy=True)
    M = (M + M.T) / 2
    V = np.ascontiguousarray(V, dtype=np.float64)
    sim = np.ascontiguousarray(similar, dtype=np.bool_)
    m = V.shape[0]
    bhat = np.where(sim, float(u), float(l))
    lam = np.zeros(m)
    lam_old = np.zeros(m)
    work = np.empty(M.shape[0])
    tiny = 1e-12 * max(u, l)  # a pair this close under M cannot be moved: skip it
    converged, n_iter = m == 0, 0
    for it in range(max_iter if m else 0):
        n_iter = it + 1
        _itml_pass(M, V, sim, bhat, lam, gamma, tiny, work)
        normsum = np.linalg.norm(lam) + np.linalg.norm(lam_old)
        if normsum == 0:  # every constraint already satisfied by M0
            converged = True
            break
        conv = np.abs(lam_old - lam).sum() / normsum
        if verbose:
            print(f"ITML pass {n_iter}: conv = {conv:.3g}")
        if conv < tol:
            converged = True
            break
        lam_old[:] = lam
    return M, n_iter, converged


@numba.njit(cache=True, nogil=True)
def _itml_pass(M, V, sim, bhat, lam, gamma, tiny, Mv):  # pragma: no cover - compiled
    """One sweep of Bregman projections over all rows of ``V``, updating ``M``, ``bhat`` and
    ``lam`` in place. ``M`` stays exactly symmetric (the update is ``±w w^T``)."""
    m, d = V.shape
    gp = gamma / (gamma + 1.0)
    for i in range(m):
        v = V[i]
        Mv[:] = 0.0
        for c in range(d):  # Mv = M v as a sum of rows (M symmetric): contiguous, vectorised
            vc = v[c]
            if vc != 0.0:
                for r in range(d):
                    Mv[r] += M[c, r] * vc
        p = 0.0
        for r in range(d):
            p += Mv[r] * v[r]
        if not p > tiny:
            continue
        b = bhat[i]
        if sim[i]:
            alpha = min(lam[i], gp * (1.0 / p - 1.0 / b))
            if alpha == 0.0:
                continue
            beta = alpha / (1.0 - alpha * p)
            bhat[i] = 1.0 / (1.0 / b + alpha / gamma)
        else:
            alpha = min(lam[i], gp * (1.0 / b - 1.0 / p))
            if alpha == 0.0:
                continue
            beta = -alpha / (1.0 + alpha * p)
            bhat[i] = 1.0 / (1.0 / b - alpha / gamma)
        lam[i] -= alpha
        sign = 1.0 if beta > 0.0 else -1.0
        scale = np.sqrt(abs(beta))
        for r in range(d):
            Mv[r] *= scale  # M += sign w w^T with w = sqrt|beta| M v: w_r w_c == w_c w_r
        for r in range(d):
            s = sign * Mv[r]
            for c in range(d):
                M[r, c] += s * Mv[c]
