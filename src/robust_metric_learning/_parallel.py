"""The helpers every per-point computation shares: a progress bar and the torch threads each
joblib worker may use (so that workers times threads never exceeds the cores)."""

from __future__ import annotations

import os
import sys

from joblib import effective_n_jobs

__all__ = ["progress_bar", "threads_per_worker"]


def progress_bar(progress: bool | None, total: int, desc: str, *, unit: str = "pt"):
    """A tqdm bar over ``total`` items; ``progress=None`` shows it only on a terminal."""
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if progress is None else not progress
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, leave=False)


def threads_per_worker(n_jobs: int | None) -> int:
    """Torch threads for each of the ``n_jobs`` joblib workers: the cores shared out, at least 1."""
    return max(1, (os.cpu_count() or 1) // max(1, effective_n_jobs(n_jobs)))
