"""NCA: scikit-learn's NeighborhoodComponentsAnalysis behind the learner interface."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.neighbors import NeighborhoodComponentsAnalysis

from .._validation import Interval, Options
from ._init import INIT_OPTIONS, initial_components
from .base import PREPROCESSOR, RANDOM_STATE, MetricLearner

__all__ = ["NCA"]


class _Solver(NeighborhoodComponentsAnalysis):
    """scikit-learn's NCA, reporting (``verbose``, warnings) under the name of the learner."""


_Solver.__name__ = _Solver.__qualname__ = "NCA"


class NCA(MetricLearner):
    """Neighbourhood Components Analysis (Goldberger et al. 2004), by scikit-learn, with
    metric-learn's parameters.

    Parameters
    ----------
    init : {"auto", "identity", "pca", "lda", "random"} or array of shape (n_components, n_features), \
default="auto"
        Starting ``L`` (see :func:`~robust_metric_learning.learners._init.initial_components`);
        "auto" is the identity when ``n_components`` is None and there are at least as many
        features as classes, else LDA or PCA (the rule of metric-learn and scikit-learn).
    n_components : int or None, default=None
        Rows of ``L``; None keeps ``n_features``.
    max_iter : int, default=100
        L-BFGS iterations.
    tol : float, default=1e-5
        L-BFGS tolerance (scikit-learn's default; metric-learn's None leaves SciPy's).
    verbose : bool, default=False
        Print the objective at each iteration.
    preprocessor : array of shape (n_points, n_features), callable or None, default=None
        ``X`` holds identifiers of points instead of points (see :class:`MetricLearner`).
    random_state : int, RandomState, Generator or None, default=None
        Seeds ``init="random"`` and ``init="pca"``.
    """

    _parameter_constraints = {
        "init": [Options(*INIT_OPTIONS), np.ndarray, list],
        "n_components": [None, Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": [bool],
        "preprocessor": PREPROCESSOR,
        "random_state": RANDOM_STATE,
    }

    def __init__(self, init: str | np.ndarray = "auto", n_components: int | None = None, max_iter: int = 100,
                 tol: float = 1e-5, verbose: bool = False, preprocessor=None, random_state=None):
        self.init = init
        self.n_components = n_components
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.preprocessor = preprocessor
        self.random_state = random_state

    def _fit(self, X, y, rng):
        init = self.init if isinstance(self.init, str) else np.asarray(self.init)
        L0 = initial_components(init, X, y, self.n_components, rng, owner=type(self).__name__)
        nca = _Solver(n_components=L0.shape[0], init=L0, max_iter=self.max_iter, tol=self.tol,
                      verbose=int(self.verbose))
        nca.fit(X, y)
        return nca.components_, nca.n_iter_
