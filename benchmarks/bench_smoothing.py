"""Certified retrieval by randomized smoothing: what it certifies and what it costs.

The setting of ``rml reproduce dml`` (experiments/dml.py): SmallCNN trained on 10000 MNIST (or
Fashion-MNIST) images of classes 0-4 with the protocol's triplet loss and miner, but on noisy
inputs (``GaussianAugmentation(sigma)``); retrieval on the protocol's 1000 test images of classes
5-9 (leave-one-out). For each sigma: the smoothed top-1 label's certificate
(:func:`~robust_metric_learning.deep.smoothing.smoothed_top1_certificate`, alpha 0.001) on the
first ``--queries`` queries with ``--samples`` noise samples each: smoothed R@1, certified R@1
at l2 radii 0.1, 0.25, 0.5, 1.0, the wall time of the certification and its time per query; and
the Lipschitz certificate of the same model (:func:`~robust_metric_learning.deep.certified_retrieval`)
at the same radii, for comparison; and the soundness check: the l2 attack on the smoothed decision
(:func:`~robust_metric_learning.deep.attack_smoothed_top1`, 100 steps of 64 noisy copies, 2000
copies to test the decision at the perturbed point) on the first ``--attack`` certified queries,
within 1x (must break none) and 2x their certified radii. One torch thread unless ``--threads``.

Run::

    python benchmarks/bench_smoothing.py [--dataset mnist] [--sigmas 0.12 0.25 0.5] [--queries 1000] [--samples 10000]
        [--attack 200]

Prints a Markdown table and writes ``benchmarks/results/smoothing.json`` (one entry per
dataset and sigma, replaced when rerun). Without the data files it says so and exits with 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "smoothing.json"
RADII = (0.1, 0.25, 0.5, 1.0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.12, 0.25, 0.5])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--samples", type=int, default=10000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--attack", type=int, default=200, help="certified queries attacked (0: no soundness check)")
    args = p.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("RML_DATA", str(REPO.parent / "shared" / "data"))
    import numpy as np
    import torch

    from robust_metric_learning._io import atomic_write_text
    from robust_metric_learning.datasets import dataset_status
    from robust_metric_learning.deep import (
        GaussianAugmentation,
        attack_smoothed_top1,
        certified_retrieval,
        smoothed_top1_certificate,
        train_embedding,
    )
    from robust_metric_learning.experiments import dml

    if not dataset_status()[args.dataset]["available"]:
        print(f"{args.dataset} is not in the data home ($RML_DATA); nothing to measure")
        return 0
    torch.set_num_threads(args.threads)
    X_tr, y_tr, X_ev, y_ev = dml.load_task_data(args.dataset, 0)
    queries = np.arange(min(args.queries, len(y_ev)))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    rows = []
    for sigma in args.sigmas:
        model = dml.make_model(args.dataset, 0)
        loss, miner = dml.make_loss("triplet")
        t0 = time.perf_counter()
        train_embedding(model, X_tr, y_tr, loss=loss, miner=miner, defense=GaussianAugmentation(sigma=sigma), seed=0,
                        progress=False, **dml.TRAIN)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cert = smoothed_top1_certificate(model, X_ev, y_ev, sigma=sigma, radii=RADII, n_samples=args.samples,
                                         alpha=1e-3, queries=queries)
        cert_s = time.perf_counter() - t0
        lip = certified_retrieval(model, X_ev, y_ev, eps=list(RADII), norm="l2")
        attack, attack_s = None, 0.0
        if args.attack:
            t0 = time.perf_counter()
            attack = attack_smoothed_top1(model, X_ev, y_ev, cert, sigma=sigma, scales=[1.0, 2.0],
                                          max_queries=args.attack)
            attack_s = time.perf_counter() - t0
        entry = {"dataset": args.dataset, "sigma": sigma, "queries": int(len(queries)), "samples": args.samples,
                 "alpha": 1e-3, "radii": list(RADII), "smoothed_recall_at_1": cert["recall_at_1"],
                 "certified_recall_at_1": cert["certified_recall_at_1"],
                 "lipschitz_certified_recall_at_1": lip["certified_recall_at_1"], "train_s": train_s,
                 "certify_s": cert_s, "certify_s_per_query": cert_s / len(queries), "threads": args.threads,
                 "attack": attack, "attack_s": attack_s,
                 "machine": platform.processor() or platform.machine(),
                 "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        results[f"{args.dataset}/sigma{sigma:g}"] = entry
        rows.append(entry)
        atomic_write_text(RESULTS, json.dumps(results, indent=1))
    print("| dataset | sigma | smoothed R@1 | " + " | ".join(f"cert R@1 l2 {r:g}" for r in RADII)
          + " | Lipschitz cert R@1 (same radii) | certify s (per query) | attacked: broken at 1x / 2x radius |")
    print("|---|---|---|" + "---|" * len(RADII) + "---|---|---|")
    for e in rows:
        print(f"| {e['dataset']} | {e['sigma']:g} | {e['smoothed_recall_at_1']:.3f} | "
              + " | ".join(f"{v:.3f}" for v in e["certified_recall_at_1"]) + " | "
              + " / ".join(f"{v:.3f}" for v in e["lipschitz_certified_recall_at_1"])
              + f" | {e['certify_s']:.0f} ({e['certify_s_per_query']:.2f}) | "
              + (f"{e['attack']['n_attacked']}: {e['attack']['scale_1']['broken']} / {e['attack']['scale_2']['broken']}"
                 if e["attack"] else "-") + " |")
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
