"""LMNN (Weinberger & Saul 2009) and LMNN-PL (Yang et al., TNNLS 2022) on the shared loop."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from .._validation import Interval, Options, validate_params
from ..margin import (
    DEFAULT_MEMORY_BUDGET,
    NORM_FLOOR,
    class_neighbors,
    components_from_metric,
    margin_from_distances,
    row_blocks,
)
from .triplet import PerturbationLoss, TripletLearner

__all__ = ["LMNN", "LMNNPL", "active_triplets", "make_lmnn_pl"]

#: with ``resample_every > 1``, triplets whose hinge is within this much (squared-distance
#: units, like the margin) of becoming active are kept too, so few are missed between searches
_SLACK = 0.5

#: ``learning_rate="auto"``: Adam's step, at most ``_AUTO_LR``, and such that one epoch changes
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
    """Large Margin Nearest Neighbor (Weinberger & Saul, JMLR 2009).

    Minimises, over ``L`` with ``d(a, b) = ||L (a - b)||^2``,

        [(1 - mu) * sum_{i, j} d(x_i, x_j) + mu * sum_{i, j, l} [1 + d(x_i, x_j) - d(x_i, x_l)]_+] / (n k)

    over the ``k`` target neighbours ``j`` of each ``i`` (its nearest same-class points under
    the Euclidean metric, fixed at the start) and every other-class ``l``. Dividing by the
    ``n k`` target pairs makes the learning rate independent of the data size. Only the
    *active* triplets (hinge > 0) are kept: they are searched again in the transformed space
    every ``resample_every`` epochs, block by block (:func:`active_triplets`), so each epoch
    costs one ``n x n`` distance pass and the active triplets, never ``n x n x k``. With
    ``perturbation``, its loss over those active triplets' margins (averaged over them) is
    added. The margin is 1 in squared-distance units, so the scale of ``X`` matters: features
    in [0, 1] (as :func:`~robust_metric_learning.datasets.load_dataset` gives) suit the
    defaults.

    Parameters
    ----------
    k : int, default=3
        Target neighbours per point; every class needs at least ``k + 1`` points.
    mu : float, default=0.5
        Weight of the push (impostor) term, in [0, 1]; the pull term has ``1 - mu``.
    perturbation : PerturbationLoss or None, default=None
        Added over the active triplets when given.
    init : "identity" or array of shape (r, n_features), default="identity"
        Starting ``L``.
    solver : {"adam", "sgd"}, default="adam"
        One full-batch step per epoch, impostors searched before it.
    learning_rate : float or "auto", default="auto"
        Adam's step. Adam moves every entry of ``L`` by about the step, so one epoch can
        change ``L`` by up to step x ``n_features`` in operator norm; "auto" keeps that at
        most 4: ``min(0.03, 4 / n_features)`` (0.03 up to 133 features, 0.016 on 256 pixels,
        0.0051 on 784, where 0.03 first overshoots and early stopping ends the fit above the
        start). Give a number with ``solver="sgd"``.
    max_iter : int, default=1000
        Epochs (digits stops after about 65; low-dimensional sets with many impostors at the
        identity take a few hundred).
    tol : float, default=1e-3
        Stop when the objective has not improved by ``tol`` (relative) for 10 epochs, and keep
        the iterate with the lowest objective; 0 runs every epoch and keeps the last. Not
        converging, or never going below the objective at the start (the steps diverge),
        raises ``ConvergenceWarning``.
    resample_every : int, default=1
        Search impostors every this many epochs. 1 makes the objective exact every epoch and
        is also the fastest on digits; more keeps the triplets within a slack of 0.5 of the
        margin in between, which are many more.
    dtype : {"float32", "float64"}, default="float64"
    memory_budget : int, default=512 MiB
        Bytes for one block of the impostor search.
    random_state : int or None, default=None
        Unused (the method is deterministic); kept for a uniform interface.
    verbose : bool, default=False

    Attributes
    ----------
    components_ : ndarray of shape (r, n_features)
        ``L``; ``M = L.T @ L``.
    n_iter_ : int

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> X, y = load_iris(return_X_y=True)
    >>> LMNN(max_iter=20).fit(X, y).components_.shape
    (4, 4)
    """

    _parameter_constraints = {
        "k": [Interval(Integral, 1, None, closed="left")],
        "mu": [Interval(Real, 0, 1, closed="both")],
        "perturbation": [None, PerturbationLoss],
        "init": [Options("identity"), np.ndarray, list],
        "solver": [Options("adam", "sgd")],
        "learning_rate": [Options("auto"), Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "resample_every": [Interval(Integral, 1, None, closed="left")],
        "dtype": [Options("float32", "float64")],
        "memory_budget": [Interval(Integral, 1, None, closed="left")],
        "random_state": [None, Interval(Integral, 0, None, closed="left")],
        "verbose": [bool],
    }

    def __init__(self, k: int = 3, *, mu: float = 0.5, perturbation: PerturbationLoss | None = None,
                 init: str | np.ndarray = "identity", solver: str = "adam", learning_rate: float | str = "auto",
                 max_iter: int = 1000, tol: float = 1e-3, resample_every: int = 1, dtype: str = "float64",
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, random_state: int | None = None,
                 verbose: bool = False):
        self.k = k
        self.mu = mu
        self.perturbation = perturbation
        self.init = init
        self.solver = solver
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.tol = tol
        self.resample_every = resample_every
        self.dtype = dtype
        self.memory_budget = memory_budget
        self.random_state = random_state
        self.verbose = verbose

    @property
    def _min_class_size(self) -> int:
        return 1  # checked in _prepare, with a message naming k

    # -- set-up, once per fit ---------------------------------------------------------------

    def _prepare(self, X: torch.Tensor, codes: torch.Tensor) -> dict:
        """Checks that need the data, and the target neighbours (Euclidean, fixed)."""
        if self.perturbation is not None:
            validate_params(self.perturbation)
        counts = torch.bincount(codes)
        if int(counts.min()) < self.k + 1:
            c = int(counts.argmin())
            raise ValueError(f"k={self.k} target neighbours need at least {self.k + 1} points in every class; "
                             f"class {self.classes_[c].tolist()!r} has {int(counts.min())}")
        targets, _ = class_neighbors(X, codes, self.k, 0, memory_budget=self.memory_budget)
        # the pull term is linear in M: sum over target pairs of d_M = <M, S>, S the sum of the
        # pairs' outer products, accumulated over row blocks
        S = X.new_zeros((X.shape[1], X.shape[1]))
        for sl in row_blocks(len(codes), (self.k + 1) * X.shape[1], memory_budget=self.memory_budget):
            diff = (X[sl].unsqueeze(1) - X[targets[sl]]).reshape(-1, X.shape[1])
            S += diff.T @ diff
        return {"targets": targets, "pull": S}

    def _learning_rate(self, n_features: int) -> float:
        if isinstance(self.learning_rate, str):  # "auto"
            if self.solver != "adam":
                raise ValueError(f"learning_rate='auto' is a step for solver='adam'; give a number "
                                 f"for solver={self.solver!r}")
            return min(_AUTO_LR, _AUTO_LR_CHANGE / n_features)
        return self.learning_rate

    def _init_components(self, X: np.ndarray) -> np.ndarray:
        if isinstance(self.init, str):
            return np.eye(X.shape[1])
        L = np.asarray(self.init, dtype=np.float64)
        if L.ndim != 2 or L.shape[1] != X.shape[1] or not np.isfinite(L).all():
            raise ValueError(f"init must be 'identity' or a finite (r, {X.shape[1]}) matrix L; "
                             f"got an array of shape {L.shape}")
        return L

    # -- what LMNN states ---------------------------------------------------------------------

    def _sample(self, X, codes, L, rng, cache):
        """The active impostor triplets under the current ``L``."""
        slack = 0.0 if self.resample_every == 1 else _SLACK
        return active_triplets(X @ L.T, codes, self._state["targets"], slack=slack,
                               memory_budget=self.memory_budget)

    def _loss(self, L, X, trip):
        """``[(1 - mu) pull + mu push] / (n k)`` (squared distances under ``L``)."""
        a, p, q = trip
        pull = ((L @ self._state["pull"]) * L).sum()  # trace(L S L^T)
        Z = X @ L.T
        za = Z[a]
        push = (1.0 + ((za - Z[p]) ** 2).sum(1) - ((za - Z[q]) ** 2).sum(1)).clamp(min=0).sum()
        return ((1.0 - self.mu) * pull + self.mu * push) / self._state["targets"].numel()

    def _margins(self, param, X, trip):
        """The margin (:func:`~robust_metric_learning.margin.margin`) of each triplet, from
        ``X M`` (n rows) instead of one ``d x d`` product per triplet."""
        a, p, q = trip
        XM = X @ self._metric(param)  # row i is (M x_i)^T: M is symmetric
        return margin_from_distances(_sq_dist(X, XM, a, p), _sq_dist(X, XM, a, q),
                                     torch.linalg.vector_norm(XM[p] - XM[q], dim=1))


def _sq_dist(X: torch.Tensor, XM: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """``d_M(x_i, x_j) = (x_i - x_j) . M (x_i - x_j)`` for index pairs, given ``XM = X M``."""
    return ((X[i] - X[j]) * (XM[i] - XM[j])).sum(1)


def _psd_projection(M: torch.Tensor) -> torch.Tensor:
    """The nearest (Frobenius) PSD matrix: negative eigenvalues of ``(M + M^T) / 2`` set to 0."""
    w, V = torch.linalg.eigh((M + M.T) / 2)
    return (V * w.clamp(min=0)) @ V.T


class LMNNPL(LMNN):
    """LMNN with the perturbation loss, as published (Yang et al., TNNLS 2022).

    Objective over fixed triplets: each point's ``k`` nearest same-class (target) and
    ``n_impostors`` nearest other-class points under the Euclidean metric, all
    ``k * n_impostors`` combinations, chosen once:

        mu * mean pull + (1 - mu) * mean [1 + d(x_i, x_j) - d(x_i, x_l)]_+ + PL

    with the means over target pairs and over triplets, and ``PL`` the
    :class:`PerturbationLoss` (``weight`` = lambda) of every triplet. Note that ``mu`` weights
    the *pull* here, as in the LMNN-PL paper, unlike :class:`LMNN` where it weights the push.
    The parameter is ``M`` itself (projected gradient from the identity): after each step
    ``M`` is projected onto the PSD cone. ``components_`` is a factor ``L`` with
    ``M = L.T @ L``. Without ``perturbation`` this is the paper's LMNN baseline.

    The published recipe also z-scores the features and L2-normalises the rows; that is not
    linear, so it cannot be folded into ``L``: use :func:`make_lmnn_pl`, a pipeline that does
    both, and classify with :class:`~robust_metric_learning.neighbors.MahalanobisKNN` after the
    same two steps.

    Parameters
    ----------
    k : int, default=3
    n_impostors : int, default=10
    mu : float, default=0.5
        Weight of the pull term, in [0, 1].
    perturbation : PerturbationLoss or None, default=None
    solver : {"sgd", "adam"}, default="sgd"
        "sgd" is the published projected gradient descent. Adam with the projection does not
        settle on this piecewise-linear objective (it drifts back up after a few dozen epochs).
    learning_rate : float, default=50.0
        Step on ``M``. Large because the objective is a mean over unit-norm rows (the
        preprocessing of :func:`make_lmnn_pl`), so its gradient is small; scale it down for
        data with larger distances.
    max_iter : int, default=300
    tol : float, default=1e-4
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
        **{k: v for k, v in LMNN._parameter_constraints.items() if k not in ("init", "resample_every")},
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "n_impostors": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, k: int = 3, n_impostors: int = 10, *, mu: float = 0.5,
                 perturbation: PerturbationLoss | None = None, solver: str = "sgd",
                 learning_rate: float = 50.0, max_iter: int = 300, tol: float = 1e-4, dtype: str = "float64",
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, random_state: int | None = None,
                 verbose: bool = False):
        self.k = k
        self.n_impostors = n_impostors
        self.mu = mu
        self.perturbation = perturbation
        self.solver = solver
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.tol = tol
        self.dtype = dtype
        self.memory_budget = memory_budget
        self.random_state = random_state
        self.verbose = verbose

    resample_every = 1  # the triplets are fixed; "re-sampling" returns them again

    def _prepare(self, X, codes):
        state = super()._prepare(X, codes)
        n_other = int(len(codes) - torch.bincount(codes).max())
        if self.n_impostors > n_other:
            raise ValueError(f"n_impostors={self.n_impostors} is larger than the {n_other} points "
                             f"outside the largest class")
        targets, impostors = class_neighbors(X, codes, self.k, self.n_impostors, memory_budget=self.memory_budget)
        n, k, v = len(codes), self.k, self.n_impostors
        a = torch.arange(n).repeat_interleave(k * v)
        p = targets.repeat_interleave(v, dim=1).reshape(-1)
        q = impostors.repeat(1, k).reshape(-1)
        # the triplets are (i, targets[i, j], impostors[i, l]) in (i, j, l) order; the loss works on
        # the anchor differences, (n, k, d) and (n, v, d), not on n k v rows of d values
        state.update(targets=targets, trip=(a, p, q), diff_pos=X.unsqueeze(1) - X[targets],
                     diff_neg=X.unsqueeze(1) - X[impostors])
        return state

    def _init_components(self, X):
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
        """``mu * mean pull + (1 - mu) * mean hinge`` under ``M``."""
        d_pos, d_neg, _ = self._parts(M) if parts is None else parts
        hinge = (1.0 + d_pos.unsqueeze(2) - d_neg.unsqueeze(1)).clamp(min=0).mean()
        return self.mu * d_pos.mean() + (1.0 - self.mu) * hinge

    def _margins(self, M, X, trip):
        return self._parts(M)[2]

    def _objective(self, M, X, trip):
        parts = self._parts(M)
        loss = self._loss(M, X, trip, parts)
        if self.perturbation is not None:
            loss = loss + self.perturbation(parts[2])
        return loss


def make_lmnn_pl(mu: float = 0.5, lam: float = 1.0, tau: float = 0.5, *, k: int = 3, n_impostors: int = 10,
                 solver: str = "sgd", learning_rate: float = 50.0, max_iter: int = 300, tol: float = 1e-4,
                 dtype: str = "float64", random_state: int | None = None, verbose: bool = False) -> Pipeline:
    """The published LMNN-PL recipe: z-score, L2-normalise rows, then :class:`LMNNPL`.

    Parameters
    ----------
    mu : float, default=0.5
        Weight of the pull term (the push has ``1 - mu``).
    lam : float, default=1.0
        Weight of the perturbation loss.
    tau : float, default=0.5
        Desired margin, l2, in the preprocessed space (rows have unit norm, so distances are
        at most 2). Tune it, with ``mu`` and ``lam``, by cross-validation as the paper does.
    k, n_impostors, solver, learning_rate, max_iter, tol, dtype, random_state, verbose
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
    lmnn = LMNNPL(k=k, n_impostors=n_impostors, mu=mu, perturbation=PerturbationLoss(tau=tau, weight=lam),
                  solver=solver, learning_rate=learning_rate, max_iter=max_iter, tol=tol, dtype=dtype,
                  random_state=random_state, verbose=verbose)
    return Pipeline([("scale", StandardScaler()), ("normalize", Normalizer()), ("lmnn", lmnn)])
