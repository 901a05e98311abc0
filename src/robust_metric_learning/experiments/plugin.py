"""The protocol every experiment module (:mod:`.arml`, :mod:`.lmnn_pl`, :mod:`.dml`) follows, so
that :func:`~.runner.reproduce` is one generic, cached, resumable loop.

An experiment module exposes:

- ``METHODS``: the names ``--methods`` may take;
- ``TAKES_N_JOBS = True`` where its per-point work runs in joblib workers (``n_jobs`` is refused
  for the others, which run in one torch process);
- ``plan(name, out, *, datasets, methods, seeds, n_eval, shuffle_seed, n_jobs, data_home,
  verbose) -> (tasks, context)``: the :class:`Task` list (arguments it does not take raise a
  clear error) and whatever its report needs besides the results;
- ``report(name, out, results, context) -> dict``: writes ``report.md``, ``results.json`` and the
  plots under ``out`` and returns the summary; ``results`` nests each task's payload under its
  ``path``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

__all__ = ["Task", "row_label", "split_row_label"]


class Task(NamedTuple):
    """One cached unit of an experiment."""

    key: tuple  #: cache key, e.g. ("arml", "digits", "LMNN", "seed0")
    settings: dict  #: everything the result depends on (its fingerprint)
    path: tuple  #: where the payload goes in the results given to ``report``
    label: str  #: progress line
    compute: Callable[[], dict]  #: the payload, computed
    describe: Callable[[dict], str]  #: a one-line summary of a fresh payload
    extra: Any = None


def row_label(method: str, seed: int, seeds) -> str:
    """A result row's name in a report: the method, with its seed when the run has several seeds
    (so that no seed's result replaces another's under the same ``path``)."""
    return method if len(seeds) == 1 else f"{method} seed {seed}"


def split_row_label(label: str) -> tuple[str, str | None]:
    """The inverse of :func:`row_label`: ``(method, seed)``, the seed (as written) None where the
    label has none."""
    method, sep, seed = label.partition(" seed ")
    return method, (seed if sep else None)
