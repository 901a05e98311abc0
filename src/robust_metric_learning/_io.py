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

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "md5_file"]

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
