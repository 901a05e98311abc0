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

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "load_metric", "md5_file", "save_metric"]

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
        removed, ``path`` is left as it was, and the exception propagates.

    Examples
    --------
    >>> with atomic_open(tmp / "out.bin") as f:  # doctest: +SKIP
    ...     f.write(b"data")
    """
    if mode not in _WRITE_MODES:
        raise ValueError(f"mode must be one of {_WRITE_MODES}, got {mode!r}")
    target = Path(path)
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
    if L.ndim != 2:
        raise ValueError(f"components must be a 2-D array, got shape {L.shape}")
    buf = io.BytesIO()
    np.savez(buf, components=L, metadata=np.array(json.dumps(metadata or {}, sort_keys=True)))
    return atomic_write_bytes(path, buf.getvalue())


def load_metric(path: str | os.PathLike[str]) -> tuple[Any, dict]:
    """Read a metric file: returns ``(matrix, metadata)``.

    ``.npz`` files hold ``components`` (L, any shape (r, d)) or ``mahalanobis`` (M, (d, d))
    and optional JSON ``metadata``; a ``.npy`` file holds one matrix (square: M, else L).
    The matrix is returned as stored, to be passed as ``metric=`` (a square M, or L: a square
    L is returned as ``L.T @ L``, so the two readings agree).
    """
    import json

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metric file {path} not found")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False), {}
        with np.load(path, allow_pickle=False) as data:
            key = next((k for k in _METRIC_KEYS if k in data.files), None)
            if key is None:
                raise ValueError(f"metric file {path} holds {sorted(data.files)}; expected one of {list(_METRIC_KEYS)}")
            mat = data[key]
            meta = json.loads(str(data["metadata"])) if "metadata" in data.files else {}
    except (OSError, ValueError, EOFError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith("metric file"):
            raise
        raise ValueError(f"metric file {path} could not be read as .npz/.npy: {exc}") from None
    if key == "components" and mat.ndim == 2 and mat.shape[0] == mat.shape[1]:
        mat = mat.T @ mat  # a square L would be read as M: hand over M itself
    return mat, meta
