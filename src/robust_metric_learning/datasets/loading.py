"""Loading a named dataset from the data home: split and preprocessing as in the ARML experiments."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .home import _resolve_data_home, get_data_home
from .readers import load_idx, load_libsvm
from .registry import (
    _ENV_VAR,
    _SPECS,
    _SPLIT_SEED,
    _TEST_SIZE,
    DATASET_NAMES,
    Dataset,
    _spec,
)

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
