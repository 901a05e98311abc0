"""Channels-last convolution weights (the package's default) against channels-first: time of an
attack's unit of work, one forward and backward pass to the inputs, and of a whole evaluation.

Side by side in one process, alternating so that a loaded machine slows both alike: for SmallCNN
and RC2F2 (random weights; the time does not depend on them) at batch sizes 128 and 256, the
median of ``--reps`` timed passes each; then, with ``--evaluation`` and MNIST under ``$RML_DATA``,
``adversarial_retrieval`` with a 100-step APGD (the ensemble's main member) on ``--queries`` queries of the
``rml reproduce dml`` MNIST task (a freshly initialised SmallCNN), twice per layout.

Run::

    python benchmarks/bench_layout.py [--threads 1] [--reps 15] [--evaluation] [--queries 150]

Prints a Markdown table of the ratios (channels-first time / channels-last time; above 1: the
default is faster) and writes ``benchmarks/results/layout.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "layout.json"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as the reproductions)")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--evaluation", action="store_true", help="also time a whole adversarial evaluation (MNIST)")
    p.add_argument("--queries", type=int, default=150)
    args = p.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("RML_DATA", str(REPO.parent / "shared" / "data"))
    import numpy as np
    import torch

    from robust_metric_learning._io import atomic_write_text
    from robust_metric_learning.deep import RC2F2, SmallCNN

    torch.set_num_threads(args.threads)
    rows = []
    for name, make in (("SmallCNN", SmallCNN), ("RC2F2", RC2F2)):
        torch.manual_seed(0)
        last = make().eval()
        first = copy.deepcopy(last).to(memory_format=torch.contiguous_format)
        for batch in (128, 256):
            x0 = torch.rand(batch, 784)
            w = torch.randn(batch, last(x0[:1]).shape[1])

            def unit(model) -> float:
                x = x0.clone().requires_grad_()
                t0 = time.perf_counter()
                torch.autograd.grad((model(x) * w).sum(), x)
                return time.perf_counter() - t0

            times: dict[str, list[float]] = {"channels_first": [], "channels_last": []}
            for _ in range(2):  # warm-up
                unit(first), unit(last)
            for _ in range(args.reps):
                times["channels_first"].append(unit(first))
                times["channels_last"].append(unit(last))
            med = {k: float(np.median(v)) for k, v in times.items()}
            rows.append({"what": f"{name} forward+backward, batch {batch}", **med,
                         "ratio": med["channels_first"] / med["channels_last"]})
    if args.evaluation:
        from robust_metric_learning.attacks import APGD
        from robust_metric_learning.datasets import dataset_status
        from robust_metric_learning.deep import adversarial_retrieval
        from robust_metric_learning.experiments import dml

        if not dataset_status()["mnist"]["available"]:
            print("MNIST files not found under $RML_DATA; the evaluation is not timed")
        else:
            _, _, X, y = dml.load_task_data("mnist", 0)
            last = dml.make_model("mnist", 0).eval()
            first = copy.deepcopy(last).to(memory_format=torch.contiguous_format)
            queries = np.arange(min(args.queries, len(y)))
            times = {"channels_first": [], "channels_last": []}
            r1 = {}
            for _ in range(2):
                for key, model in (("channels_first", first), ("channels_last", last)):
                    attack = APGD(norm="linf", steps=100, random_state=0, progress=False)
                    t0 = time.perf_counter()
                    r = adversarial_retrieval(model, X, y, eps=[0.1], attack=attack, queries=queries)
                    times[key].append(time.perf_counter() - t0)
                    r1[key] = r["precision_at_1"][0]
            med = {k: float(np.median(v)) for k, v in times.items()}
            rows.append({"what": f"adversarial_retrieval, APGD-100, {len(queries)} MNIST queries", **med,
                         "ratio": med["channels_first"] / med["channels_last"], "recall_at_1": r1})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    print("| work | channels-first s | channels-last s | ratio |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['channels_first']:.4f} | {r['channels_last']:.4f} | {r['ratio']:.2f} |")
    out = {"rows": rows, "threads": torch.get_num_threads(), "reps": args.reps, "python": sys.version.split()[0],
           "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count()}
    atomic_write_text(RESULTS, json.dumps(out, indent=1))
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
