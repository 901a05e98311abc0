"""Input checks for tensors: the inputs, embeddings, labels and row indices of deep models,
retrieval and embedding attacks (the array and parameter checks are in :mod:`._validation`).

Every message names the argument, what was expected and what came.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .arrays import check_labels, check_scale

__all__ = ["as_tensor", "real_tensor", "check_unit_interval", "check_model_output", "check_index", "check_query_rows",
           "check_self_rows", "check_embeddings", "label_codes", "paired_label_codes"]


def label_codes(y: Any, *, n_samples: int, name: str = "y", rows: str = "X") -> torch.Tensor:
    """Check ``y`` as :func:`check_labels` does; each label's class as an int64 code ``0..C-1``
    (the classes in sorted order), for labels of any type."""
    return label_classes(y, n_samples=n_samples, name=name, rows=rows)[1]


def label_classes(y: Any, *, n_samples: int, name: str = "y", rows: str = "X") -> tuple[np.ndarray, torch.Tensor]:
    """:func:`label_codes` with the sorted classes the codes index."""
    return _sorted_codes(check_labels(y, n_samples=n_samples, name=name, rows=rows), name)


def _sorted_codes(labels: np.ndarray, what: str) -> tuple[np.ndarray, torch.Tensor]:
    """The sorted classes of ``labels`` and each label's index among them (int64 tensor);
    ValueError naming ``what`` for labels that cannot be sorted (mixed types)."""
    try:
        classes, codes = np.unique(labels, return_inverse=True)
    except TypeError as exc:
        raise ValueError(f"{what} must be labels that can be compared and sorted (one type): {exc}") from None
    return classes, torch.as_tensor(codes.reshape(-1).astype(np.int64))


def batch_labels(labels: Any, n_rows: int, *, name: str = "labels", rows: str = "embeddings",
                 device: torch.device | None = None) -> torch.Tensor:
    """The labels of a mini-batch of ``n_rows`` rows (named ``rows`` in messages) as a 1-D integer
    tensor (on ``device`` when given): an integer tensor of shape ``(n_rows,)`` as it is, any other
    labels (arrays, lists, strings, floats) checked by :func:`label_codes` (finite,
    one per row) and replaced by their int64 class codes."""
    if not (isinstance(labels, torch.Tensor) and labels.shape == (n_rows,) and not labels.is_floating_point()
            and not labels.is_complex() and labels.dtype != torch.bool):
        labels = label_codes(labels, n_samples=n_rows, name=name, rows=rows)
    return labels if device is None else labels.to(device)


def retrieval_label_codes(y: Any, n_samples: int) -> torch.Tensor:
    """:func:`label_codes` of ``y`` for retrieval: refused with fewer than 2 classes (no query has
    another class to be confused with; every figure and certificate would be vacuous)."""
    codes = label_codes(y, n_samples=n_samples)
    if n_samples and int(codes.max()) < 1:
        raise ValueError("y must hold at least 2 classes for retrieval, got 1")
    return codes


def paired_label_codes(query_labels: Any, gallery_labels: Any, *, n_query: int, n_gallery: int,
                       query_name: str = "query_labels", gallery_name: str = "gallery_labels",
                       query_rows: str = "query", gallery_rows: str = "gallery"
                       ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Check query and gallery labels (:func:`check_labels`, one kind of label on both sides) and
    code them together: ``(query codes, gallery codes, classes)``, int64 codes into the sorted
    ``classes``, equal codes for equal labels."""
    ql = check_labels(query_labels, n_samples=n_query, name=query_name, rows=query_rows)
    gl = check_labels(gallery_labels, n_samples=n_gallery, name=gallery_name, rows=gallery_rows)
    if (ql.dtype.kind in "USO") != (gl.dtype.kind in "USO"):
        raise ValueError(f"{query_name} and {gallery_name} must be labels of one kind, got dtypes {ql.dtype} and "
                         f"{gl.dtype}")
    classes, codes = _sorted_codes(np.concatenate([gl, ql]), f"{query_name} and {gallery_name}")
    return codes[n_gallery:], codes[:n_gallery], classes


def check_self_rows(rows: Any, *, n: int, n_gallery: int, name: str = "self_index") -> torch.Tensor:
    """Each of ``n`` queries' own gallery row (None: -1 for all, none), int64 of shape (n,): integer
    gallery rows in ``[0, n_gallery)`` or -1 (floats and booleans are refused, not converted)."""
    if rows is None:
        return torch.full((n,), -1, dtype=torch.int64)
    what = f"{name} must be an integer array of shape ({n},) of gallery rows in [0, {n_gallery}) or -1"
    try:
        t = as_tensor(rows).detach().cpu()
    except Exception as exc:
        raise ValueError(f"{what}: {exc}") from None
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex() or t.shape != (n,):
        raise ValueError(f"{what}, got {t.dtype} of shape {tuple(t.shape)}")
    t = t.to(torch.int64)
    if n and (int(t.min()) < -1 or int(t.max()) >= n_gallery):
        raise ValueError(f"{what}, got values in [{int(t.min())}, {int(t.max())}]")
    return t


def check_embeddings(emb: Any, *, name: str, allow_empty: bool = False) -> torch.Tensor:
    """``emb`` as a 2-D float64 tensor of finite values within +-:data:`MAX_ABS`, at least one column
    (and one row unless ``allow_empty``), or a clear error naming ``name``."""
    try:
        t = as_tensor(emb)
    except Exception as exc:
        raise ValueError(f"{name} must be a 2-D array of numbers (n, dim): {exc}") from None
    if t.dtype == torch.bool or t.is_complex() or not (t.is_floating_point() or t.dtype in (
            torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name} must be a 2-D array of real numbers (n, dim), got dtype {t.dtype}")
    t = t.detach().to(torch.float64)
    if t.dim() != 2 or t.shape[1] == 0 or (t.shape[0] == 0 and not allow_empty):
        raise ValueError(f"{name} must be a 2-D array (n, dim) with n >= {0 if allow_empty else 1} and dim >= 1, "
                         f"got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinity")
    check_scale(t.cpu().numpy(), name=name)
    return t


def as_tensor(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.as_tensor`` of a tensor, array or sequence, also for numpy views with negative
    strides (a reversed view is copied; torch refuses them)."""
    if isinstance(x, torch.Tensor):
        return torch.as_tensor(x, dtype=dtype)
    a = np.asarray(x)
    if any(s < 0 for s in a.strides):
        a = np.ascontiguousarray(a)
    return torch.as_tensor(a, dtype=dtype)


def real_tensor(x: Any, *, name: str, what: str) -> torch.Tensor:
    """``x`` as a floating tensor (integers to float32; a tensor is not copied), or a clear error
    for None, non-numbers, booleans and complex values; ``what`` is the expected kind."""
    if x is None:
        raise ValueError(f"{name} must be {what}, got None")
    try:
        t = as_tensor(x)
    except Exception as exc:
        raise ValueError(f"{name} must be {what}: {exc}") from None
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}")
    return t if t.is_floating_point() else t.to(torch.float32)


def check_unit_interval(x: Any, *, name: str = "inputs") -> torch.Tensor:
    """Return ``x`` as a non-empty floating tensor of finite values in [0, 1] (images) or raise.

    Non-floating inputs (uint8 images, ints) are converted to float32 first, so 0-255
    images get a clear range error instead of a silent rescale.
    """
    t = real_tensor(x, name=name, what="a tensor or array of values in [0, 1]")
    if t.ndim < 1 or t.shape[0] == 0 or t[0].numel() == 0:
        raise ValueError(f"{name} must have at least one sample (first axis) of at least one value, "
                         f"got shape {tuple(t.shape)}")
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        n_bad = int(bad.reshape(t.shape[0], -1).any(dim=1).sum())
        raise ValueError(f"{name} contains NaN or infinity in {n_bad} sample(s); all values must be finite")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} must lie in [0, 1] (scale images to [0, 1] first), "
                         f"got values in [{lo:.6g}, {hi:.6g}]")
    return t


def check_model_output(emb: Any, *, n_rows: int, name: str = "model", dim: int | None = None, finite: bool = True,
                       what: str = "its inputs", first_row: int = 0) -> None:
    """Raise unless ``emb`` (a model's output on ``n_rows`` inputs) is a 2-D tensor with one row
    per input (and ``dim`` columns when given); with ``finite``, FloatingPointError unless every
    row is finite and float32 can compute its norm (its squared norm fits: entries up to about
    1e19; beyond, normalising would give zeros); ``what`` and ``first_row`` name the inputs in
    the message."""
    if not isinstance(emb, torch.Tensor):
        raise ValueError(f"{name} must return a tensor of embeddings (n_inputs, dim), got {type(emb).__name__}")
    if emb.ndim != 2 or emb.shape[0] != n_rows:
        raise ValueError(f"{name} must return a 2-D tensor of embeddings with one row per input: "
                         f"expected ({n_rows}, dim), got shape {tuple(emb.shape)}")
    if dim is not None and emb.shape[1] != dim:
        raise ValueError(f"{name} returned embeddings of dimension {emb.shape[1]}, "
                         f"the objective's embeddings have dimension {dim}")
    if finite:
        bad = ~torch.isfinite(emb.detach().float().norm(dim=1))  # NaN, infinity, or beyond float32
        if bool(bad.any()):
            rows = (torch.nonzero(bad).flatten() + first_row).tolist()
            raise FloatingPointError(
                f"{name} returned NaN or infinite embeddings for {what}: first at row {rows[0]} ({len(rows)} of "
                f"rows {first_row}..{first_row + n_rows - 1}); are its parameters finite? (a row whose squared "
                "norm overflows float32, entries beyond about 1e19, counts as infinite)")


def check_index(index: Any, *, n_rows: int, size: int | None, name: str = "index") -> torch.Tensor:
    """Return ``index`` (rows of a context of ``size`` rows, one per input) as a 1-D int64
    tensor of length ``n_rows``, or raise."""
    t = as_tensor(index)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must hold integer row numbers, got dtype {t.dtype}")
    if t.ndim != 1 or t.shape[0] != n_rows:
        raise ValueError(f"{name} must be 1-D with one row number per input ({n_rows}), got shape {tuple(t.shape)}")
    t = t.to(torch.int64)
    if size is not None and n_rows and (int(t.min()) < 0 or int(t.max()) >= size):
        raise ValueError(f"{name} must hold row numbers in [0, {size}), got values in "
                         f"[{int(t.min())}, {int(t.max())}]")
    return t


def check_query_rows(queries: Any, n: int, *, name: str = "queries", of: str = "X") -> torch.Tensor:
    """Rows of ``of`` to use as queries (None: all ``n``) as a 1-D int64 tensor, or raise: integer
    row numbers only (floats and booleans are refused, not truncated), non-empty, in ``[0, n)``."""
    if queries is None:
        return torch.arange(n)
    what = f"{name} must be a non-empty 1-D array of rows of {of} (0..{n - 1})"
    if isinstance(queries, (list, tuple)) and len(queries) == 0:
        raise ValueError(f"{what}, got an empty {type(queries).__name__}")
    try:
        t = as_tensor(queries).detach().cpu()
    except Exception as exc:
        raise ValueError(f"{what}: {exc}") from None
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{what}, got dtype {t.dtype}")
    if t.ndim != 1 or len(t) == 0:
        raise ValueError(f"{what}, got shape {tuple(t.shape)}")
    t = t.to(torch.int64)
    if int(t.min()) < 0 or int(t.max()) >= n:
        raise ValueError(f"{what}, got values in [{int(t.min())}, {int(t.max())}]")
    return t
