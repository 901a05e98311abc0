"""Readers of the public file formats: IDX (MNIST) and LIBSVM, plain or compressed."""

from __future__ import annotations

import numbers
import os
import struct
from math import prod
from pathlib import Path

import numpy as np

from .._io import _compression_of, _open_read

# --------------------------------------------------------------------------- readers

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _hex(data: bytes) -> str:
    return "0x" + data.hex().upper() if data else "(file is empty)"


def _read_upto(f, n: int) -> bytes:
    """Read ``n`` bytes, fewer only at end of file."""
    parts, got = [], 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def load_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format).

    Parameters
    ----------
    path : str or path-like
        IDX file, gzip-compressed when the name ends in ``.gz`` (``.bz2`` is
        read as bzip2), raw otherwise.

    Returns
    -------
    numpy.ndarray
        Array of the stored type (native byte order) and shape, e.g. uint8
        ``(n, rows, cols)`` for images (magic ``0x00000803``) and uint8
        ``(n,)`` for labels (magic ``0x00000801``).

    Raises
    ------
    ValueError
        If the magic number is wrong, or the data are shorter or longer than
        the header says, or the compressed stream is damaged; the message
        names the file.
    """
    path = Path(path)
    compression = _compression_of(path)
    f = _open_read(path, compression)  # FileNotFoundError propagates unchanged
    with f:
        try:
            return _parse_idx(f, path, compression)
        except (EOFError, OSError) as exc:
            raise ValueError(f"{path}: cannot read IDX data ({exc})") from exc


def _parse_idx(f, path: Path, compression: str | None) -> np.ndarray:
    magic = _read_upto(f, 4)
    if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_DTYPES:
        codes = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(
            f"{path}: not an IDX file: magic number {_hex(magic)}, "
            f"expected 0x0000TTDD with type code TT in {{{codes}}} and DD dimensions "
            "(0x00000803 for images, 0x00000801 for labels)"
        )
    dtype, ndim = _IDX_DTYPES[magic[2]], magic[3]
    raw_dims = _read_upto(f, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise ValueError(
            f"{path}: truncated IDX header: {ndim} dimensions need {4 * ndim} bytes "
            f"after the magic number, the file has {len(raw_dims)}"
        )
    shape = struct.unpack(f">{ndim}I", raw_dims)
    nbytes = prod(shape) * dtype.itemsize
    header = 4 + 4 * ndim
    if compression is None:
        have = os.fstat(f.fileno()).st_size - header
        if have != nbytes:
            raise ValueError(
                f"{path}: IDX header says shape {shape} of {dtype.name} "
                f"({nbytes} data bytes), but the file holds {have} data bytes"
            )
    try:
        buf = np.empty(nbytes, dtype=np.uint8)
    except MemoryError:
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({nbytes} bytes), too large to load"
        ) from None
    view, got = memoryview(buf), 0
    while got < nbytes:
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    if got < nbytes:
        raise ValueError(
            f"{path}: truncated IDX data: header says shape {shape} of {dtype.name} "
            f"({nbytes} data bytes), the file holds {got}"
        )
    if f.read(1):
        raise ValueError(
            f"{path}: IDX file is longer than its header says: shape {shape} of "
            f"{dtype.name} needs {nbytes} data bytes, there are more"
        )
    return buf.view(dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def load_libsvm(
    path: str | os.PathLike[str], *, n_features: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a LIBSVM / SVMlight file into dense arrays.

    Parameters
    ----------
    path : str or path-like
        Plain text, or gzip (``.gz``) / bzip2 (``.bz2``) compressed. Feature
        indices start at 1.
    n_features : int, default=None
        Number of columns of ``X``; default the largest index in the file.
        Give it to make a train and a test file agree.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), dtype float64
        Features; a missing index is 0.
    y : ndarray of shape (n_samples,)
        Labels as written: int64 when all are integers, else float64.

    Raises
    ------
    ValueError
        If the content is malformed, has no sample, or has more features
        than ``n_features``; the message names the file.
    """
    from sklearn.datasets import load_svmlight_file

    if n_features is not None and (
        not isinstance(n_features, numbers.Integral)
        or isinstance(n_features, bool)
        or n_features < 1
    ):
        raise ValueError(f"n_features must be a positive integer or None, got {n_features!r}")
    path = Path(path)
    f = _open_read(path, _compression_of(path))  # FileNotFoundError propagates unchanged
    with f:
        try:
            X, y = load_svmlight_file(
                f,
                n_features=None if n_features is None else int(n_features),
                dtype=np.float64,
                zero_based=False,
            )
        except (ValueError, EOFError, OSError) as exc:
            raise ValueError(f"{path}: malformed LIBSVM file ({exc})") from exc
    if X.shape[0] == 0:
        raise ValueError(f"{path}: LIBSVM file holds no samples")
    X = np.ascontiguousarray(X.toarray(), dtype=np.float64)
    y = np.asarray(y)
    if np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    return X, y
