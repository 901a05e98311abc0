"""The data home: the folder the datasets are read from and downloaded to."""

from __future__ import annotations

import os
from pathlib import Path

from .registry import _ENV_VAR

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
