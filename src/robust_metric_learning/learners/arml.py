"""ARML: adversarially robust metric learning (Provably Robust Metric Learning, NeurIPS 2020)."""

from __future__ import annotations

from numbers import Integral

import torch

from .._validation import Interval
from ..margin import DEFAULT_MEMORY_BUDGET, class_neighbors, margin
from .triplet import PerturbationLoss, TripletLearner

__all__ = ["ARML"]


class ARML(TripletLearner):
    """Maximise the mean margin (certified radius lower bound) of sampled triplets.

    As published: ``L`` starts at the identity; every epoch each training point is an anchor,
    its positive and negative drawn at random among its ``k_same`` = 10 nearest same-class and
    ``k_other`` = 10 nearest other-class points under the current metric; loss = − mean
    margin; Adam, learning rate 1e-3, full batch, 1000 epochs.

    Parameters
    ----------
    k_same, k_other : int, default=10
    perturbation : PerturbationLoss or None, default=None
        Added to the loss when given.
    search_every : int, default=1
        Recompute the nearest-neighbour lists every this many samplings (1, the published
        setting, is exact; larger values reuse the lists while the metric moves little, and
        the positive and negative are still drawn afresh every epoch).
    solver, learn_rate, max_iter, convergence_tol, resample_every, dtype, memory_budget, random_state, verbose
        As in :class:`TripletLearner`; defaults are the published settings (float32 as the
        authors' code).

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> X, y = load_iris(return_X_y=True)
    >>> ARML(max_iter=20).fit(X, y).components_.shape
    (4, 4)
    """

    _parameter_constraints = {k: v for k, v in TripletLearner._parameter_constraints.items() if k != "margin"}
    _parameter_constraints["search_every"] = [Interval(Integral, 1, None, closed="left")]

    def __init__(self, k_same: int = 10, k_other: int = 10, *, perturbation: PerturbationLoss | None = None,
                 solver: str = "adam", learn_rate: float = 1e-3, max_iter: int = 1000, convergence_tol: float = 0.0,
                 resample_every: int = 1, search_every: int = 1, dtype: str = "float32",
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, random_state: int | None = None, verbose: bool = False):
        self.k_same = k_same
        self.k_other = k_other
        self.perturbation = perturbation
        self.solver = solver
        self.learn_rate = learn_rate
        self.max_iter = max_iter
        self.convergence_tol = convergence_tol
        self.resample_every = resample_every
        self.search_every = search_every
        self.dtype = dtype
        self.memory_budget = memory_budget
        self.random_state = random_state
        self.verbose = verbose

    @property
    def _min_class_size(self) -> int:
        return 2  # k_same is capped by the class size

    def _sample(self, X, codes, L, rng, cache):
        calls = cache.get("calls", 0)
        if calls % self.search_every == 0:
            counts = torch.bincount(codes)
            k_same = int(min(self.k_same, counts.min() - 1))
            k_other = int(min(self.k_other, len(codes) - counts.max()))
            cache["lists"] = class_neighbors(X @ L.T, codes, k_same, k_other, memory_budget=self.memory_budget)
        cache["calls"] = calls + 1
        same, other = cache["lists"]
        n = X.shape[0]
        rows = torch.arange(n)
        p = same[rows, torch.as_tensor(rng.integers(0, same.shape[1], n))]
        q = other[rows, torch.as_tensor(rng.integers(0, other.shape[1], n))]
        return rows, p, q

    def _loss(self, L, X, trip):
        a, p, n = trip
        return -margin(X[a], X[p], X[n], L.T @ L).mean()
