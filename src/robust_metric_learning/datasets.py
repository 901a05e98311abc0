"""Named datasets, file readers (IDX, LIBSVM) and checksummed downloads.

Datasets are read from a *data home* folder (see :func:`get_data_home`) in
their standard public formats; scikit-learn's bundled ``digits``, ``iris``,
``wine`` and ``breast_cancer`` need no files. Nothing is ever downloaded
implicitly: :func:`load_dataset` only reads, and a missing file raises a
``FileNotFoundError`` that says how to get it (:func:`download_dataset`, or
``rml datasets --download NAME``).

Layout of the data home::

    mnist/          train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
                    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz
    fashion-mnist/  (same four file names)
    usps/           usps.bz2  usps.t.bz2          (LIBSVM, bzip2)
    libsvm/         pendigits  pendigits.t  splice (LIBSVM, plain text)

Splits and preprocessing follow the ARML experiments:

- mnist, fashion-mnist, usps, pendigits: the official train/test files.
- splice (only LIBSVM's training file, 1,000 rows) and the bundled sets: a
  fixed stratified split, ``train_test_split(X, y, test_size=0.3,
  stratify=y, random_state=0)``.
- Images (mnist, fashion-mnist): pixels / 255, flattened to 784 features.
  All other sets: min-max scaling fitted on the training part and applied to
  both parts, so training features lie in [0, 1] (test values may fall
  outside).
- Labels are encoded 0..C-1 in the order of the sorted original training
  labels (USPS 1..10 becomes 0..9 = digit; splice -1/+1 becomes 0/1).
"""

from __future__ import annotations

import http.client
import logging
import numbers
import os
import struct
import urllib.error
import urllib.request
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._io import _compression_of, _md5_of, _open_read, atomic_open

__all__ = [
    "DATASET_NAMES",
    "REMOTE_FILES",
    "Dataset",
    "DownloadError",
    "RemoteFile",
    "dataset_status",
    "download_dataset",
    "get_data_home",
    "load_dataset",
    "load_idx",
    "load_libsvm",
]

logger = logging.getLogger(__name__)

DATASET_NAMES = (
    "digits",
    "iris",
    "wine",
    "breast_cancer",
    "mnist",
    "fashion-mnist",
    "usps",
    "pendigits",
    "splice",
)

_ENV_VAR = "RML_DATA"
_TEST_SIZE = 0.3
_SPLIT_SEED = 0
_CHUNK = 1 << 20


class Dataset(NamedTuple):
    """A train/test split: float64 features, int64 labels encoded 0..C-1.

    Unpacks as ``X_train, y_train, X_test, y_test = load_dataset("digits")``.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


class DownloadError(OSError):
    """A file could not be fetched (network error, HTTP error, short read)."""


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file of a dataset.

    Attributes
    ----------
    dataset : str
        Name of the dataset the file belongs to.
    path : str
        Location relative to the data home, with ``/`` separators.
    url : str
        Default public URL.
    md5 : str
        md5 of the *decompressed* bytes (the plain bytes for uncompressed
        files), so a recompressed copy with the same content is accepted.
    note : str, default=""
        Caveat shown when the checksum does not match.
    """

    dataset: str
    path: str
    url: str
    md5: str
    note: str = ""


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_LIBSVM_URL = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/"
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_USPS_NOTE = (
    "The usps checksums are those of the project's reference copies (converted "
    "from the USPS h5 data). LIBSVM's own usps files hold the same samples but "
    "may format numbers differently, so their bytes can differ; if you trust "
    "the source, place the files in the data home by hand."
)


def _registry() -> dict[str, RemoteFile]:
    md5s = {
        ("mnist", "train-images-idx3-ubyte"): "6bbc9ace898e44ae57da46a324031adb",
        ("mnist", "train-labels-idx1-ubyte"): "a25bea736e30d166cdddb491f175f624",
        ("mnist", "t10k-images-idx3-ubyte"): "2646ac647ad5339dbf082846283269ea",
        ("mnist", "t10k-labels-idx1-ubyte"): "27ae3e4e09519cfbb04c329615203637",
        ("fashion-mnist", "train-images-idx3-ubyte"): "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        ("fashion-mnist", "train-labels-idx1-ubyte"): "9018921c3c673c538a1fc5bad174d6f9",
        ("fashion-mnist", "t10k-images-idx3-ubyte"): "8181f5470baa50b63fa0f6fddb340f0a",
        ("fashion-mnist", "t10k-labels-idx1-ubyte"): "15d484375f8d13e6eb1aabb0c3f46965",
    }
    files = []
    for name, base in (("mnist", _MNIST_URL), ("fashion-mnist", _FASHION_URL)):
        for stem in _IDX_FILES:
            fname = f"{stem}.gz"
            files.append(RemoteFile(name, f"{name}/{fname}", base + fname, md5s[name, stem]))
    files += [
        RemoteFile(
            "usps", "usps/usps.bz2", _LIBSVM_URL + "multiclass/usps.bz2",
            "4f54d629e7a6237b3609b292e0787a44", _USPS_NOTE,
        ),
        RemoteFile(
            "usps", "usps/usps.t.bz2", _LIBSVM_URL + "multiclass/usps.t.bz2",
            "332b79f1732522293af5e102b35e8b23", _USPS_NOTE,
        ),
        RemoteFile(
            "pendigits", "libsvm/pendigits", _LIBSVM_URL + "multiclass/pendigits",
            "639c4b73b413a603c70a5c6a5a947725",
        ),
        RemoteFile(
            "pendigits", "libsvm/pendigits.t", _LIBSVM_URL + "multiclass/pendigits.t",
            "bf170b8a29aa5287acd1d583d6002b29",
        ),
        RemoteFile(
            "splice", "libsvm/splice", _LIBSVM_URL + "binary/splice",
            "c85073261cda810ef68e7b7254737129",
        ),
    ]
    return {f.path: f for f in files}


#: Every downloadable file, keyed by its path relative to the data home.
REMOTE_FILES: dict[str, RemoteFile] = _registry()


@dataclass(frozen=True)
class _Spec:
    kind: str  # "bundled", "idx", "libsvm" (train + test files), "libsvm-split"
    train: tuple[str, ...] = ()  # relative paths: (features[, labels])
    test: tuple[str, ...] = ()
    n_features: int | None = None


def _idx_spec(name: str) -> _Spec:
    return _Spec(
        "idx",
        train=(f"{name}/train-images-idx3-ubyte.gz", f"{name}/train-labels-idx1-ubyte.gz"),
        test=(f"{name}/t10k-images-idx3-ubyte.gz", f"{name}/t10k-labels-idx1-ubyte.gz"),
    )


_SPECS: dict[str, _Spec] = {
    "digits": _Spec("bundled"),
    "iris": _Spec("bundled"),
    "wine": _Spec("bundled"),
    "breast_cancer": _Spec("bundled"),
    "mnist": _idx_spec("mnist"),
    "fashion-mnist": _idx_spec("fashion-mnist"),
    "usps": _Spec("libsvm", ("usps/usps.bz2",), ("usps/usps.t.bz2",), 256),
    "pendigits": _Spec("libsvm", ("libsvm/pendigits",), ("libsvm/pendigits.t",), 16),
    "splice": _Spec("libsvm-split", ("libsvm/splice",), (), 60),
}


def _spec(name: str) -> _Spec:
    if not isinstance(name, str) or name not in _SPECS:
        raise ValueError(
            f"Unknown dataset name {name!r}; valid names are: {', '.join(DATASET_NAMES)}"
        )
    return _SPECS[name]


def _files_of(name: str) -> list[RemoteFile]:
    return [f for f in REMOTE_FILES.values() if f.dataset == name]


# --------------------------------------------------------------------------- data home


def _resolve_data_home(data_home: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """Return the data home and a phrase saying where it came from."""
    if data_home is not None:
        return Path(data_home).expanduser(), "given as the data_home argument"
    env = os.environ.get(_ENV_VAR, "")
    if env:
        return Path(env).expanduser(), f"from the {_ENV_VAR} environment variable"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    cache = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (
        cache / "robust-metric-learning",
        f"the default cache folder, used because {_ENV_VAR} is not set",
    )


def get_data_home(data_home: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder that datasets are read from and downloaded to.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Used as given when not None. Otherwise the ``RML_DATA`` environment
        variable, else ``$XDG_CACHE_HOME/robust-metric-learning``, else
        ``~/.cache/robust-metric-learning``.

    Returns
    -------
    pathlib.Path
        The folder (not created here).
    """
    return _resolve_data_home(data_home)[0]


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


# --------------------------------------------------------------------------- loading


def _missing_error(
    name: str, missing: list[str], home: Path, source: str, data_home
) -> FileNotFoundError:
    lines = [
        f"Dataset {name!r} needs {len(missing)} file(s) that are missing:",
        *(f"  {rel}  (looked for {home / rel})" for rel in missing),
        f"Data home: {home} ({source}).",
    ]
    call = f"robust_metric_learning.datasets.download_dataset({name!r}"
    call += f", data_home={str(home)!r})" if data_home is not None else ")"
    lines.append(
        f"To get the data: run `rml datasets --download {name}`, or call {call}; "
        f"or set {_ENV_VAR} to a folder that already holds the files."
    )
    return FileNotFoundError("\n".join(lines))


def _split(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    return tuple(
        train_test_split(X, y, test_size=_TEST_SIZE, stratify=y, random_state=_SPLIT_SEED)
    )


def _encode(y_train: np.ndarray, y_test: np.ndarray, name: str):
    classes = np.unique(y_train)
    unseen = np.setdiff1d(np.unique(y_test), classes)
    if unseen.size:
        raise ValueError(
            f"Dataset {name!r}: test labels {unseen.tolist()} do not occur in the "
            f"training labels {classes.tolist()}"
        )
    enc_train = np.searchsorted(classes, y_train).astype(np.int64)
    enc_test = np.searchsorted(classes, y_test).astype(np.int64)
    return enc_train, enc_test


def _minmax(X_train: np.ndarray, X_test: np.ndarray):
    """Min-max scaling fitted on the training part (as sklearn's MinMaxScaler).

    Computed as ``(x - min) / (max - min)`` so the training range is exactly
    [0, 1]; constant features map to 0.
    """
    lo = X_train.min(axis=0)
    rng = X_train.max(axis=0) - lo
    rng[rng == 0] = 1.0
    return (X_train - lo) / rng, (X_test - lo) / rng


def _load_bundled(name: str):
    from sklearn import datasets as skd

    loader = {
        "digits": skd.load_digits,
        "iris": skd.load_iris,
        "wine": skd.load_wine,
        "breast_cancer": skd.load_breast_cancer,
    }[name]
    X, y = loader(return_X_y=True)
    return _split(np.asarray(X, dtype=np.float64), np.asarray(y))


def _load_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    X, y = load_idx(images), load_idx(labels)
    if X.ndim != 3 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(
            f"{images} has shape {X.shape} and {labels} has shape {y.shape}; "
            "expected (n, rows, cols) images and (n,) labels with the same n"
        )
    return X.reshape(X.shape[0], -1).astype(np.float64), y


def load_dataset(
    name: str,
    *,
    data_home: str | os.PathLike[str] | None = None,
    scale: bool = True,
) -> Dataset:
    """Load a named dataset with its standard train/test split.

    Parameters
    ----------
    name : str
        One of :data:`DATASET_NAMES`.
    data_home : str or path-like, default=None
        Folder with the files, see :func:`get_data_home`. Not used by the
        bundled sets (digits, iris, wine, breast_cancer).
    scale : bool, default=True
        Images: pixels / 255. Others: min-max scaling fitted on the training
        part, so training features lie in [0, 1]. False returns the raw
        feature values (images still flattened to 784 columns).

    Returns
    -------
    Dataset
        ``(X_train, y_train, X_test, y_test)``; float64 features, int64
        labels 0..C-1 in the order of the sorted original labels.

    Raises
    ------
    ValueError
        Unknown name, or a malformed file.
    FileNotFoundError
        A needed file is not in the data home; the message says where it was
        looked for and how to download it. Nothing is downloaded here.

    Notes
    -----
    splice (1,000 rows, LIBSVM's training file only) and the bundled sets
    use ``train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)``.

    Examples
    --------
    >>> X_tr, y_tr, X_te, y_te = load_dataset("iris")
    >>> X_tr.shape, X_te.shape
    ((105, 4), (45, 4))
    """
    spec = _spec(name)
    if spec.kind == "bundled":
        X_tr, X_te, y_tr, y_te = _load_bundled(name)
    else:
        home, source = _resolve_data_home(data_home)
        needed = spec.train + spec.test
        missing = [rel for rel in needed if not (home / rel).is_file()]
        if missing:
            raise _missing_error(name, missing, home, source, data_home)
        if spec.kind == "idx":
            X_tr, y_tr = _load_idx_pair(*(home / rel for rel in spec.train))
            X_te, y_te = _load_idx_pair(*(home / rel for rel in spec.test))
        elif spec.kind == "libsvm":
            X_tr, y_tr = load_libsvm(home / spec.train[0], n_features=spec.n_features)
            X_te, y_te = load_libsvm(home / spec.test[0], n_features=spec.n_features)
        else:  # "libsvm-split"
            X, y = load_libsvm(home / spec.train[0], n_features=spec.n_features)
            X_tr, X_te, y_tr, y_te = _split(X, y)
    y_tr, y_te = _encode(y_tr, y_te, name)
    if scale:
        if spec.kind == "idx":
            X_tr /= 255.0
            X_te /= 255.0
        else:
            X_tr, X_te = _minmax(X_tr, X_te)
    return Dataset(
        np.ascontiguousarray(X_tr, dtype=np.float64),
        y_tr,
        np.ascontiguousarray(X_te, dtype=np.float64),
        y_te,
    )


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


def dataset_status(
    *, data_home: str | os.PathLike[str] | None = None
) -> dict[str, dict]:
    """Report which datasets can be loaded from the data home.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Folder to inspect, see :func:`get_data_home`.

    Returns
    -------
    dict
        For each name of :data:`DATASET_NAMES`: ``{"available": bool,
        "files": [Path, ...], "missing": [Path, ...], "bundled": bool}``.
        Bundled sets are always available and list no files.
    """
    home = get_data_home(data_home)
    status = {}
    for name in DATASET_NAMES:
        spec = _SPECS[name]
        files = [home / rel for rel in spec.train + spec.test]
        missing = [p for p in files if not p.is_file()]
        status[name] = {
            "available": not missing,
            "files": files,
            "missing": missing,
            "bundled": spec.kind == "bundled",
        }
    return status
