"""File helpers: atomic writes and checksums.

Every file the project writes (results, models, downloads) goes through
:func:`atomic_open` or one of the ``atomic_write_*`` helpers, so a reader never
sees a half-written file: data go to a temporary file in the target folder,
which is flushed, synced and then renamed onto the target with ``os.replace``.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "load_metric", "md5_file", "read_metric",
           "save_metric"]

_CHUNK = 1 << 20
_WRITE_MODES = ("wb", "w", "wt")


def _current_umask() -> int:
    """Return the process umask without changing it where the OS allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # portable fallback: read by setting, then restore
    os.umask(mask)
    return mask


def _final_mode(path: Path) -> int:
    """Permission bits for the new file: the old file's, else 0o666 minus umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    mode: str = "wb",
    *,
    encoding: str = "utf-8",
) -> Iterator[IO[Any]]:
    """Open a file for writing that appears at ``path`` only when complete.

    Parameters
    ----------
    path : str or path-like
        Final location. Its parent folder is created if missing.
    mode : {"wb", "w", "wt"}, default="wb"
        Binary or text writing.
    encoding : str, default="utf-8"
        Encoding in text mode; ignored in binary mode.

    Yields
    ------
    file object
        A temporary file in the same folder as ``path``; its ``name`` is the
        temporary path (e.g. to check the content before the rename). On a
        normal exit it is flushed, synced to disk and renamed onto ``path``,
        replacing any old file. If the block raises, the temporary file is
        removed, ``path`` is left as it was, and the exception propagates. A
        ``path`` that exists and is not a regular file (a folder, ``/dev/null``,
        a pipe) is refused with a ValueError before anything is written.

    Examples
    --------
    >>> with atomic_open(tmp / "out.bin") as f:  # doctest: +SKIP
    ...     f.write(b"data")
    """
    if mode not in _WRITE_MODES:
        raise ValueError(f"mode must be one of {_WRITE_MODES}, got {mode!r}")
    target = Path(path)
    if target.exists() and not target.is_file():  # os.replace would put a file in its place
        raise ValueError(f"{target} exists and is not a regular file (a folder, device or pipe); it is not replaced")
    target.parent.mkdir(parents=True, exist_ok=True)
    file_mode = _final_mode(target)
    fd, tmp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    os.close(fd)  # reopened by name so that ``f.name`` is the temporary path
    tmp = Path(tmp_name)
    try:
        if "b" in mode:
            f: IO[Any] = open(tmp, "wb")
        else:
            f = open(tmp, "w", encoding=encoding, newline="")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    """Best effort: make the rename durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`).

    Parameters
    ----------
    path : str or path-like
        Target file; the parent folder is created if missing.
    data : bytes
        Content.

    Returns
    -------
    pathlib.Path
        The target path.
    """
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8"
) -> Path:
    """Write ``text`` to ``path`` atomically, without newline translation.

    Parameters
    ----------
    path : str or path-like
        Target file; the parent folder is created if missing.
    text : str
        Content.
    encoding : str, default="utf-8"
        Text encoding.

    Returns
    -------
    pathlib.Path
        The target path.
    """
    return atomic_write_bytes(path, text.encode(encoding))


def _open_read(path: str | os.PathLike[str], compression: str | None) -> IO[bytes]:
    """Open ``path`` for binary reading, decompressing with ``compression``."""
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "bz2":
        return bz2.open(path, "rb")
    return open(path, "rb")


def _compression_of(path: str | os.PathLike[str]) -> str | None:
    """Compression implied by the file name: ``"gzip"``, ``"bz2"`` or None."""
    suffix = Path(path).suffix.lower()
    return {".gz": "gzip", ".bz2": "bz2"}.get(suffix)


def _md5_of(path: str | os.PathLike[str], compression: str | None) -> str:
    digest = hashlib.md5()
    with _open_read(path, compression) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def md5_file(path: str | os.PathLike[str], *, decompress: bool = False) -> str:
    """Return the hexadecimal md5 of a file, read in chunks.

    Parameters
    ----------
    path : str or path-like
        File to hash.
    decompress : bool, default=False
        Hash the decompressed bytes instead: gzip for a ``.gz`` name, bzip2 for
        a ``.bz2`` name. Other names are hashed as they are.

    Returns
    -------
    str
        32 lowercase hexadecimal digits.

    Raises
    ------
    OSError, EOFError
        If a compressed file is damaged or truncated.
    """
    return _md5_of(path, _compression_of(path) if decompress else None)


# ------------------------------------------------------------------------ metric files

_METRIC_KEYS = ("components", "mahalanobis")


def save_metric(path: str | os.PathLike[str], components: Any, *, metadata: dict | None = None) -> Path:
    """Save a metric as ``.npz``: ``components`` (L, with ``M = L.T @ L``) and JSON metadata.

    Written atomically; read back with :func:`load_metric` (no pickle involved).
    """
    import io
    import json

    import numpy as np

    L = np.asarray(components, dtype=np.float64)
    if L.ndim != 2 or L.size == 0:
        raise ValueError(f"components must be a non-empty 2-D array (r, d), got shape {L.shape}")
    if not np.isfinite(L).all():
        raise ValueError("components contains NaN or infinity; all values must be finite")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict of JSON values or None, got {type(metadata).__name__}")
    try:
        text = json.dumps(metadata or {}, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must hold JSON values only (str, finite numbers, bool, None, lists, "
                         f"dicts with str keys): {exc}") from None
    buf = io.BytesIO()
    np.savez(buf, components=L, metadata=np.array(text))
    return atomic_write_bytes(path, buf.getvalue())


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


class _MetricFileError(ValueError):
    """A readable metric file with the wrong content (raised as it is)."""


def read_metric(path: str | os.PathLike[str]) -> tuple[Any, str, dict]:
    """Read a metric file as stored: returns ``(array, entry, metadata)``.

    ``entry`` is ``"components"`` or ``"mahalanobis"`` (the ``.npz`` entry read) or ``"array"``
    (a ``.npy`` file). The format is told by the file's first bytes, not its name. A missing,
    truncated or corrupt file, a pickled (object) array, an ``.npz`` with neither or both
    entries, or metadata that is not a JSON object raises ValueError (FileNotFoundError when
    missing) naming the path. Shapes and values are checked by :func:`load_metric`.
    """
    import json
    import zipfile
    import zlib

    import numpy as np

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"metric file {path} is a folder; expected a .npz or .npy file")
    if not path.is_file():
        raise FileNotFoundError(f"metric file {path} not found")
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(_NPY_MAGIC):
        kind = "npy"
    elif head[:4] in _ZIP_MAGICS:
        kind = "npz"
    else:
        raise ValueError(f"metric file {path} could not be read: it is neither a .npy nor a .npz file "
                         f"(it starts with {head!r})")
    damaged = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, UnicodeDecodeError)
    try:
        if kind == "npy":
            return np.load(path, allow_pickle=False), "array", {}
        with np.load(path, allow_pickle=False) as data:
            present = [k for k in _METRIC_KEYS if k in data.files]
            if len(present) != 1:
                what = "both" if present else "neither of"
                raise _MetricFileError(f"metric file {path} holds {sorted(data.files)}: {what} "
                                       f"{list(_METRIC_KEYS)}; expected exactly one of them")
            key = present[0]
            mat = data[key]
            meta = {}
            if "metadata" in data.files:
                try:
                    meta = json.loads(str(data["metadata"]))
                except ValueError as exc:
                    raise _MetricFileError(f"metric file {path}: entry 'metadata' is not JSON: {exc}") from None
                if not isinstance(meta, dict):
                    raise _MetricFileError(f"metric file {path}: entry 'metadata' must be a JSON object, "
                                           f"got {type(meta).__name__}")
    except _MetricFileError:
        raise
    except damaged as exc:
        raise ValueError(f"metric file {path} could not be read as .{kind} (truncated, corrupt, or holding "
                         f"pickled objects, which are never loaded): "
                         f"{type(exc).__name__}: {exc}") from None
    return mat, key, meta


def load_metric(path: str | os.PathLike[str], *, n_features: int | None = None) -> tuple[Any, dict]:
    """Read and check a metric file: returns ``(matrix, metadata)``.

    ``.npz`` files hold ``components`` (L, shape (r, d)) or ``mahalanobis`` (M, symmetric PSD,
    shape (d, d)) and optional JSON ``metadata``; a ``.npy`` file holds one matrix (square: M,
    else L). The matrix is returned to be passed as ``metric=`` (a square M, or L: a square L
    is returned as ``L.T @ L``, so the two readings agree).

    Parameters
    ----------
    path : path
    n_features : int, default=None
        The data's feature count d: the matrix must then be (d, d) or (r, d).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        A corrupt or truncated file, a wrong entry, a wrong shape (the message names the file,
        the entry, the expected and the received shape), NaN or infinity, a non-PSD ``M``.
    """
    from ._validation import check_metric_array

    mat, entry, meta = read_metric(path)
    return check_metric_array(mat, entry=entry, source=str(path), n_features=n_features), meta
