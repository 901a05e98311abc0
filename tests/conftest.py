"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the real datasets: ``$RML_DATA``, else ``../shared/data``; skip if absent."""
    env = os.environ.get("RML_DATA")
    folder = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not folder.is_dir():
        pytest.skip(f"shared data folder {folder} not found (set RML_DATA)")
    return folder
