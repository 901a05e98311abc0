"""Run a published experiment task by task, caching each finished task (one generic loop over the
experiment plugins of :mod:`.plugin`: :mod:`.arml`, :mod:`.lmnn_pl`, :mod:`.dml`, :mod:`.robrank`,
:mod:`.smoothing`)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .._validation import check_seed
from .cache import ResultCache, fingerprint

__all__ = ["reproduce", "EXPERIMENTS"]

#: experiment name -> its plugin module
EXPERIMENTS = {"arml": "arml", "lmnn-pl": "lmnn_pl", "dml": "dml", "robrank": "robrank", "smoothing": "smoothing"}


def _cached(cache: ResultCache, key: tuple, settings: dict, compute: Callable[[], dict], verbose: bool, label: str,
            describe: Callable[[dict], str]) -> dict:
    """The cached payload of ``key`` if valid under ``settings``, else ``compute()``, stored."""
    fp = fingerprint(settings)
    payload = cache.load(key, fp)
    status = "cached"
    if payload is None:
        payload = compute()
        cache.store(key, fp, payload)
        status = describe(payload)
    if verbose:
        print(f"{label}: {status}", flush=True)
    return payload


def reproduce(name: str, out: str | Path, *, datasets: Sequence[str] | None = None,
              methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None, n_eval: int | None = None,
              shuffle_seed: int = 42, n_jobs: int | None = None, data_home=None, verbose: bool = True,
              profile: str | None = None) -> dict:
    """Run experiment ``name`` into folder ``out``: cached task results under ``out/cache``,
    then ``report.md``, ``results.json`` and plots per dataset.

    ``"arml"``: ``seeds`` are learner seeds (default 0), ``n_eval`` test points after a shuffle
    with ``shuffle_seed`` (default: the dataset's, 1000 unless ``experiments/arml.py`` states
    otherwise); the training subsample and learner settings of each dataset are those of
    ``experiments.arml.dataset_settings``. ``"lmnn-pl"``: ``seeds`` are the seeds of the random
    70/30 splits (default 0-19), every test point is evaluated (``n_eval`` must stay None).
    ``"dml"``: one task per (dataset, loss, defence, seed). Interrupting and rerunning recomputes
    only the tasks not yet finished; a corrupt or partial cache entry is detected (checksum) and
    recomputed. ``"robrank"``: one task per (dataset, defence, seed) of RobRank's ranking-attack
    protocol under ``profile`` (see :mod:`.robrank`; the only experiment that takes one).
    ``"smoothing"``: one task per (dataset, sigma, seed): certified retrieval by randomized
    smoothing (see :mod:`.smoothing`); ``n_eval`` limits the queries certified.
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {list(EXPERIMENTS)}, got {name!r}")
    if seeds is not None:
        seeds = list(seeds)
        if not seeds:
            raise ValueError("seeds must be a non-empty list of integer seeds, got []")
        seeds = [check_seed(s, name="seeds") for s in seeds]
    plugin = importlib.import_module(f".{EXPERIMENTS[name]}", __package__)
    if n_jobs is not None:
        if not getattr(plugin, "TAKES_N_JOBS", False):
            raise ValueError(f"n_jobs applies to the experiments whose per-point work runs in joblib workers "
                             f"(arml, lmnn-pl), not {name!r}, which runs in one torch process; got {n_jobs!r}")
        if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0:
            raise ValueError(f"n_jobs must be a non-zero integer (-1: all cores) or None, got {n_jobs!r}")
    out = Path(out)
    extra = {}
    if profile is not None:
        if "profile" not in inspect.signature(plugin.plan).parameters:
            raise ValueError(f"profile applies to the experiments that have profiles (robrank), not {name!r}; "
                             f"got {profile!r}")
        extra["profile"] = profile
    tasks, context = plugin.plan(name, out, datasets=datasets, methods=methods, seeds=seeds, n_eval=n_eval,
                                 shuffle_seed=shuffle_seed, n_jobs=n_jobs, data_home=data_home, verbose=verbose,
                                 **extra)
    cache = ResultCache(out / "cache")
    results: dict = {}
    for task in tasks:
        payload = _cached(cache, task.key, task.settings, task.compute, verbose, task.label, task.describe)
        node = results
        for part in task.path[:-1]:
            node = node.setdefault(part, {})
        node[task.path[-1]] = payload
    return plugin.report(name, out, results, context)
