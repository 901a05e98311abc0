"""The base of every Mahalanobis learner: scikit-learn estimator plumbing, set once."""

from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .._validation import check_scale, validate_params

__all__ = ["MetricLearner"]


class MetricLearner(TransformerMixin, BaseEstimator):
    """Base class: a learner fits ``components_`` (L, with ``M = L.T @ L``).

    Subclasses implement ``_fit(X, y_codes, rng) -> (L, n_iter)`` on validated float64 data
    with labels encoded 0..C-1; :meth:`fit` does the validation, the label encoding and the
    bookkeeping. ``_min_class_size`` (an attribute or property) states how many points each
    class needs.
    """

    _parameter_constraints: dict = {}
    _min_class_size: int = 1

    def fit(self, X, y) -> "MetricLearner":
        """Learn the metric from ``X`` (n_samples, n_features) and labels ``y``."""
        validate_params(self)
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2)
        check_scale(X, name="X")
        check_classification_targets(y)
        self.classes_, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
        if self.classes_.size < 2:
            raise ValueError(
                f"y has one class only ({self.classes_[0].tolist()!r}); metric learning needs at least 2 classes"
            )
        need = self._min_class_size
        if counts.min() < need:
            small = self.classes_[counts.argmin()].tolist()
            raise ValueError(
                f"{type(self).__name__} needs at least {need} points per class; "
                f"label {small!r} has {counts.min()}"
            )
        rng = np.random.default_rng(getattr(self, "random_state", None))
        L, n_iter = self._fit(X, codes, rng)
        L = np.asarray(L, dtype=np.float64)
        if not np.isfinite(L).all():
            raise FloatingPointError(f"{type(self).__name__} produced a non-finite metric; check the data scale")
        self.components_ = L
        self.n_iter_ = int(n_iter)
        return self

    def _fit(self, X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def transform(self, X) -> np.ndarray:
        """Map ``X`` into the space where the metric is Euclidean: ``X @ L.T``."""
        check_is_fitted(self)
        X = check_scale(validate_data(self, X, reset=False, dtype=np.float64), name="X")
        return X @ self.components_.T

    def get_mahalanobis_matrix(self) -> np.ndarray:
        """``M = L.T @ L``, of shape (n_features, n_features)."""
        check_is_fitted(self)
        return self.components_.T @ self.components_

    def get_metric(self) -> Callable[[np.ndarray, np.ndarray], float]:
        """A function ``(a, b) -> sqrt((a - b)^T M (a - b))`` (as metric-learn's)."""
        check_is_fitted(self)
        L = self.components_.copy()

        def metric(a, b) -> float:
            diff = L @ (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
            return float(np.sqrt(diff @ diff))

        return metric

    @property
    def _n_features_out(self) -> int:
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags
