"""The helpers every per-point computation shares: a progress bar, the torch threads each
joblib worker may use (so that workers times threads never exceeds the cores), and a model held
in eval mode for the length of a computation."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from joblib import effective_n_jobs

__all__ = ["eval_mode", "progress_bar", "threads_per_worker"]


@contextlib.contextmanager
def eval_mode(model) -> Iterator[None]:
    """Put ``model`` (a ``torch.nn.Module``) in eval mode, and give every one of its modules back
    the mode it had on leaving, however the block ends."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def progress_bar(progress: bool | None, total: int, desc: str, *, unit: str = "pt"):
    """A tqdm bar over ``total`` items; ``progress=None`` shows it only on a terminal."""
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if progress is None else not progress
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, leave=False)


def threads_per_worker(n_jobs: int | None) -> int:
    """Torch threads for each of the ``n_jobs`` joblib workers: the cores shared out, at least 1."""
    return max(1, (os.cpu_count() or 1) // max(1, effective_n_jobs(n_jobs)))
