"""The named datasets: their files (URLs and checksums), the split/format of each, and the
result type of :func:`~robust_metric_learning.datasets.load_dataset`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

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
