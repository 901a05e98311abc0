"""LMNN-PL (Yang et al., TNNLS 2022): LMNN with the perturbation loss, as published."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from .._validation import Interval
from ..margin import DEFAULT_MEMORY_BUDGET, NORM_FLOOR, class_neighbors, components_from_metric, margin_from_distances
from .lmnn import LMNN
from .triplet import PerturbationLoss

__all__ = ["LMNNPL", "make_lmnn_pl"]


def _psd_projection(M: torch.Tensor) -> torch.Tensor:
    """The nearest (Frobenius) PSD matrix: negative eigenvalues of ``(M + M^T) / 2`` set to 0."""
    w, V = torch.linalg.eigh((M + M.T) / 2)
    return (V * w.clamp(min=0)) @ V.T


class LMNNPL(LMNN):
    """LMNN with the perturbation loss, as published (Yang et al., TNNLS 2022).

    Objective over fixed triplets: each point's ``k`` nearest same-class (target) and
    ``n_impostors`` nearest other-class points under the Euclidean metric, all
    ``k * n_impostors`` combinations, chosen once:

        c * mean pull + (1 - c) * mean [1 + d(x_i, x_j) - d(x_i, x_l)]_+ + PL

    with the means over target pairs and over triplets, and ``PL`` the
    :class:`PerturbationLoss` (``weight`` = lambda) of every triplet; ``c`` =
    ``regularization`` weights the pull, as in :class:`LMNN` (the paper's ``mu``).
    The parameter is ``M`` itself (projected gradient from the identity): after each step
    ``M`` is projected onto the PSD cone. ``components_`` is a factor ``L`` with
    ``M = L.T @ L``. Without ``perturbation`` this is the paper's LMNN baseline.

    The published recipe also z-scores the features and L2-normalises the rows; that is not
    linear, so it cannot be folded into ``L``: use :func:`make_lmnn_pl`, a pipeline that does
    both, and classify with :class:`~robust_metric_learning.neighbors.MahalanobisKNN` after the
    same two steps.

    Parameters
    ----------
    n_neighbors : int, default=3
        Target neighbours per point (every class needs ``n_neighbors + 1`` points).
    n_impostors : int, default=10
    regularization : float, default=0.5
        Weight of the pull term, in [0, 1] (the paper's ``mu``).
    perturbation : PerturbationLoss or None, default=None
    solver : {"sgd", "adam"}, default="sgd"
        "sgd" is the published projected gradient descent. Adam with the projection does not
        settle on this piecewise-linear objective (it drifts back up after a few dozen epochs).
    learn_rate : float, default=50.0
        Step on ``M``. Large because the objective is a mean over unit-norm rows (the
        preprocessing of :func:`make_lmnn_pl`), so its gradient is small; scale it down for
        data with larger distances.
    max_iter : int, default=300
    convergence_tol : float, default=1e-4
        Relative early-stopping tolerance over 10 epochs (the iterate with the lowest
        objective is kept); 0 runs every epoch.
    dtype, memory_budget, random_state, verbose
        As in :class:`LMNN`.

    Notes
    -----
    Each epoch costs ``O(n (k + n_impostors) d^2)`` time and holds the ``n (k + n_impostors)``
    anchor differences (``d`` values each), fixed at the start.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> X, y = load_iris(return_X_y=True)
    >>> pl = PerturbationLoss(tau=0.5, weight=1.0)
    >>> LMNNPL(perturbation=pl, max_iter=20).fit(X, y).components_.shape
    (4, 4)
    """

    _parameter_constraints = {
        **{k: v for k, v in LMNN._parameter_constraints.items() if k not in ("init", "resample_every", "min_iter", "n_components", "preprocessor")},
        "learn_rate": [Interval(Real, 0, None, closed="neither")],
        "n_impostors": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, n_neighbors: int = 3, n_impostors: int = 10, *, regularization: float = 0.5,
                 perturbation: PerturbationLoss | None = None, solver: str = "sgd",
                 learn_rate: float = 50.0, max_iter: int = 300, convergence_tol: float = 1e-4,
                 dtype: str = "float64", memory_budget: int = DEFAULT_MEMORY_BUDGET, random_state=None,
                 verbose: bool = False):
        self.n_neighbors = n_neighbors
        self.n_impostors = n_impostors
        self.regularization = regularization
        self.perturbation = perturbation
        self.solver = solver
        self.learn_rate = learn_rate
        self.max_iter = max_iter
        self.convergence_tol = convergence_tol
        self.dtype = dtype
        self.memory_budget = memory_budget
        self.random_state = random_state
        self.verbose = verbose

    resample_every = 1  # the triplets are fixed; "re-sampling" returns them again
    min_iter = 0
    preprocessor = None

    def _prepare(self, X, codes):
        counts = torch.bincount(codes)
        if int(counts.min()) < self.n_neighbors + 1:
            c = int(counts.argmin())
            raise ValueError(f"n_neighbors={self.n_neighbors} target neighbours need at least {self.n_neighbors + 1} "
                             f"points in every class; class {self.classes_[c].tolist()!r} has {int(counts.min())}")
        state = super()._prepare(X, codes)
        n_other = int(len(codes) - torch.bincount(codes).max())
        if self.n_impostors > n_other:
            raise ValueError(f"n_impostors={self.n_impostors} is larger than the {n_other} points "
                             f"outside the largest class")
        targets, impostors = class_neighbors(X, codes, self.n_neighbors, self.n_impostors,
                                             memory_budget=self.memory_budget)
        n, k, v = len(codes), self.n_neighbors, self.n_impostors
        a = torch.arange(n).repeat_interleave(k * v)
        p = targets.repeat_interleave(v, dim=1).reshape(-1)
        q = impostors.repeat(1, k).reshape(-1)
        # the triplets are (i, targets[i, j], impostors[i, l]) in (i, j, l) order; the loss works on
        # the anchor differences, (n, k, d) and (n, v, d), not on n k v rows of d values
        state.update(targets=targets, trip=(a, p, q), diff_pos=X.unsqueeze(1) - X[targets],
                     diff_neg=X.unsqueeze(1) - X[impostors])
        return state

    def _init_components(self, X, codes, rng):
        return np.eye(X.shape[1])

    def _metric(self, param):
        return param

    def _components(self, param):
        return components_from_metric(param)

    def _project(self, param):
        return _psd_projection(param)

    def _sample(self, X, codes, M, rng, cache):
        return self._state["trip"]

    def _parts(self, M):
        """Squared distances to targets (n, k) and impostors (n, v), and margins (n k v,)."""
        DP, DQ = self._state["diff_pos"], self._state["diff_neg"]
        AP, AQ = DP @ M, DQ @ M  # rows M (x_i - x_j), M (x_i - x_l)
        d_pos, d_neg = (AP * DP).sum(-1), (AQ * DQ).sum(-1)
        # ||M (x_j - x_l)||^2 = ||AQ - AP||^2, expanded: one (k x v) product per anchor
        sq = (AP * AP).sum(-1).unsqueeze(2) + (AQ * AQ).sum(-1).unsqueeze(1) - 2 * AP @ AQ.transpose(1, 2)
        norm = sq.clamp(min=NORM_FLOOR**2).sqrt()
        margins = margin_from_distances(d_pos.unsqueeze(2), d_neg.unsqueeze(1), norm).reshape(-1)
        return d_pos, d_neg, margins

    def _loss(self, M, X, trip, parts=None):
        """``c * mean pull + (1 - c) * mean hinge`` under ``M`` (``c`` = ``regularization``)."""
        d_pos, d_neg, _ = self._parts(M) if parts is None else parts
        hinge = (1.0 + d_pos.unsqueeze(2) - d_neg.unsqueeze(1)).clamp(min=0).mean()
        c = self.regularization
        return c * d_pos.mean() + (1.0 - c) * hinge

    def _margins(self, M, X, trip):
        return self._parts(M)[2]

    def _objective(self, M, X, trip):
        parts = self._parts(M)
        loss = self._loss(M, X, trip, parts)
        if self.perturbation is not None:
            loss = loss + self.perturbation(parts[2])
        return loss


def make_lmnn_pl(regularization: float = 0.5, lam: float = 1.0, tau: float = 0.5, *, n_neighbors: int = 3,
                 n_impostors: int = 10, solver: str = "sgd", learn_rate: float = 50.0, max_iter: int = 300,
                 convergence_tol: float = 1e-4, dtype: str = "float64", random_state=None,
                 verbose: bool = False) -> Pipeline:
    """The published LMNN-PL recipe: z-score, L2-normalise rows, then :class:`LMNNPL`.

    Parameters
    ----------
    regularization : float, default=0.5
        Weight of the pull term (the push has ``1 - regularization``; the paper's ``mu``).
    lam : float, default=1.0
        Weight of the perturbation loss.
    tau : float, default=0.5
        Desired margin, l2, in the preprocessed space (rows have unit norm, so distances are
        at most 2). Tune it, with ``regularization`` and ``lam``, by cross-validation as the paper does.
    n_neighbors, n_impostors, solver, learn_rate, max_iter, convergence_tol, dtype, random_state, verbose
        As in :class:`LMNNPL`.

    Returns
    -------
    Pipeline
        ``scale`` (StandardScaler) -> ``normalize`` (Normalizer) -> ``lmnn`` (LMNNPL); its
        ``transform`` maps into the learned space. To classify and certify, put
        ``MahalanobisKNN`` after the two preprocessing steps, with ``metric=`` the fitted
        ``LMNNPL`` (or an unfitted one, which it fits): ``make_pipeline(StandardScaler(),
        Normalizer(), MahalanobisKNN(3, metric=LMNNPL(...)))``. Its radii are l2 distances in
        the preprocessed space.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> X, y = load_iris(return_X_y=True)
    >>> make_lmnn_pl(max_iter=20).fit(X, y).transform(X).shape
    (150, 4)
    """
    lmnn = LMNNPL(n_neighbors=n_neighbors, n_impostors=n_impostors, regularization=regularization,
                  perturbation=PerturbationLoss(tau=tau, weight=lam), solver=solver, learn_rate=learn_rate,
                  max_iter=max_iter, convergence_tol=convergence_tol, dtype=dtype, random_state=random_state,
                  verbose=verbose)
    return Pipeline([("scale", StandardScaler()), ("normalize", Normalizer()), ("lmnn", lmnn)])
