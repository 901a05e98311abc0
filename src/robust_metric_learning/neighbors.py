"""``MahalanobisKNN``: a scikit-learn K-NN classifier under a Mahalanobis metric."""

from __future__ import annotations

from numbers import Integral
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ._geometry import fit_geometry
from ._validation import (
    Interval,
    check_labels,
    check_metric_scale,
    check_odd_k,
    check_scale,
    validate_params,
)
from .margin import DEFAULT_MEMORY_BUDGET, vote

__all__ = ["MahalanobisKNN"]


class MahalanobisKNN(ClassifierMixin, BaseEstimator):
    """K-nearest-neighbour classifier under ``d_M(a, b) = (a - b)^T M (a - b)``.

    Predictions equal scikit-learn's ``KNeighborsClassifier`` on the transformed data
    ``X @ L.T`` (uniform weights). Tie rules: at equal distance the training point with the
    smaller index is the nearer; a tied vote goes to the class that sorts first in ``classes_``.

    Parameters
    ----------
    n_neighbors : int, default=1
        K. Certification needs an odd K.
    metric : "euclidean", array of shape (d, d), array of shape (r, d), or learner, default="euclidean"
        A square array is the Mahalanobis matrix ``M`` (symmetric PSD); a non-square one is
        the components matrix ``L`` (``M = L.T @ L``); a fitted learner gives its
        ``components_``; an unfitted learner is cloned and fitted on the training data.
    memory_budget : int, default=512 MiB
        Bytes allowed for one block of distances.
    n_jobs : int, default=None
        joblib workers for :meth:`certify` and :meth:`attack`.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    components_ : ndarray of shape (r, n_features)
        ``L``; the identity for "euclidean".
    metric_ : the fitted learner when ``metric`` was an unfitted learner, else None.
    n_features_in_ : int

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> X, y = load_iris(return_X_y=True)
    >>> knn = MahalanobisKNN(n_neighbors=3).fit(X, y)
    >>> radii = knn.certify(X[:5], y[:5], method="bound")
    """

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "metric": [object],  # checked by resolve_metric in fit, with the data's shape
        "memory_budget": [Interval(Integral, 1, None, closed="left")],
        "n_jobs": [None, Integral],
    }

    def __init__(self, n_neighbors: int = 1, *, metric: Any = "euclidean",
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, n_jobs: int | None = None):
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.memory_budget = memory_budget
        self.n_jobs = n_jobs

    def fit(self, X, y) -> "MahalanobisKNN":
        """Store the training set's geometry under the resolved metric."""
        validate_params(self)
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.geometry_, self.metric_ = fit_geometry(X, y, self.metric, n_neighbors=self.n_neighbors,
                                                    memory_budget=self.memory_budget)
        self.classes_ = self.geometry_.classes
        L = self.geometry_.L
        self.components_ = np.eye(X.shape[1]) if L is None else L
        return self

    def get_mahalanobis_matrix(self) -> np.ndarray:
        """``M = L.T @ L``."""
        check_is_fitted(self)
        return self.components_.T @ self.components_

    def kneighbors(self, X, n_neighbors: int | None = None, return_distance: bool = True):
        """Indices (and Mahalanobis distances, not squared) of the nearest training points."""
        check_is_fitted(self)
        X = check_scale(validate_data(self, X, reset=False, dtype=np.float64), name="X")
        geo = self.geometry_
        k = self.n_neighbors if n_neighbors is None else n_neighbors
        n = geo.X_fit.shape[0]
        if isinstance(k, bool) or not isinstance(k, Integral) or not 1 <= k <= n:
            raise ValueError(f"n_neighbors must be an integer in [1, {n}], got {k!r}")
        check_metric_scale(X, geo.L)
        dist, ind = geo.kneighbors(X, int(k))
        return (np.sqrt(dist), ind) if return_distance else ind

    def predict_proba(self, X) -> np.ndarray:
        """Fraction of the K neighbours in each class."""
        ind = self.kneighbors(X, return_distance=False)
        codes = self.geometry_.codes[ind]
        proba = np.zeros((codes.shape[0], self.classes_.size))
        np.add.at(proba, (np.arange(codes.shape[0])[:, None], codes), 1.0)
        return proba / self.n_neighbors

    def predict(self, X) -> np.ndarray:
        """Majority label of the K nearest neighbours."""
        ind = self.kneighbors(X, return_distance=False)
        return self.classes_[vote(self.geometry_.codes[ind], self.classes_.size)]

    def certify(self, X, y, *, method: str = "exact", return_adversarial: bool = False,
                progress: bool | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Per-point l2 robustness radii (0 where the prediction is already wrong).

        Parameters
        ----------
        X, y : array-like
            Points and their true labels.
        method : {"exact", "bound"}, default="exact"
            "exact": the exact minimal perturbation (1-NN only); "bound": the certified K-NN
            lower bound (odd K).
        return_adversarial : bool, default=False
            With "exact", also return the minimal adversarial points.
        progress : bool, default=None
            Progress bar; None shows it on a terminal only.
        """
        from .certify import geometry_radii

        check_is_fitted(self)
        X = check_scale(validate_data(self, X, reset=False, dtype=np.float64), name="X")
        y = check_labels(y, n_samples=X.shape[0])
        if method == "exact" and self.n_neighbors != 1:
            raise ValueError(f"method='exact' is for 1-NN only; n_neighbors={self.n_neighbors} needs method='bound'")
        k = check_odd_k(self.n_neighbors) if method == "bound" else 1
        return geometry_radii(self.geometry_, X, y, method=method, k=k, n_jobs=self.n_jobs, progress=progress,
                              return_adversarial=return_adversarial, owner="MahalanobisKNN.certify")

    def attack(self, X, y, *, method: Any = "structural", eps=None, random_state: int | None = None,
               progress: bool | None = None):
        """Empirical robustness: attack the classifier at ``X`` (true labels ``y``).

        Parameters
        ----------
        X, y : array-like
            Points and their true labels.
        method : str or attack object, default="structural"
            "structural" (any K; exact for 1-NN), "exact" (1-NN), "boundary", "gaussian",
            "uniform" (see ``robust_metric_learning.attacks.ATTACKS``), or an attack object.
        eps : float or sequence of float, optional
            l2 budgets; required by the noise attacks.
        random_state : int, optional
            Seed of the random attacks.
        progress : bool, default=None
            Progress bar; None shows it on a terminal only.

        Returns
        -------
        AttackResult ``(raw, clipped, success, radii)``; radii are 0 where the prediction is
        already wrong and +inf where the attack failed. NoiseResult (with ``accuracy``) for noise.
        """
        from .attacks import KNNAttack, get_attack

        check_is_fitted(self)
        X = check_scale(validate_data(self, X, reset=False, dtype=np.float64), name="X")
        y = check_labels(y, n_samples=X.shape[0])
        params = {} if isinstance(method, KNNAttack) else dict(n_jobs=self.n_jobs, random_state=random_state,
                                                               progress=progress)
        attack = get_attack(method, **params)
        return attack(self, X, y) if eps is None else attack(self, X, y, eps=eps)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
