"""LMNN (Weinberger & Saul 2009) and LMNN-PL (Yang et al., TNNLS 2022) on the shared loop."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from .._validation import Interval, Options, validate_params
from ..margin import DEFAULT_MEMORY_BUDGET, class_neighbors, margin, pairwise_sq_distances, row_blocks
from ._optim import minimize
from .triplet import _DTYPES, PerturbationLoss, TripletLearner

__all__ = ["LMNN", "LMNNPL", "active_triplets", "make_lmnn_pl"]

#: with ``resample_every > 1``, triplets whose hinge is within this much (squared-distance
#: units, like the margin) of becoming active are kept too, so few are missed between searches
_SLACK = 0.5


def active_triplets(Z: torch.Tensor, codes: torch.Tensor, targets: torch.Tensor, *, margin: float = 1.0,
                    slack: float = 0.0, memory_budget: int = DEFAULT_MEMORY_BUDGET):
    """LMNN's active impostor triplets in the transformed space ``Z = X L^T``.

    Every ``(i, j, l)`` with ``j`` in ``targets[i]``, ``codes[l] != codes[i]`` and
    ``||Z_i - Z_l||^2 < ||Z_i - Z_j||^2 + margin + slack`` (the hinge is active, or within
    ``slack`` of it). Rows are processed in blocks within ``memory_budget`` bytes; no
    ``(n, n, k)`` array is formed.

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
    Z_sq = (Z * Z).sum(1)
    out_a, out_p, out_q = [], [], []
    for sl in row_blocks(n, (k + 5) * n, memory_budget=memory_budget, itemsize=max(Z.element_size(), 8)):
        D = pairwise_sq_distances(Z[sl], Z, A_sq=Z_sq[sl], B_sq=Z_sq)
        thr = D.gather(1, targets[sl]) + (margin + slack)  # (b, k)
        rows, cols = (D < thr.max(1, keepdim=True).values).nonzero(as_tuple=True)
        other = codes[rows + sl.start] != codes[cols]  # few same-class points pass the first test
        rows, cols = rows[other], cols[other]
        hit, jj = (D[rows, cols].unsqueeze(1) < thr[rows]).nonzero(as_tuple=True)
        a = rows[hit] + sl.start
        out_a.append(a)
        out_p.append(targets[a, jj])
        out_q.append(cols[hit])
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
    ``perturbation``, its loss over those active triplets' margins is added.

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
    learning_rate : float, default=0.02
    max_iter : int, default=200
        Epochs.
    tol : float, default=1e-4
        Stop when the objective has not improved by ``tol`` (relative) for 10 epochs; 0 runs
        every epoch. Not converging raises ``ConvergenceWarning``.
    resample_every : int, default=1
        Search impostors every this many epochs (1: the objective is exact every epoch; more
        keeps triplets within a slack of 0.5 of the margin in between).
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
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "resample_every": [Interval(Integral, 1, None, closed="left")],
        "dtype": [Options("float32", "float64")],
        "memory_budget": [Interval(Integral, 1, None, closed="left")],
        "random_state": [None, Interval(Integral, 0, None, closed="left")],
        "verbose": [bool],
    }

    def __init__(self, k: int = 3, *, mu: float = 0.5, perturbation: PerturbationLoss | None = None,
                 init: str | np.ndarray = "identity", solver: str = "adam", learning_rate: float = 0.02,
                 max_iter: int = 200, tol: float = 1e-4, resample_every: int = 1, dtype: str = "float64",
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
        return {"targets": targets}

    def _init_components(self, X: np.ndarray) -> np.ndarray:
        if isinstance(self.init, str):
            return np.eye(X.shape[1])
        L = np.asarray(self.init, dtype=np.float64)
        if L.ndim != 2 or L.shape[1] != X.shape[1] or not np.isfinite(L).all():
            raise ValueError(f"init must be 'identity' or a finite (r, {X.shape[1]}) matrix L; "
                             f"got an array of shape {L.shape}")
        return L

    # -- the parametrisation (L here; M in LMNNPL) -------------------------------------------

    def _metric(self, param: torch.Tensor) -> torch.Tensor:
        """``M`` from the optimised parameter."""
        return param.T @ param

    def _components(self, param: np.ndarray) -> np.ndarray:
        """``L`` from the optimised parameter."""
        return param

    _project = None  # projection after each step (none: L is unconstrained)

    # -- what LMNN states ---------------------------------------------------------------------

    def _sample(self, X, codes, L, rng):
        """The active impostor triplets under the current ``L``."""
        slack = 0.0 if self.resample_every == 1 else _SLACK
        return active_triplets(X @ L.T, codes, self._state["targets"], slack=slack,
                               memory_budget=self.memory_budget)

    def _loss(self, L, X, trip):
        """``[(1 - mu) pull + mu push] / (n k)`` (squared distances under ``L``)."""
        a, p, q = trip
        targets = self._state["targets"]
        Z = X @ L.T
        pull = ((Z.unsqueeze(1) - Z[targets]) ** 2).sum()
        za = Z[a]
        push = (1.0 + ((za - Z[p]) ** 2).sum(1) - ((za - Z[q]) ** 2).sum(1)).clamp(min=0).sum()
        return ((1.0 - self.mu) * pull + self.mu * push) / targets.numel()

    def _objective(self, param, X, trip):
        loss = self._loss(param, X, trip)
        if self.perturbation is not None and trip[0].numel():
            a, p, q = trip
            loss = loss + self.perturbation(margin(X[a], X[p], X[q], self._metric(param)))
        return loss

    # -- the shared loop, with the set-up and projection hooks ---------------------------------

    def _fit(self, X, y, rng):
        dtype = _DTYPES[self.dtype]
        Xt = torch.tensor(np.array(X), dtype=dtype)  # own copy: X may be a read-only memmap
        codes = torch.as_tensor(y)
        self._state = self._prepare(Xt, codes)
        state, every = {}, self.resample_every

        def on_epoch(param, epoch):
            if epoch % every == 0 or "trip" not in state:
                state["trip"] = self._sample(Xt, codes, param, rng)

        def objective(param, epoch):
            return self._objective(param, Xt, state["trip"])

        try:
            param, n_iter = minimize(objective, self._init_components(X), solver=self.solver,
                                     learning_rate=self.learning_rate, max_iter=self.max_iter, tol=self.tol,
                                     on_epoch=on_epoch, project=self._project, dtype=dtype,
                                     verbose=self.verbose, desc=type(self).__name__)
        finally:
            del self._state
        return self._components(param), n_iter


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
    both, and put :class:`~robust_metric_learning.neighbors.MahalanobisKNN` after it.

    Parameters
    ----------
    k : int, default=3
    n_impostors : int, default=10
    mu : float, default=0.5
        Weight of the pull term, in [0, 1].
    perturbation : PerturbationLoss or None, default=None
    solver : {"adam", "sgd"}, default="adam"
    learning_rate : float, default=0.01
    max_iter : int, default=200
    tol : float, default=1e-4
    dtype, memory_budget, random_state, verbose
        As in :class:`LMNN`.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> X, y = load_iris(return_X_y=True)
    >>> pl = PerturbationLoss(tau=0.1, weight=1.0)
    >>> LMNNPL(perturbation=pl, max_iter=20).fit(X, y).components_.shape
    (4, 4)
    """

    _parameter_constraints = {
        **{k: v for k, v in LMNN._parameter_constraints.items() if k not in ("init", "resample_every")},
        "n_impostors": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, k: int = 3, n_impostors: int = 10, *, mu: float = 0.5,
                 perturbation: PerturbationLoss | None = None, solver: str = "adam",
                 learning_rate: float = 0.01, max_iter: int = 200, tol: float = 1e-4, dtype: str = "float64",
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
        targets, other = class_neighbors(X, codes, self.k, self.n_impostors, memory_budget=self.memory_budget)
        n, k, v = len(codes), self.k, self.n_impostors
        a = torch.arange(n).repeat_interleave(k * v)
        p = targets.repeat_interleave(v, dim=1).reshape(-1)
        q = other.repeat(1, k).reshape(-1)
        diff = X.unsqueeze(1) - X[targets]  # (n, k, d)
        pull = torch.einsum("nki,nkj->ij", diff, diff) / (n * k)  # mean of the pull pairs' outer products
        state.update(targets=targets, trip=(a, p, q), pull=pull)
        return state

    def _init_components(self, X):
        return np.eye(X.shape[1])

    def _metric(self, param):
        return param

    def _components(self, param):
        w, V = np.linalg.eigh((param + param.T) / 2)
        return (V * np.sqrt(np.clip(w, 0.0, None))).T

    def _project(self, param):
        return _psd_projection(param)

    def _sample(self, X, codes, M, rng):
        return self._state["trip"]

    def _loss(self, M, X, trip):
        """``mu * mean pull + (1 - mu) * mean hinge`` under ``M``."""
        a, p, q = trip
        dp, dq = X[a] - X[p], X[a] - X[q]
        hinge = (1.0 + ((dp @ M) * dp).sum(1) - ((dq @ M) * dq).sum(1)).clamp(min=0).mean()
        return self.mu * (M * self._state["pull"]).sum() + (1.0 - self.mu) * hinge


def make_lmnn_pl(mu: float = 0.5, lam: float = 1.0, tau: float = 0.1, *, k: int = 3, n_impostors: int = 10,
                 solver: str = "adam", learning_rate: float = 0.01, max_iter: int = 200, tol: float = 1e-4,
                 dtype: str = "float64", random_state: int | None = None, verbose: bool = False) -> Pipeline:
    """The published LMNN-PL recipe: z-score, L2-normalise rows, then :class:`LMNNPL`.

    Parameters
    ----------
    mu : float, default=0.5
        Weight of the pull term (the push has ``1 - mu``).
    lam : float, default=1.0
        Weight of the perturbation loss.
    tau : float, default=0.1
        Desired margin, l2, in the preprocessed space (rows have unit norm).
    k, n_impostors, solver, learning_rate, max_iter, tol, dtype, random_state, verbose
        As in :class:`LMNNPL`.

    Returns
    -------
    Pipeline
        ``scale`` (StandardScaler) -> ``normalize`` (Normalizer) -> ``lmnn`` (LMNNPL). Its
        ``transform`` maps into the learned space; for classification append a K-NN, e.g.
        ``make_pipeline(make_lmnn_pl(), KNeighborsClassifier(3))``, or ``MahalanobisKNN``
        after the two preprocessing steps with ``metric=`` the fitted ``LMNNPL``.

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
