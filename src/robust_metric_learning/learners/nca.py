"""NCA: scikit-learn's NeighborhoodComponentsAnalysis behind the learner interface."""

from __future__ import annotations

from numbers import Integral, Real

from sklearn.neighbors import NeighborhoodComponentsAnalysis

from .._validation import Interval, Options
from .base import MetricLearner

__all__ = ["NCA"]


class NCA(MetricLearner):
    """Neighbourhood Components Analysis (Goldberger et al. 2004), by scikit-learn.

    Parameters
    ----------
    n_components : int or None, default=None
    init : {"auto", "pca", "lda", "identity", "random"}, default="identity"
        Identity by default, like the other learners here (scikit-learn's default is "auto").
    max_iter : int, default=100
        L-BFGS iterations.
    tol : float, default=1e-5
    random_state : int or None, default=None
    verbose : bool, default=False
    """

    _parameter_constraints = {
        "n_components": [None, Interval(Integral, 1, None, closed="left")],
        "init": [Options("auto", "pca", "lda", "identity", "random")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "random_state": [None, Interval(Integral, 0, None, closed="left")],
        "verbose": [bool],
    }

    def __init__(self, n_components: int | None = None, *, init: str = "identity", max_iter: int = 100,
                 tol: float = 1e-5, random_state: int | None = None, verbose: bool = False):
        self.n_components = n_components
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose

    def _fit(self, X, y, rng):
        if self.n_components is not None and self.n_components > X.shape[1]:
            raise ValueError(f"n_components={self.n_components} is larger than the {X.shape[1]} features of X")
        nca = NeighborhoodComponentsAnalysis(n_components=self.n_components, init=self.init,
                                             max_iter=self.max_iter, tol=self.tol,
                                             random_state=self.random_state, verbose=int(self.verbose))
        nca.fit(X, y)
        return nca.components_, nca.n_iter_
