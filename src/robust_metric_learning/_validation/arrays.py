"""Input checks shared by the whole package.

Every public entry point validates through these helpers so that bad input gets one
clear message that names the argument, what was expected and what was received.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, Sequence

import numpy as np
import torch

from ..margin import components_from_metric

__all__ = [
    "check_array_2d",
    "check_labels",
    "check_n_features",
    "check_positive_int",
    "check_odd_k",
    "check_eps",
    "resolve_metric",
]


#: Largest magnitude accepted in data: squared distances (and their products with a metric)
#: of larger values overflow float64 or lose every digit that tells neighbours apart.
MAX_ABS = 1e100


def check_scale(arr: np.ndarray, *, name: str = "X") -> np.ndarray:
    """Refuse values beyond :data:`MAX_ABS` in magnitude (clear error; returns ``arr``)."""
    if arr.size:
        top = float(np.abs(arr).max())
        if top > MAX_ABS:
            raise ValueError(f"{name} has values of magnitude up to {top:.3g}; values must be within "
                             f"+-{MAX_ABS:.0e} (squared distances would overflow float64): rescale the data")
    return arr


def check_metric_scale(X: np.ndarray, L: np.ndarray | None, *, name: str = "X") -> None:
    """Refuse a metric (components ``L``) under which ``X`` leaves the range of :func:`check_scale`."""
    if L is not None:
        check_scale(L, name="the metric's components L")
        check_scale(np.abs(X) @ np.abs(L).T, name=f"{name} transformed by the metric (|{name}| |L|^T)")


def check_array_2d(X: Any, *, name: str = "X", allow_empty: bool = False) -> np.ndarray:
    """Return ``X`` as a finite, 2-D float64 array or raise a clear error."""
    if X is None:
        raise ValueError(f"{name} must be a 2-D numeric array, got None")
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged nested lists and the like
        raise ValueError(f"{name} must be a 2-D numeric array: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"{name} must be numeric, got an array of dtype {arr.dtype}"
            + (" (strings)" if arr.dtype.kind in "USO" else "")
        )
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_samples, n_features), got shape {arr.shape}")
    if not allow_empty and (arr.shape[0] == 0 or arr.shape[1] == 0):
        raise ValueError(f"{name} is empty: shape {arr.shape}; at least 1 sample and 1 feature are needed")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ValueError(f"{name} contains NaN or infinity in {n_bad} row(s); all values must be finite")
    return check_scale(arr, name=name)


def check_labels(y: Any, *, n_samples: int, name: str = "y", rows: str = "X") -> np.ndarray:
    """Return ``y`` as a 1-D array of ``n_samples`` labels (one per row of ``rows``, named in the
    error) or raise a clear error."""
    if y is None:
        raise ValueError(f"{name} must be a 1-D array of labels, got None")
    arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.ravel()
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of labels, got shape {arr.shape}")
    if arr.shape[0] != n_samples:
        raise ValueError(f"{name} has {arr.shape[0]} labels, {rows} has {n_samples} samples")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return arr


def check_n_features(X: np.ndarray, n_features: int, *, name: str = "X", what: str = "the model was fitted on") -> None:
    """Raise when ``X`` does not have ``n_features`` columns."""
    if X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} features, {what} {n_features}")


def check_positive_int(value: Any, *, name: str) -> int:
    """Return ``value`` as a positive int or raise."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_odd_k(k: Any, *, name: str = "n_neighbors") -> int:
    """Return ``k`` as a positive odd int (certification needs a strict majority)."""
    k = check_positive_int(k, name=name)
    if k % 2 == 0:
        raise ValueError(f"{name} must be odd for certification (a strict majority vote), got {k}")
    return k


def check_eps(eps: Any, *, name: str = "eps") -> np.ndarray:
    """Return perturbation budgets as a 1-D float array of finite non-negative values (numbers
    only: booleans, strings and None are refused, not converted)."""
    raw = np.atleast_1d(np.asarray(eps, dtype=object))
    if any(v is None or isinstance(v, (bool, np.bool_, str, bytes)) for v in raw.ravel()) or (
            isinstance(eps, (np.ndarray, torch.Tensor)) and np.asarray(eps).dtype.kind == "b"):
        raise ValueError(f"{name} must be a number or a list of numbers (finite, >= 0), got {eps!r}")
    try:
        arr = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a list of numbers (finite, >= 0), got {eps!r}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D list of numbers, got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} must be finite and >= 0, got {arr.tolist()}")
    return arr


def _check_psd(M: np.ndarray, *, name: str) -> np.ndarray:
    """Symmetric PSD check; returns a factor ``L`` (``L.T @ L = M``) without null rows."""
    scale = float(np.abs(M).max()) if M.size else 0.0
    if not np.allclose(M, M.T, rtol=1e-10, atol=1e-12 * max(scale, 1.0)):
        raise ValueError(f"{name} must be symmetric; max |M - M.T| = {np.abs(M - M.T).max():.3g}")
    w = np.linalg.eigvalsh((M + M.T) / 2)
    tol = 1e-10 * max(float(np.abs(w).max()) if w.size else 0.0, 1e-300)
    if w.min() < -tol:
        raise ValueError(
            f"{name} must be positive semi-definite; its smallest eigenvalue is {w.min():.6g}"
        )
    return components_from_metric(M, drop_null=True)  # one row per positive eigenvalue


def resolve_metric(metric: Any, n_features: int, *, name: str = "metric") -> np.ndarray | None:
    """Turn a metric specification into a components matrix ``L`` (``M = L.T @ L``).

    ``"euclidean"`` (or None) gives None, meaning the identity. A square array is the
    Mahalanobis matrix ``M`` (symmetric PSD); a non-square ``(r, d)`` array is ``L``; an
    object with ``components_`` (a fitted learner) gives its ``components_``.
    """
    if metric is None or (isinstance(metric, str) and metric == "euclidean"):
        return None
    if isinstance(metric, str):
        raise ValueError(f"{name} must be 'euclidean', a (d, d) matrix M, an (r, d) matrix L or a fitted learner, got {metric!r}")
    if hasattr(metric, "components_"):
        L = np.asarray(metric.components_)
        kind = "components_"
    elif hasattr(metric, "fit") and hasattr(metric, "get_params"):
        raise ValueError(f"{name} is a learner that has not been fitted: call fit(X, y) first")
    else:
        L = None
        kind = "matrix"
    arr = np.asarray(L if L is not None else metric)
    if arr.dtype.kind not in "biuf" or arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name} must be a 2-D numeric matrix, got {arr.dtype} array of shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity")
    if arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} columns, X has {n_features} features")
    if arr.shape[0] == arr.shape[1] and np.array_equal(arr, np.eye(n_features)):
        return None  # the identity, as M or as L: take the Euclidean fast path
    if kind == "matrix" and arr.shape[0] == arr.shape[1]:
        return _check_psd(arr, name=f"{name} (square, read as the Mahalanobis matrix M)")
    return arr


# ------------------------------------------------------------ declared parameter checks


class Interval:
    """A numeric range constraint for ``_parameter_constraints`` (our own, stable API)."""

    def __init__(self, kind: type, low: float | None, high: float | None, *, closed: str = "both"):
        self.kind, self.low, self.high, self.closed = kind, low, high, closed

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.kind):
            return False
        lo_ok = self.low is None or (value >= self.low if self.closed in ("left", "both") else value > self.low)
        hi_ok = self.high is None or (value <= self.high if self.closed in ("right", "both") else value < self.high)
        return bool(lo_ok and hi_ok and (isinstance(value, Integral) or np.isfinite(value)))

    def __str__(self) -> str:
        kind = "an int" if self.kind is Integral else "a number"
        lb = "[" if self.closed in ("left", "both") else "("
        rb = "]" if self.closed in ("right", "both") else ")"
        lo = "-inf" if self.low is None else self.low
        hi = "inf" if self.high is None else self.high
        return f"{kind} in {lb}{lo}, {hi}{rb}"


class Options:
    """A constraint accepting one of a fixed set of values."""

    def __init__(self, *values: Any):
        self.values = values

    def accepts(self, value: Any) -> bool:
        return any(value is v or (type(value) is type(v) and value == v) for v in self.values)

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


class SequenceOf:
    """A constraint accepting a sequence (not a string) whose items all meet ``item``; empty only
    with ``allow_empty``."""

    def __init__(self, item: Any, *, allow_empty: bool = False):
        self.item, self.allow_empty = item, allow_empty

    def accepts(self, value: Any) -> bool:
        if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
            return False
        return (self.allow_empty or len(value) > 0) and all(self.item.accepts(v) for v in value)

    def __str__(self) -> str:
        return f"a {'' if self.allow_empty else 'non-empty '}sequence of {self.item}"


class TupleOf:
    """A constraint accepting a tuple or list whose items meet ``items`` one by one."""

    def __init__(self, *items: Any):
        self.items = items

    def accepts(self, value: Any) -> bool:
        return (isinstance(value, (tuple, list)) and len(value) == len(self.items)
                and all(c.accepts(v) for c, v in zip(self.items, value)))

    def __str__(self) -> str:
        return "(" + ", ".join(str(c) for c in self.items) + ")"


def validate_params(estimator: Any) -> None:
    """Check ``estimator``'s parameters against its ``_parameter_constraints`` (see
    :func:`check_params`)."""
    check_params(type(estimator).__name__, {name: getattr(estimator, name) for name in estimator._parameter_constraints},
                 estimator._parameter_constraints)


def check_params(owner: str, values: dict[str, Any], constraints: dict[str, list]) -> None:
    """The one declared check of parameters: each value of ``values`` against its constraint list.

    Each constraint list may hold :class:`Interval`, :class:`Options`, :class:`SequenceOf`,
    :class:`TupleOf`, ``None`` (accepts None) or a type (accepts instances). The error names the
    parameter and its ``owner`` (a class or function), what is allowed and what came.
    """
    for name, allowed_list in constraints.items():
        value = values[name]
        for c in allowed_list:
            if c is None and value is None:
                break
            if isinstance(c, type) and isinstance(value, c) and (c is bool or not isinstance(value, bool)):
                break
            if c is bool and isinstance(value, np.bool_):
                break
            if hasattr(c, "accepts") and c.accepts(value):
                break
        else:
            allowed = " or ".join("None" if c is None else c.__name__ if isinstance(c, type) else str(c)
                                  for c in allowed_list)
            raise ValueError(f"The '{name}' parameter of {owner} must be {allowed}; got {value!r}")


# ------------------------------------------------------------ scalars and metric files (added for issue 16)


def check_real(value: Any, *, name: str, low: float | None = None, low_open: bool = False,
               high: float | None = None, high_open: bool = False) -> float:
    """Return ``value`` as a finite float within the given bounds or raise.

    ``low`` / ``high`` bound it from below / above, inclusive unless ``low_open`` / ``high_open``.
    Booleans, strings and arrays are refused (``lr=True`` is a mistake, not 1.0).
    """
    from numbers import Real

    if low is not None and high is not None:
        bound = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        bound = f" {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        bound = f" {'<' if high_open else '<='} {high:g}"
    else:
        bound = ""
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0:
        value = value.item()  # a 0-d array or tensor holding one number (a bool is refused below)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a finite number{bound}, got {type(value).__name__} {value!r}")
    v = float(value)
    below = low is not None and (v <= low if low_open else v < low)
    above = high is not None and (v >= high if high_open else v > high)
    if not np.isfinite(v) or below or above:
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return v


def check_bool(value: Any, *, name: str) -> bool:
    """Return ``value`` (a Python or numpy bool) as a bool or raise; 0, 1 and strings are refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_nonnegative_int(value: Any, *, name: str) -> int:
    """Return ``value`` as an int >= 0 or raise (seeds, counters)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


#: the largest seed: every random stream of the package (numpy, torch, derived per-epoch seeds) takes it
MAX_SEED = 2**32 - 1


def check_seed(value: Any, *, name: str) -> int:
    """Return ``value`` as a seed, an int in ``[0, MAX_SEED]``, or raise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be an integer seed in [0, 2**32 - 1], got {value!r}")
    return int(value)


def check_metric_array(mat: Any, *, entry: str, source: str, n_features: int | None = None) -> np.ndarray:
    """Check a metric read from a file and return what ``metric=`` takes (M, or L).

    ``entry`` is ``"mahalanobis"`` (M, must be (d, d), symmetric PSD), ``"components"``
    (L, (r, d); a square L is returned as ``L.T @ L``) or ``"array"`` (a ``.npy`` file:
    square is M, else L). ``source`` names the file in messages; with ``n_features`` the
    width must be d = ``n_features``.
    """
    where = f"metric file {source}, entry {entry!r}" if entry != "array" else f"metric file {source}"
    arr = np.asarray(mat)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{where} must hold numbers, got an array of dtype {arr.dtype}")
    if arr.ndim != 2 or arr.size == 0:
        want = "(d, d)" if entry == "mahalanobis" else "(r, d) or (d, d)" if entry == "array" else "(r, d)"
        raise ValueError(f"{where} must be a non-empty 2-D array of shape {want}, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{where} contains NaN or infinity ({int((~np.isfinite(arr)).sum())} value(s)); "
                         "all values must be finite")
    square = arr.shape[0] == arr.shape[1]
    if entry == "mahalanobis" and not square:
        raise ValueError(f"{where} must be a square (d, d) Mahalanobis matrix M, got shape {arr.shape}")
    if n_features is not None and arr.shape[1] != n_features:
        d = n_features
        want = (f"({d}, {d})" if entry == "mahalanobis" else f"(r, {d})" if entry == "components"
                else f"({d}, {d}) (M) or (r, {d}) (L)")
        raise ValueError(f"{where} must have shape {want} for data with {d} features, got shape {arr.shape}")
    if entry == "components" and square:
        return arr.T @ arr  # a square L would be read as M: hand over M itself
    if square:
        _check_psd(arr, name=f"{where} (square, read as the Mahalanobis matrix M)")
    return arr
