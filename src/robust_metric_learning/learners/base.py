"""The base of every Mahalanobis learner: scikit-learn estimator plumbing, set once."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .._validation import MAX_SEED, Interval, check_bool, check_scale, validate_params

__all__ = ["MetricLearner", "PREPROCESSOR", "RANDOM_STATE", "as_generator"]

#: the declared constraints of the parameters every learner shares with metric-learn
PREPROCESSOR = [None, np.ndarray, list, tuple, Callable]
RANDOM_STATE = [None, Interval(Integral, 0, MAX_SEED, closed="both"), np.random.RandomState, np.random.Generator]


def as_generator(random_state) -> np.random.Generator:
    """A ``Generator`` from a seed, a ``RandomState`` (one draw from it seeds the generator, so a
    fit moves it on, as scikit-learn's estimators do) or a ``Generator`` (used as it is)."""
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    return np.random.default_rng(random_state)


class MetricLearner(TransformerMixin, BaseEstimator):
    """Base class: a learner fits ``components_`` (L, with ``M = L.T @ L``).

    Subclasses implement ``_fit(X, y_codes, rng) -> (L, n_iter)`` on validated float64 data
    with labels encoded 0..C-1; :meth:`fit` does the validation, the label encoding and the
    bookkeeping. ``_min_class_size`` (an attribute or property) states how many points each
    class needs.

    A learner with a ``preprocessor`` parameter (metric-learn's convention) takes, wherever it
    takes points (``fit``, ``transform``, ``pair_distance``, ``pair_score``), identifiers
    instead: with an array ``P`` of points, ``X`` holds row numbers of ``P`` (a 1-D array;
    pairs a 2-D ``(n_pairs, 2)`` one) and the points are ``P[X]``; with a callable ``f``, the
    points are ``f(X)``. Already formed points (2-D ``X``, 3-D pairs) are used as they are.
    """

    _parameter_constraints: dict = {}
    _min_class_size: int = 1

    def fit(self, X, y) -> "MetricLearner":
        """Learn the metric from ``X`` (n_samples, n_features) and labels ``y``."""
        validate_params(self)
        X = self._preprocess(X, formed_ndim=2)
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
        rng = as_generator(getattr(self, "random_state", None))
        L, n_iter = self._fit(X, codes, rng)
        L = np.asarray(L, dtype=np.float64)
        if not np.isfinite(L).all():
            raise FloatingPointError(f"{type(self).__name__} produced a non-finite metric; check the data scale")
        self.components_ = L
        self.n_iter_ = int(n_iter)
        return self

    def _fit(self, X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def _preprocess(self, X, *, formed_ndim: int, name: str = "X"):
        """Points from identifiers through ``self.preprocessor`` (see the class docstring); ``X``
        unchanged without one, or when it already holds points (``formed_ndim`` dimensions)."""
        prep = getattr(self, "preprocessor", None)
        if prep is None:
            return X
        if not callable(prep):
            P = np.asarray(prep)
            if P.ndim != 2:
                raise ValueError(f"The 'preprocessor' parameter of {type(self).__name__} must be a 2-D array of "
                                 f"points (n_points, n_features) or a callable; got an array of shape {P.shape}")
        idx = np.asarray(X)
        if idx.ndim == formed_ndim:
            return X  # already points
        if callable(prep):
            pts = np.asarray(prep(idx))
        else:
            if idx.dtype.kind not in "iu":
                raise ValueError(f"{name} must hold row numbers of the preprocessor's {P.shape[0]} points "
                                 f"(integers), got dtype {idx.dtype}")
            if idx.size and (idx.min() < -P.shape[0] or idx.max() >= P.shape[0]):
                raise ValueError(f"{name} holds row numbers outside [0, {P.shape[0]}) of the preprocessor's points")
            pts = P[idx]
        if pts.ndim != formed_ndim:
            raise ValueError(f"The preprocessor of {type(self).__name__} turned {name} of shape {idx.shape} into "
                             f"an array of shape {pts.shape}; expected {formed_ndim} dimensions")
        return pts

    def transform(self, X) -> np.ndarray:
        """Map ``X`` into the space where the metric is Euclidean: ``X @ L.T``."""
        check_is_fitted(self)
        X = self._preprocess(X, formed_ndim=2)
        X = check_scale(validate_data(self, X, reset=False, dtype=np.float64), name="X")
        return X @ self.components_.T

    def get_mahalanobis_matrix(self) -> np.ndarray:
        """``M = L.T @ L``, of shape (n_features, n_features)."""
        check_is_fitted(self)
        return self.components_.T @ self.components_

    def get_metric(self, squared: bool = False) -> Callable[..., float]:
        """A function ``(a, b, squared=squared) -> sqrt((a - b)^T M (a - b))`` (the square with
        ``squared``), as metric-learn's; ``a`` and ``b`` are vectors (arrays with one non-trivial
        axis, as SciPy's distances take them). It keeps a copy of ``M``: refitting the learner
        does not change it."""
        check_is_fitted(self)
        squared = check_bool(squared, name="squared")
        L = np.atleast_2d(np.array(self.components_, dtype=np.float64))
        d = L.shape[1]

        def metric(a, b, squared: bool = squared) -> float:
            u, v = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
            if u.size != d or v.size != d or u.squeeze().ndim > 1 or v.squeeze().ndim > 1:
                raise ValueError(f"the metric takes two vectors of {d} values (the fitted features); "
                                 f"got shapes {u.shape} and {v.shape}")
            diff = L @ (u.reshape(d) - v.reshape(d))
            d2 = float(diff @ diff)
            return d2 if squared else float(np.sqrt(d2))

        return metric

    def pair_distance(self, pairs) -> np.ndarray:
        """Mahalanobis distances of ``pairs`` of shape (n_pairs, 2, n_features), as metric-learn's."""
        check_is_fitted(self)
        n_features = self.components_.shape[1]
        pairs = self._preprocess(pairs, formed_ndim=3, name="pairs")
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

    def score_pairs(self, pairs) -> np.ndarray:
        """Deprecated in metric-learn 0.7: :meth:`pair_distance` (kept so that code written for
        metric-learn runs; warns with ``FutureWarning``)."""
        warnings.warn("score_pairs is deprecated (as in metric-learn 0.7): it returns distances; call "
                      "pair_distance for distances or pair_score for similarities", FutureWarning, stacklevel=2)
        return self.pair_distance(pairs)

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
