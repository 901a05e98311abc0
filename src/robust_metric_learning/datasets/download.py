"""Checksummed downloads of the dataset files (never implicit; atomic; verified before use)."""

from __future__ import annotations

import http.client
import logging
import os
import urllib.error
import urllib.request
from numbers import Real
from pathlib import Path

from .._io import _compression_of, _md5_of, atomic_open
from .._validation import Interval, check_params
from .home import get_data_home
from .registry import _CHUNK, RemoteFile, _files_of, _spec

logger = logging.getLogger("robust_metric_learning.datasets")


class DownloadError(OSError):
    """A file could not be fetched (network error, HTTP error, short read)."""


# --------------------------------------------------------------------------- download


def _check_download(tmp_path: str, remote: RemoteFile, url: str, dest: Path) -> None:
    try:
        received = _md5_of(tmp_path, _compression_of(remote.path))
    except (OSError, EOFError, ValueError) as exc:
        received = f"none: the file cannot be decompressed ({exc})"
    if received != remote.md5:
        msg = (
            f"Checksum mismatch for {remote.path!r} (dataset {remote.dataset!r}) "
            f"downloaded from {url}: expected md5 {remote.md5} (of the decompressed "
            f"bytes), received md5 {received}. The download was deleted; nothing "
            f"new was written to {dest}."
        )
        if remote.note:
            msg += " " + remote.note
        raise ValueError(msg)


def _fetch(remote: RemoteFile, url: str, dest: Path, timeout: float) -> None:
    hint = (
        f"Check the network, pass base_url= a mirror with the data-home layout, "
        f"or copy the file to {dest} by hand."
    )

    def network_error(exc: BaseException) -> DownloadError:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return DownloadError(
            f"Could not download {remote.path!r} (dataset {remote.dataset!r}) "
            f"from {url}: {reason}. {hint}"
        )

    request = urllib.request.Request(url, headers={"User-Agent": "robust-metric-learning"})
    logger.info("downloading %s to %s", url, dest)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise network_error(exc) from exc
    with response, atomic_open(dest, "wb") as out:
        length = response.headers.get("Content-Length")
        received = 0
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise network_error(exc) from exc
            if not chunk:
                break
            out.write(chunk)
            received += len(chunk)
        if length is not None and length.isdigit() and received != int(length):
            raise DownloadError(
                f"Incomplete download of {remote.path!r} from {url}: received "
                f"{received} of {length} bytes. {hint}"
            )
        out.flush()
        _check_download(out.name, remote, url, dest)


def download_dataset(
    name: str,
    *,
    data_home: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    force: bool = False,
    timeout: float = 60.0,
) -> list[Path]:
    """Download the files of a dataset into the data home and verify them.

    Parameters
    ----------
    name : str
        One of :data:`DATASET_NAMES`. Bundled sets need no download.
    data_home : str or path-like, default=None
        Target folder, see :func:`get_data_home`.
    base_url : str, default=None
        Mirror with the data-home layout: each file is fetched from
        ``base_url.rstrip("/") + "/" + <relative path>`` instead of its
        default URL (see :data:`REMOTE_FILES`).
    force : bool, default=False
        Download every file, even those already present.
    timeout : float, default=60.0
        Socket timeout in seconds.

    Returns
    -------
    list of pathlib.Path
        The files downloaded (empty when all were present, or bundled).

    Raises
    ------
    ValueError
        Unknown name, or a downloaded file whose md5 (of the decompressed
        bytes) differs from the registry; nothing is written then.
    DownloadError
        Network or HTTP error, or a short read; the message names the URL.

    Notes
    -----
    Each file is streamed to a temporary file beside its target and renamed
    into place only once complete and verified, so a failed download never
    leaves a partial or unverified file (with ``force=True`` an existing file
    is kept when the new copy fails). For usps the checksums are those of the
    project's reference copies; LIBSVM's own files may be formatted
    differently and fail the check.
    """
    spec = _spec(name)
    check_params("download_dataset", {"base_url": base_url, "timeout": timeout, "force": force},
                 {"base_url": [None, str], "timeout": [None, Interval(Real, 0, None, closed="neither")],
                  "force": [bool]})
    if base_url is not None and not base_url.lower().startswith(("http://", "https://", "ftp://", "file://")):
        raise ValueError(f"The 'base_url' parameter of download_dataset must be an http(s), ftp or file URL; "
                         f"got {base_url!r}")
    if spec.kind == "bundled":
        return []
    home = get_data_home(data_home)
    done = []
    for remote in _files_of(name):
        dest = home / remote.path
        if dest.is_file() and not force:
            continue
        url = remote.url if base_url is None else f"{base_url.rstrip('/')}/{remote.path}"
        _fetch(remote, url, dest, timeout)
        done.append(dest)
    return done
