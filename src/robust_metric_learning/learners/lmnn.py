"""LMNN (Weinberger & Saul 2009) on the shared loop."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch

from .._validation import Interval, Options, validate_params
from ._init import INIT_OPTIONS, initial_components
from .base import PREPROCESSOR, RANDOM_STATE
from ..margin import (
    DEFAULT_MEMORY_BUDGET,
    class_neighbors,
    margin_from_distances,
    row_blocks,
)
from .triplet import PerturbationLoss, TripletLearner

__all__ = ["LMNN", "active_triplets"]

#: with ``resample_every > 1``, triplets whose hinge is within this much (squared-distance
#: units, like the margin) of becoming active are kept too, so few are missed between searches
_SLACK = 0.5

#: ``learn_rate="auto"``: Adam's step, at most ``_AUTO_LR``, and such that one epoch changes
#: ``L`` by at most ``_AUTO_LR_CHANGE`` in operator norm (step x n_features)
_AUTO_LR, _AUTO_LR_CHANGE = 0.03, 4.0


def active_triplets(Z: torch.Tensor, codes: torch.Tensor, targets: torch.Tensor, *, margin: float = 1.0,
                    slack: float = 0.0, memory_budget: int = DEFAULT_MEMORY_BUDGET):
    """LMNN's active impostor triplets in the transformed space ``Z = X L^T``.

    Every ``(i, j, l)`` with ``j`` in ``targets[i]``, ``codes[l] != codes[i]`` and
    ``||Z_i - Z_l||^2 < ||Z_i - Z_j||^2 + margin + slack`` (the hinge is active, or within
    ``slack`` of it). The tests run in float32, in row blocks within ``memory_budget`` bytes
    (no ``(n, n, k)`` array); the few too close to call in float32 are redone exactly in
    ``Z``'s dtype, so the result is the exact set.

    Parameters
    ----------
    Z : tensor of shape (n, r)
    codes : LongTensor of shape (n,)
    targets : LongTensor of shape (n, k)
    margin, slack : float
    memory_budget : int, default=512 MiB

    Returns
    -------
    a, p, q : LongTensor
        Anchors, target neighbours and impostors, ordered by anchor.
    """
    n, k = targets.shape
    Zs = Z.to(torch.float32)
    Zs_sq = (Zs * Zs).sum(1)
    # Bound on the float32 error of one comparison (two expanded distances, the rounding of Z to
    # float32 and of the sums; dot products err by at most r u ||z|| ||z'||, u = 2^-24). Tests
    # decided by more than this are certain; the few within it are redone exactly in Z's dtype.
    guard = (6 * Z.shape[1] + 32) * 2.0**-24 * float(Zs_sq.max()) if n else 0.0
    out_a, out_p, out_q = [], [], []
    for sl in row_blocks(n, (3 * k + 5) * n, memory_budget=memory_budget, itemsize=8):
        # ||z_i - z_l||^2 - ||z_i||^2: the anchor's own norm cancels in every comparison of a row
        D = torch.addmm(Zs_sq.unsqueeze(0), Zs[sl], Zs.T, alpha=-2.0)
        thr = D.gather(1, targets[sl]) + (margin + slack)  # (b, k)
        rows, cols = (D < thr.max(1, keepdim=True).values + guard).nonzero(as_tuple=True)
        other = codes[rows + sl.start] != codes[cols]  # few same-class points pass the first test
        rows, cols = rows[other], cols[other]
        gap = thr[rows] - D[rows, cols].unsqueeze(1)  # > 0: active
        hit, jj = (gap > -guard).nonzero(as_tuple=True)
        a, p, q = rows[hit] + sl.start, targets[rows[hit] + sl.start, jj], cols[hit]
        unsure = (gap[hit, jj] <= guard).nonzero(as_tuple=True)[0]
        if unsure.numel():
            za = Z[a[unsure]]
            exact = ((za - Z[q[unsure]]) ** 2).sum(1) < ((za - Z[p[unsure]]) ** 2).sum(1) + (margin + slack)
            keep = torch.ones_like(a, dtype=torch.bool)
            keep[unsure] = exact
            a, p, q = a[keep], p[keep], q[keep]
        out_a.append(a)
        out_p.append(p)
        out_q.append(q)
    if not out_a:
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty, empty
    return torch.cat(out_a), torch.cat(out_p), torch.cat(out_q)


class LMNN(TripletLearner):
    """Large Margin Nearest Neighbor (Weinberger & Saul, JMLR 2009), with metric-learn's parameters.

    Minimises, over ``L`` with ``d(a, b) = ||L (a - b)||^2``,

        [c * sum_{i, j} d(x_i, x_j) + (1 - c) * sum_{i, j, l} [1 + d(x_i, x_j) - d(x_i, x_l)]_+] / (n k)

    (``c`` = ``regularization``) over the ``k`` = ``n_neighbors`` target neighbours ``j`` of
    each ``i`` (its nearest same-class points under the Euclidean metric, fixed at the start)
    and every other-class ``l``. Dividing by the ``n k`` target pairs makes the step
    independent of the data size. Only the *active* triplets (hinge > 0) are kept: they are
    searched again in the transformed space every ``resample_every`` epochs, block by block
    (:func:`active_triplets`), so each epoch costs one ``n x n`` distance pass and the active
    triplets, never ``n x n x k``. With ``perturbation``, its loss over those active triplets'
    margins (averaged over them) is added. The margin is 1 in squared-distance units, so the
    scale of ``X`` matters: features in [0, 1] (as
    :func:`~robust_metric_learning.datasets.load_dataset` gives) suit the defaults.

    The parameters up to ``random_state`` are metric-learn's (``metric_learn.LMNN``), with its
    meanings; the defaults differ where stated, because the solver differs (Adam on the exact
    objective instead of metric-learn's gradient descent with step halving).

    Parameters
    ----------
    init : {"auto", "identity", "pca", "lda", "random"} or array of shape (n_components, n_features), \
default="auto"
        Starting ``L`` (see :func:`~robust_metric_learning.learners._init.initial_components`);
        "auto" is the identity whenever ``n_components`` is None.
    n_neighbors : int, default=3
        Target neighbours per point. Every class needs at least ``n_neighbors`` points, as in
        metric-learn; a point whose class has only ``n_neighbors`` (so ``n_neighbors - 1``
        others) takes itself as its last target, as metric-learn does: that target adds no
        pull, and its hinge keeps other-class points the margin away from the point itself.
    min_iter : int, default=0
        Never stop early before this many epochs (metric-learn: 50; ours stops only after the
        loss has stalled for 10 epochs, so no minimum is needed).
    max_iter : int, default=1000
        Epochs (digits stops after about 65; low-dimensional sets with many impostors at the
        identity take a few hundred).
    learn_rate : float or "auto", default="auto"
        Adam's step (metric-learn: 1e-7, the first step of its gradient descent, which it then
        adapts; Adam's step is on another scale). Adam moves every entry of ``L`` by about the
        step, so one epoch can change ``L`` by up to step x ``n_features`` in operator norm;
        "auto" keeps that at most 4: ``min(0.03, 4 / n_features)`` (0.03 up to 133 features,
        0.016 on 256 pixels, 0.0051 on 784, where 0.03 first overshoots and early stopping
        ends the fit above the start). Give a number with ``solver="sgd"``.
    regularization : float, default=0.5
        Weight of the pull term, in [0, 1]; the push (impostor) term has ``1 - regularization``.
    convergence_tol : float, default=1e-3
        Stop when the objective has not improved by ``convergence_tol`` (relative; metric-learn:
        absolute, between two iterations) for 10 epochs, and keep the iterate with the lowest
        objective; 0 runs every epoch and keeps the last. Not converging, or never going below
        the objective at the start (the steps diverge), raises ``ConvergenceWarning``.
    verbose : bool, default=False
        A progress bar with the loss (on a terminal).
    preprocessor : array of shape (n_points, n_features), callable or None, default=None
        ``X`` holds identifiers of points instead of points (see
        :class:`~robust_metric_learning.learners.MetricLearner`).
    n_components : int or None, default=None
        Rows of ``L`` (the dimension of the embedding); None keeps ``n_features``.
    random_state : int, RandomState, Generator or None, default=None
        Seeds ``init="random"`` and ``init="pca"`` (the optimisation itself is deterministic).
    perturbation : PerturbationLoss or None, default=None
        Added over the active triplets when given.
    solver : {"adam", "sgd"}, default="adam"
        One full-batch step per epoch, impostors searched before it.
    resample_every : int, default=1
        Search impostors every this many epochs. 1 makes the objective exact every epoch and
        is also the fastest on digits; more keeps the triplets within a slack of 0.5 of the
        margin in between, which are many more.
    dtype : {"float32", "float64"}, default="float64"
    memory_budget : int, default=512 MiB
        Bytes for one block of the impostor search.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        ``L``; ``M = L.T @ L``.
    n_iter_ : int

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> X, y = load_iris(return_X_y=True)
    >>> LMNN(n_neighbors=3, max_iter=20).fit(X, y).components_.shape
    (4, 4)
    """

    _parameter_constraints = {
        "init": [Options(*INIT_OPTIONS), np.ndarray, list],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "min_iter": [Interval(Integral, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "learn_rate": [Options("auto"), Interval(Real, 0, None, closed="neither")],
        "regularization": [Interval(Real, 0, 1, closed="both")],
        "convergence_tol": [Interval(Real, 0, None, closed="left")],
        "verbose": [bool],
        "preprocessor": PREPROCESSOR,
        "n_components": [None, Interval(Integral, 1, None, closed="left")],
        "random_state": RANDOM_STATE,
        "perturbation": [None, PerturbationLoss],
        "solver": [Options("adam", "sgd")],
        "resample_every": [Interval(Integral, 1, None, closed="left")],
        "dtype": [Options("float32", "float64")],
        "memory_budget": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, init: str | np.ndarray = "auto", n_neighbors: int = 3, min_iter: int = 0,
                 max_iter: int = 1000, learn_rate: float | str = "auto", regularization: float = 0.5,
                 convergence_tol: float = 1e-3, verbose: bool = False, preprocessor=None,
                 n_components: int | None = None, random_state=None, *,
                 perturbation: PerturbationLoss | None = None, solver: str = "adam", resample_every: int = 1,
                 dtype: str = "float64", memory_budget: int = DEFAULT_MEMORY_BUDGET):
        self.init = init
        self.n_neighbors = n_neighbors
        self.min_iter = min_iter
        self.max_iter = max_iter
        self.learn_rate = learn_rate
        self.regularization = regularization
        self.convergence_tol = convergence_tol
        self.verbose = verbose
        self.preprocessor = preprocessor
        self.n_components = n_components
        self.random_state = random_state
        self.perturbation = perturbation
        self.solver = solver
        self.resample_every = resample_every
        self.dtype = dtype
        self.memory_budget = memory_budget

    @property
    def _min_class_size(self) -> int:
        return 1  # checked in _prepare, with a message naming n_neighbors

    # -- set-up, once per fit ---------------------------------------------------------------

    def _prepare(self, X: torch.Tensor, codes: torch.Tensor) -> dict:
        """Checks that need the data, and the target neighbours (Euclidean, fixed)."""
        if self.perturbation is not None:
            validate_params(self.perturbation)
        k = self.n_neighbors
        counts = torch.bincount(codes)
        if int(counts.min()) < k:
            c = int(counts.argmin())
            raise ValueError(f"n_neighbors={k} target neighbours need at least {k} points in every class; "
                             f"class {self.classes_[c].tolist()!r} has {int(counts.min())}")
        targets = _targets(X, codes, k, self.memory_budget)
        # the pull term is linear in M: sum over target pairs of d_M = <M, S>, S the sum of the
        # pairs' outer products, accumulated over row blocks
        S = X.new_zeros((X.shape[1], X.shape[1]))
        for sl in row_blocks(len(codes), (k + 1) * X.shape[1], memory_budget=self.memory_budget):
            diff = (X[sl].unsqueeze(1) - X[targets[sl]]).reshape(-1, X.shape[1])
            S += diff.T @ diff
        return {"targets": targets, "pull": S}

    def _learning_rate(self, n_features: int) -> float:
        if isinstance(self.learn_rate, str):  # "auto"
            if self.solver != "adam":
                raise ValueError(f"learn_rate='auto' is a step for solver='adam'; give a number "
                                 f"for solver={self.solver!r}")
            return min(_AUTO_LR, _AUTO_LR_CHANGE / n_features)
        return self.learn_rate

    def _init_components(self, X: np.ndarray, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        init = self.init if isinstance(self.init, str) else np.asarray(self.init)
        return initial_components(init, X, codes, self.n_components, rng, owner=type(self).__name__)

    # -- what LMNN states ---------------------------------------------------------------------

    def _sample(self, X, codes, L, rng, cache):
        """The active impostor triplets under the current ``L``."""
        slack = 0.0 if self.resample_every == 1 else _SLACK
        return active_triplets(X @ L.T, codes, self._state["targets"], slack=slack,
                               memory_budget=self.memory_budget)

    def _loss(self, L, X, trip):
        """``[c pull + (1 - c) push] / (n k)``, ``c`` = ``regularization`` (squared distances under ``L``)."""
        a, p, q = trip
        pull = ((L @ self._state["pull"]) * L).sum()  # trace(L S L^T)
        Z = X @ L.T
        za = Z[a]
        push = (1.0 + ((za - Z[p]) ** 2).sum(1) - ((za - Z[q]) ** 2).sum(1)).clamp(min=0).sum()
        c = self.regularization
        return (c * pull + (1.0 - c) * push) / self._state["targets"].numel()

    def _margins(self, param, X, trip):
        """The margin (:func:`~robust_metric_learning.margin.margin`) of each triplet, from
        ``X M`` (n rows) instead of one ``d x d`` product per triplet."""
        a, p, q = trip
        XM = X @ self._metric(param)  # row i is (M x_i)^T: M is symmetric
        return margin_from_distances(_sq_dist(X, XM, a, p), _sq_dist(X, XM, a, q),
                                     torch.linalg.vector_norm(XM[p] - XM[q], dim=1))


def _targets(X: torch.Tensor, codes: torch.Tensor, k: int, memory_budget: int) -> torch.Tensor:
    """The ``k`` nearest same-class points of each row (Euclidean), shape (n, k). A point of a
    class of at most ``k`` points gets its ``n_c - 1`` class mates, nearest first, then itself."""
    counts = torch.bincount(codes)
    if int(counts.min()) > k:
        return class_neighbors(X, codes, k, 0, memory_budget=memory_budget)[0]
    n = len(codes)
    targets = torch.arange(n).unsqueeze(1).repeat(1, k)
    big = torch.nonzero(counts[codes] > k).squeeze(1)
    if big.numel():
        sub = torch.unique(codes[big], return_inverse=True)[1]
        targets[big] = big[class_neighbors(X[big], sub, k, 0, memory_budget=memory_budget)[0]]
    for c in torch.nonzero((counts > 0) & (counts <= k)).squeeze(1).tolist():
        members = torch.nonzero(codes == c).squeeze(1)
        m = members.numel()
        if m > 1:
            D = torch.cdist(X[members], X[members])
            D.fill_diagonal_(float("inf"))
            targets[members, : m - 1] = members[torch.argsort(D, dim=1, stable=True)[:, : m - 1]]
    return targets


def _sq_dist(X: torch.Tensor, XM: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """``d_M(x_i, x_j) = (x_i - x_j) . M (x_i - x_j)`` for index pairs, given ``XM = X M``."""
    return ((X[i] - X[j]) * (XM[i] - XM[j])).sum(1)
