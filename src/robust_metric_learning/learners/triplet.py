"""Triplet learners on the shared optimisation loop, and the perturbation loss (the margin is
:func:`robust_metric_learning.margin.margin`)."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator

from .._validation import Interval, Options, validate_params
from ..margin import DEFAULT_MEMORY_BUDGET, class_neighbors, margin
from ._optim import minimize
from .base import RANDOM_STATE, MetricLearner

__all__ = ["PerturbationLoss", "TripletLearner"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class PerturbationLoss(BaseEstimator):
    """Perturbation loss of a triplet margin (TNNLS 2022).

    Per triplet: ``[tau^2 - margin^2]_+`` when ``margin >= 0`` and ``tau^2`` when the triplet is
    violated (``margin < 0``); averaged and multiplied by ``weight``. It pushes every triplet's
    decision boundary at least ``tau`` (l2, input space) away from its anchor.

    Parameters
    ----------
    tau : float, default=1.0
        Target margin, > 0, in input-space l2 units.
    weight : float, default=1.0
        lambda, >= 0.

    Examples
    --------
    >>> import torch
    >>> PerturbationLoss(tau=1.0)(torch.tensor([0.5, 2.0, -1.0]))
    tensor(0.5833)
    """

    _parameter_constraints = {
        "tau": [Interval(Real, 0, None, closed="neither")],
        "weight": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, tau: float = 1.0, weight: float = 1.0):
        self.tau = tau
        self.weight = weight

    def per_triplet(self, margins: torch.Tensor) -> torch.Tensor:
        """The loss of each triplet (before averaging and weighting)."""
        validate_params(self)
        t2 = float(self.tau) ** 2
        return torch.where(margins >= 0, (t2 - margins**2).clamp(min=0.0), torch.full_like(margins, t2))

    def __call__(self, margins: torch.Tensor) -> torch.Tensor:
        if margins.numel() == 0:
            return margins.sum()  # zero, still attached to the graph
        return float(self.weight) * self.per_triplet(margins).mean()


class TripletLearner(MetricLearner):
    """Learn ``L`` from triplets (anchor, same-class, other-class) on the shared loop.

    The default objective is the hinge ``[margin + d(a, p) - d(a, n)]_+`` over the ``k_same``
    nearest same-class × ``k_other`` nearest other-class points of each anchor under the
    current metric, re-sampled every ``resample_every`` epochs; with ``perturbation`` the
    :class:`PerturbationLoss` of every triplet's margin is added. Subclasses state their own
    ``_sample`` and ``_loss``.

    Parameters
    ----------
    k_same : int, default=3
    k_other : int, default=10
    margin : float, default=1.0
        Hinge margin, in squared-distance units.
    perturbation : PerturbationLoss or None, default=None
    solver : {"adam", "lbfgs", "sgd"}, default="adam"
    learn_rate : float, default=1e-2
        The optimiser's step (metric-learn's name for it).
    max_iter : int, default=200
        Epochs.
    convergence_tol : float, default=0.0
        Relative early-stopping tolerance (0: run every epoch).
    resample_every : int, default=1
        Re-sample triplets every this many epochs.
    dtype : {"float32", "float64"}, default="float64"
    memory_budget : int, default=512 MiB
    random_state : int, RandomState, Generator or None
    verbose : bool, default=False
    """

    _parameter_constraints = {
        "k_same": [Interval(Integral, 1, None, closed="left")],
        "k_other": [Interval(Integral, 1, None, closed="left")],
        "margin": [Interval(Real, 0, None, closed="left")],
        "perturbation": [None, PerturbationLoss],
        "solver": [Options("adam", "lbfgs", "sgd")],
        "learn_rate": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "convergence_tol": [Interval(Real, 0, None, closed="left")],
        "resample_every": [Interval(Integral, 1, None, closed="left")],
        "dtype": [Options("float32", "float64")],
        "memory_budget": [Interval(Integral, 1, None, closed="left")],
        "random_state": RANDOM_STATE,
        "verbose": [bool],
    }

    def __init__(self, k_same: int = 3, k_other: int = 10, *, margin: float = 1.0,
                 perturbation: PerturbationLoss | None = None, solver: str = "adam",
                 learn_rate: float = 1e-2, max_iter: int = 200, convergence_tol: float = 0.0,
                 resample_every: int = 1, dtype: str = "float64",
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, random_state: int | None = None,
                 verbose: bool = False):
        self.k_same = k_same
        self.k_other = k_other
        self.margin = margin
        self.perturbation = perturbation
        self.solver = solver
        self.learn_rate = learn_rate
        self.max_iter = max_iter
        self.convergence_tol = convergence_tol
        self.resample_every = resample_every
        self.dtype = dtype
        self.memory_budget = memory_budget
        self.random_state = random_state
        self.verbose = verbose

    @property
    def _min_class_size(self) -> int:
        return self.k_same + 1

    # -- what a subclass states ------------------------------------------------------

    def _init_components(self, X: np.ndarray, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.eye(X.shape[1])

    def _sample(self, X: torch.Tensor, codes: torch.Tensor, L: torch.Tensor, rng: np.random.Generator,
                cache: dict):
        """Triplet indices ``(a, p, n)`` under the current ``L`` (default: every anchor with
        each of its ``k_same`` nearest same-class and ``k_other`` nearest other-class points)."""
        same, other = class_neighbors(X @ L.T, codes, self.k_same, self.k_other, memory_budget=self.memory_budget)
        n = X.shape[0]
        a = torch.arange(n).repeat_interleave(self.k_same * self.k_other)
        p = same.repeat_interleave(self.k_other, dim=1).reshape(-1)
        q = other.repeat(1, self.k_same).reshape(-1)
        return a, p, q

    def _loss(self, L: torch.Tensor, X: torch.Tensor, trip) -> torch.Tensor:
        """Mean hinge ``[margin + d(a, p) - d(a, n)]_+`` (squared distances under ``L``)."""
        a, p, n = trip
        Za, Zp, Zn = X[a] @ L.T, X[p] @ L.T, X[n] @ L.T
        d_ap = ((Za - Zp) ** 2).sum(1)
        d_an = ((Za - Zn) ** 2).sum(1)
        return (self.margin + d_ap - d_an).clamp(min=0).mean()

    # -- the parametrisation (L; a subclass may optimise M itself) -----------------------

    def _prepare(self, X: torch.Tensor, codes: torch.Tensor) -> dict:
        """Data-dependent set-up, once per fit (kept as ``self._state`` during the fit)."""
        return {}

    def _metric(self, param: torch.Tensor) -> torch.Tensor:
        """``M`` from the optimised parameter (here ``L``)."""
        return param.T @ param

    def _components(self, param: np.ndarray) -> np.ndarray:
        """``L`` from the optimised parameter."""
        return param

    _project = None  # applied after each step (None: the parameter is unconstrained)

    # -- the shared fit ------------------------------------------------------------------

    def _margins(self, param: torch.Tensor, X: torch.Tensor, trip) -> torch.Tensor:
        """The margin of each triplet under the current metric."""
        a, p, n = trip
        return margin(X[a], X[p], X[n], self._metric(param))

    def _learning_rate(self, n_features: int) -> float:
        """The step the optimiser takes (subclasses resolve an ``"auto"`` setting here)."""
        return self.learn_rate

    def _logger(self, state: dict, n_features: int) -> "_EpochLog":
        return _EpochLog(type(self).__name__, state, self._learning_rate(n_features))

    def _objective(self, param: torch.Tensor, X: torch.Tensor, trip) -> torch.Tensor:
        loss = self._loss(param, X, trip)
        if self.perturbation is not None and trip[0].numel():
            loss = loss + self.perturbation(self._margins(param, X, trip))
        return loss

    def _fit(self, X, y, rng):
        dtype = _DTYPES[self.dtype]
        Xt = torch.tensor(np.array(X), dtype=dtype)  # own copy: X may be a read-only memmap
        codes = torch.as_tensor(y)
        self._state = self._prepare(Xt, codes)
        state: dict = {}
        cache: dict = {}  # for subclasses that keep search state between epochs
        every = self.resample_every

        def on_epoch(param, epoch):
            if epoch % every == 0 or "trip" not in state:
                state["trip"] = self._sample(Xt, codes, param, rng, cache)

        def objective(param, epoch):
            return self._objective(param, Xt, state["trip"])

        log = self._logger(state, X.shape[1]) if self.verbose else None
        try:
            param, n_iter = minimize(objective, self._init_components(X, y, rng), solver=self.solver,
                                     learning_rate=self._learning_rate(X.shape[1]), max_iter=self.max_iter,
                                     tol=self.convergence_tol, min_iter=getattr(self, "min_iter", 0),
                                     on_epoch=on_epoch, project=self._project, dtype=dtype,
                                     verbose=self.verbose, desc=type(self).__name__, on_loss=log)
        finally:
            del self._state
        if log is not None:
            log.finish(n_iter, self.max_iter)
        return self._components(param), n_iter


class _EpochLog:
    """``verbose``: one line per epoch (epoch, objective, change, active triplets, step), as
    metric-learn's LMNN prints them, and a closing line."""

    def __init__(self, name: str, state: dict, step: float):
        self.name, self.state, self.step = name, state, step
        self.last = self.best = None
        print(f"[{name}] iteration | objective | objective change | active triplets | step")

    def __call__(self, epoch: int, value: float) -> None:
        change = 0.0 if self.last is None else value - self.last
        self.last = value
        self.best = value if self.best is None else min(self.best, value)
        print(epoch, repr(value), repr(change), int(self.state["trip"][0].numel()), self.step)

    def finish(self, n_iter: int, max_iter: int) -> None:
        if n_iter < max_iter:
            print(f"{self.name} converged with objective {self.best!r} after {n_iter} iterations")
        else:
            print(f"{self.name} stopped after max_iter={max_iter} iterations (best objective {self.best!r})")
