"""Cost of one epoch of robust training for deep metric learning, as a ratio to a natural epoch.

The setting of ``rml reproduce dml`` (experiments/dml.py): SmallCNN, MNIST classes 0-4
(``N_TRAIN`` images, class-balanced batches), triplet margin loss with the protocol's miner (``dml.MINER``).
Each defence trains one epoch from the same initial weights, in one process, one after the
other (natural first, then again at the end to see drift); PGD with ``--steps`` steps in
training. The aim (issue 5): ours costs at most ``steps + 2`` natural epochs; issue 18: HM at most
``steps + 2``, ACT at most ``2 steps + 2`` (with shared copies both attack at most one copy of each
batch input, so both aim at ``steps + 2``).

Run::

    python benchmarks/bench_dml_epoch.py [--steps 5 10] [--dataset mnist] [--threads N] [--defenses ours act hm]

Prints a Markdown table and writes ``benchmarks/results/dml_epoch.json``. Without the data files
(``$RML_DATA``) it says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "dml_epoch.json"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--defenses", nargs="+", default=["ours", "naive", "est", "act", "hm"],
                   choices=["ours", "naive", "est", "act", "hm"])
    args = p.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("RML_DATA", str(REPO.parent / "shared" / "data"))
    import copy

    import torch

    from robust_metric_learning._io import atomic_write_text
    from robust_metric_learning.datasets import dataset_status
    from robust_metric_learning.deep import (AntiCollapseTriplets, EmbeddingShiftTriplets, HardnessManipulation,
                                             NaiveAdversarial, Natural, RobustTriplets, train_embedding)
    from robust_metric_learning.experiments import dml

    if not dataset_status()[args.dataset]["available"]:
        print(f"{args.dataset} files not found under $RML_DATA; nothing measured")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    X, y, _, _ = dml.load_task_data(args.dataset, 0)
    loss_fn, miner = dml.make_loss("triplet")
    init = dml.make_model(args.dataset, 0)
    train = {**dml.TRAIN, "epochs": 1}

    def epoch(defense) -> tuple[float, int]:
        model = copy.deepcopy(init)
        t0 = time.perf_counter()
        hist = train_embedding(model, X, y, loss=loss_fn, miner=miner, defense=defense, progress=False, **train)
        return time.perf_counter() - t0, hist.n_adversarial[0]

    epoch(Natural())  # warm-up (allocator, thread pools)
    rows = []
    natural = [epoch(Natural())[0]]
    for steps in args.steps:
        makers = {"ours": lambda: RobustTriplets(eps=dml.TRAIN_EPS, steps=steps, **dml.OURS),
                  "naive": lambda: NaiveAdversarial(eps=dml.TRAIN_EPS, steps=steps),
                  "est": lambda: EmbeddingShiftTriplets(eps=dml.TRAIN_EPS, steps=steps),
                  "act": lambda: AntiCollapseTriplets(eps=dml.TRAIN_EPS, steps=steps),
                  "hm": lambda: HardnessManipulation(eps=dml.TRAIN_EPS, steps=steps)}
        for name in args.defenses:
            sec, n_adv = epoch(makers[name]())
            rows.append({"defense": name, "steps": steps, "seconds": sec, "n_adversarial": n_adv})
    natural.append(epoch(Natural())[0])
    nat = sum(natural) / len(natural)
    print(f"{args.dataset}: {len(y)} training images, {len(y) // (5 * dml.TRAIN['m'])} batches per epoch; "
          f"natural epoch {natural[0]:.1f} s / {natural[1]:.1f} s (before / after), mean {nat:.1f} s\n")
    print("| defence | PGD steps | epoch s | ratio to natural | bound (steps + 2; ACT 2 steps + 2) | adversarial inputs |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        r["ratio"] = r["seconds"] / nat
        r["bound"] = 2 * r["steps"] + 2 if r["defense"] == "act" else r["steps"] + 2
        print(f"| {r['defense']} | {r['steps']} | {r['seconds']:.1f} | {r['ratio']:.2f} | {r['bound']} | "
              f"{r['n_adversarial']} |")
    out = {"dataset": args.dataset, "n_train": int(len(y)), "natural_seconds": natural, "rows": rows,
           "threads": torch.get_num_threads(), "python": sys.version.split()[0], "torch": torch.__version__,
           "machine": platform.machine(), "cpus": os.cpu_count()}
    atomic_write_text(RESULTS, json.dumps(out, indent=1))
    print(f"\nwrote {RESULTS}")
    bad = [r for r in rows if r["defense"] in ("ours", "hm", "act") and r["ratio"] > r["bound"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
