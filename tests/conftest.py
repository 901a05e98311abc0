"""Shared pytest fixtures and helpers (``from conftest import random_psd``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.preprocessing import MinMaxScaler


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the real datasets: ``$RML_DATA``, else ``../shared/data``; skip if absent."""
    env = os.environ.get("RML_DATA")
    folder = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not folder.is_dir():
        pytest.skip(f"shared data folder {folder} not found (set RML_DATA)")
    return folder


def random_psd(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    """A random PSD (d, d) matrix of the given rank (full by default)."""
    A = rng.normal(size=(rank or d, d))
    return A.T @ A


@pytest.fixture(scope="session")
def digits_subset():
    """300 training and 40 test points of scikit-learn's digits, min-max scaled, fixed order."""
    X, y = load_digits(return_X_y=True)
    X = MinMaxScaler().fit_transform(X)
    idx = np.random.default_rng(0).permutation(len(X))
    return X[idx[:300]], y[idx[:300]], X[idx[300:340]], y[idx[300:340]]
