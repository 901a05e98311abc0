"""LMNN-PL vs LMNN vs Euclidean: the perturbation-loss protocol on wine, breast_cancer and splice.

A thin caller of the library: the protocol (splits, grids, CV and its selection rule, metrics,
noise, soundness checks) lives in ``robust_metric_learning/experiments/lmnn_pl.py`` (read its
docstring) and runs through the same cached, resumable runner as ``rml reproduce``. This is

    rml reproduce lmnn-pl --datasets wine breast_cancer splice --out benchmarks/results/lmnn_pl

with torch held to one thread per process (parallelism, if any, comes from ``--n-jobs``). Each
(dataset, method, split) result is cached under ``OUT/cache`` (verified, recomputed when the
protocol changes); ``OUT`` gets ``report.md``, ``results.json`` and the plots.

Run::

    OMP_WAIT_POLICY=PASSIVE RML_DATA=../shared/data python benchmarks/bench_lmnn_pl.py \\
        [--datasets wine breast_cancer splice] [--seeds 0 1 ... 19] [--n-jobs 1] [--force]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "lmnn_pl"
DATASETS = ["wine", "breast_cancer", "splice"]


def main() -> None:
    from robust_metric_learning.experiments import lmnn_pl

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=DATASETS)
    p.add_argument("--seeds", nargs="+", type=int, default=list(lmnn_pl.DEFAULT_SEEDS))
    p.add_argument("--methods", nargs="+", default=list(lmnn_pl.METHODS), choices=lmnn_pl.METHODS)
    p.add_argument("--n-jobs", type=int, default=1, help="joblib workers for the CV search, certification, noise")
    p.add_argument("--force", action="store_true", help="delete the cached results first")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()

    import torch

    from robust_metric_learning.experiments import reproduce

    torch.set_num_threads(1)
    if args.force and (args.out / "cache").is_dir():
        shutil.rmtree(args.out / "cache")
    t0 = time.perf_counter()
    reproduce("lmnn-pl", args.out, datasets=args.datasets, methods=args.methods, seeds=args.seeds,
              n_jobs=args.n_jobs)
    print((args.out / "report.md").read_text())
    print(f"\nthis invocation: {time.perf_counter() - t0:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
