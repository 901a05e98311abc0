"""``MahalanobisKNN``: a scikit-learn K-NN classifier under a Mahalanobis metric."""

from __future__ import annotations

from numbers import Integral
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ._validation import Interval, check_labels, check_metric_scale, check_scale, resolve_metric, validate_params
from .margin import DEFAULT_MEMORY_BUDGET, nearest_neighbors, vote

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
        """Store the training set and resolve the metric."""
        validate_params(self)
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_scale(X, name="X")
        check_classification_targets(y)
        self.classes_, self._y_codes = np.unique(y, return_inverse=True)
        if self.classes_.size < 2:
            raise ValueError(
                f"y has one class only ({self.classes_[0].tolist()!r}); a classifier needs at least 2 classes"
            )
        if self.n_neighbors > X.shape[0]:
            raise ValueError(f"n_neighbors={self.n_neighbors} is larger than the {X.shape[0]} training samples")
        metric = self.metric
        self.metric_ = None
        if hasattr(metric, "fit") and not hasattr(metric, "components_"):
            self.metric_ = metric = clone(metric).fit(X, y)
        self._L = resolve_metric(metric, X.shape[1])
        check_metric_scale(X, self._L)
        self.components_ = np.eye(X.shape[1]) if self._L is None else self._L
        self._fit_X = X
        return self

    def get_mahalanobis_matrix(self) -> np.ndarray:
        """``M = L.T @ L``."""
        check_is_fitted(self)
        return self.components_.T @ self.components_

    def kneighbors(self, X, n_neighbors: int | None = None, return_distance: bool = True):
        """Indices (and Mahalanobis distances, not squared) of the nearest training points."""
        check_is_fitted(self)
        X = check_scale(validate_data(self, X, reset=False, dtype=np.float64), name="X")
        k = self.n_neighbors if n_neighbors is None else n_neighbors
        if not isinstance(k, Integral) or not 1 <= k <= self._fit_X.shape[0]:
            raise ValueError(f"n_neighbors must be an integer in [1, {self._fit_X.shape[0]}], got {k!r}")
        dist, ind = nearest_neighbors(X, self._fit_X, int(k), self._L, memory_budget=self.memory_budget)
        return (np.sqrt(dist), ind) if return_distance else ind

    def predict_proba(self, X) -> np.ndarray:
        """Fraction of the K neighbours in each class."""
        ind = self.kneighbors(X, return_distance=False)
        codes = self._y_codes[ind]
        proba = np.zeros((codes.shape[0], self.classes_.size))
        np.add.at(proba, (np.arange(codes.shape[0])[:, None], codes), 1.0)
        return proba / self.n_neighbors

    def predict(self, X) -> np.ndarray:
        """Majority label of the K nearest neighbours."""
        ind = self.kneighbors(X, return_distance=False)
        return self.classes_[vote(self._y_codes[ind], self.classes_.size)]

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
        from .certify import certified_radius_knn, exact_radius_1nn

        check_is_fitted(self)
        X = check_scale(validate_data(self, X, reset=False, dtype=np.float64), name="X")
        y = check_labels(y, n_samples=X.shape[0])
        # pass self: its components_ is L, never misread as a square M
        common = dict(metric=self, n_jobs=self.n_jobs,
                      memory_budget=self.memory_budget, progress=progress)
        y_train = self.classes_[self._y_codes]
        if method == "exact":
            if self.n_neighbors != 1:
                raise ValueError(f"method='exact' is for 1-NN only; n_neighbors={self.n_neighbors} needs method='bound'")
            return exact_radius_1nn(self._fit_X, y_train, X, y, return_adversarial=return_adversarial, **common)
        if method == "bound":
            if return_adversarial:
                raise ValueError("return_adversarial=True needs method='exact'")
            return certified_radius_knn(self._fit_X, y_train, X, y, n_neighbors=self.n_neighbors, **common)
        raise ValueError(f"method must be 'exact' or 'bound', got {method!r}")

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
