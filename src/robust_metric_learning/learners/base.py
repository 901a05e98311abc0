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

    def get_metric(self, squared: bool = False) -> Callable[[np.ndarray, np.ndarray], float]:
        """A function ``(a, b) -> sqrt((a - b)^T M (a - b))`` (the square with ``squared``), as
        metric-learn's."""
        check_is_fitted(self)
        if not isinstance(squared, bool):
            raise ValueError(f"squared must be True or False, got {squared!r}")
        L = self.components_.copy()

        def metric(a, b) -> float:
            diff = L @ (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
            d2 = float(diff @ diff)
            return d2 if squared else float(np.sqrt(d2))

        return metric

    def pair_distance(self, pairs) -> np.ndarray:
        """Mahalanobis distances of ``pairs`` of shape (n_pairs, 2, n_features), as metric-learn's."""
        check_is_fitted(self)
        n_features = self.components_.shape[1]
        try:
            P = np.asarray(pairs, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"pairs must be a numeric array of shape (n_pairs, 2, {n_features}): {exc}") from None
        if P.ndim != 3 or P.shape[1] != 2 or P.shape[2] != n_features:
            raise ValueError(f"pairs must be an array of shape (n_pairs, 2, {n_features}), got shape {P.shape}")
        if not np.isfinite(P).all():
            raise ValueError("pairs contains NaN or infinity")
        check_scale(P.reshape(-1, n_features), name="pairs")
        diff = (P[:, 0] - P[:, 1]) @ self.components_.T
        return np.sqrt(np.einsum("ij,ij->i", diff, diff))

    def pair_score(self, pairs) -> np.ndarray:
        """The opposite of :meth:`pair_distance` (higher: more similar), as metric-learn's."""
        return -self.pair_distance(pairs)

    @property
    def _n_features_out(self) -> int:
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags
