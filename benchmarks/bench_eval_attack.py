"""How strong is the deep evaluation? Adversarial Recall@1 under the old and the new attacks.

The setting of issue 16: MNIST from ``$RML_DATA``, :class:`SmallCNN` (its defaults) trained by
``train_embedding`` (its defaults: triplet margin loss 0.2, every triplet of the batch, m = 4)
for 3 epochs on 3000 training images of classes 0-4, retrieval on 300 test images of classes 5-9
(every image a query against the others, leave-one-out), l_inf eps = 0.1. Both subsets are drawn
with ``numpy.random.default_rng(seed)``. For each model (``--defenses``; natural by default),
adversarial R@1 under:

* ``pgd20``: the old default of ``adversarial_retrieval``, ``PGD(steps=20)`` (step 2 eps / 20);
* ``decay_pgd``: plain PGD with a decaying step, ``dml.DECAY_PGD`` (eps / 4 at first, cosine to
  0 over 100 steps, 3 restarts);
* ``ensemble_v1``: the first ensemble, ``RetrievalEnsemble(restarts=4, temperatures=(0.1,),
  focus=())`` (APGD margin + APGD cross-entropy + PGD-20, 100 steps and 4 restarts each);
* ``ensemble``: the default, ``RetrievalEnsemble()`` (APGD margin, APGD cross-entropy at
  temperatures 0.1 and 0.03 and PGD-20, one restart each, then the focus stages and the rounds
  on the near misses);
* ``doubled``: the default with doubled steps, restarts, focus restarts and rounds,
  ``RetrievalEnsemble().scaled(2)``.

With several ``--attack-seeds`` every attack runs once per seed (the model is the same). For
each run: R@1, wall seconds (one torch thread) and the inputs the model forwarded per query,
with gradient (each then has a backward pass) and without. Results go to
``benchmarks/results/eval_attack.json`` (one entry per defence, recomputed with ``--force`` or
when an attack's settings changed);
prints a Markdown table. Without the MNIST files it says so and exits with status 0.

Run::

    python benchmarks/bench_eval_attack.py [--defenses natural naive ours] [--attack-seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "eval_attack.json"
N_TRAIN, N_EVAL, EPOCHS, EPS = 3000, 300, 3, 0.1
ATTACKS = ("pgd20", "decay_pgd", "ensemble_v1", "ensemble", "doubled")


def _attack(name: str, seed: int):
    from robust_metric_learning.attacks import PGD, RetrievalEnsemble
    from robust_metric_learning.experiments import dml

    if name == "pgd20":
        return PGD(norm="linf", steps=20, random_state=seed)
    if name == "decay_pgd":
        return PGD(norm="linf", random_state=seed, **dml.DECAY_PGD)
    if name == "ensemble_v1":
        return RetrievalEnsemble(norm="linf", restarts=4, temperatures=(0.1,), focus=(), random_state=seed)
    ens = RetrievalEnsemble(norm="linf", random_state=seed)
    return ens.scaled(2) if name == "doubled" else ens


def run_one(defense: str, seed: int, attack_seeds: list[int]) -> dict:
    import numpy as np
    import torch

    from robust_metric_learning.datasets import load_dataset
    from robust_metric_learning.deep import SmallCNN, adversarial_retrieval, train_embedding

    torch.set_num_threads(1)
    X_tr, y_tr, X_te, y_te = load_dataset("mnist")
    rng = np.random.default_rng(seed)
    tr = np.sort(rng.choice(np.flatnonzero(y_tr < 5), N_TRAIN, replace=False))
    te = np.sort(rng.choice(np.flatnonzero(y_te >= 5), N_EVAL, replace=False))
    torch.manual_seed(seed)
    model = SmallCNN()
    t0 = time.perf_counter()
    train_embedding(model, X_tr[tr].astype(np.float32), y_tr[tr], defense=defense, seed=seed, epochs=EPOCHS,
                    progress=False)
    out = {"defense": defense, "seed": seed, "n_queries": N_EVAL, "train_s": round(time.perf_counter() - t0, 1),
           "runs": {}}
    X, y = X_te[te].astype(np.float32), y_te[te]
    for name in ATTACKS:
        for s in attack_seeds:
            t0 = time.perf_counter()
            r = adversarial_retrieval(model, X, y, eps=EPS, attack=_attack(name, s))
            cost = r["cost"]
            out["clean_r1"] = float(r["clean"]["precision_at_1"])
            out["runs"][f"{name}/seed={s}"] = {
                "attack": repr(_attack(name, s)), "r1": float(r["precision_at_1"][0]),
                # which queries it broke: attacks compared query by query (what one finds and another misses)
                "broken": [int(i) for i in np.flatnonzero(r["flipped"][0])],
                "seconds": round(time.perf_counter() - t0, 1),
                "forward_per_query": (cost["gallery_forward"] + sum(cost["forward"])) / N_EVAL,
                "backward_per_query": sum(cost["backward"]) / N_EVAL}
            print(f"{defense} {name} seed {s}: R@1 {r['precision_at_1'][0]:.4f}", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--defenses", nargs="+", default=["natural"], choices=["natural", "naive", "est", "ours"])
    p.add_argument("--attack-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--seed", type=int, default=0, help="draws the images and the initial weights")
    p.add_argument("--force", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("RML_DATA", str(REPO.parent / "shared" / "data"))

    from robust_metric_learning._io import atomic_write_text
    from robust_metric_learning.datasets import dataset_status

    if not dataset_status()["mnist"]["available"]:
        print("MNIST not found under $RML_DATA; nothing measured")
        return 0
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for d in args.defenses:
        key = f"{d}/seed={args.seed}"
        have = results.get(key, {}).get("runs", {})
        # rerun when an attack is missing or its settings changed since (its repr is stored)
        if args.force or any(have.get(f"{a}/seed={s}", {}).get("attack") != repr(_attack(a, s))
                             for a in ATTACKS for s in args.attack_seeds):
            results[key] = run_one(d, args.seed, args.attack_seeds)
            atomic_write_text(RESULTS, json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"\nMNIST, SmallCNN, {EPOCHS} epochs on {N_TRAIN} images of 0-4, {N_EVAL} queries of 5-9, "
          f"l_inf eps {EPS}\n")
    print("| defence | clean R@1 | attack | attack seed | adv R@1 | s | forward / backward per query |")
    print("|---|---|---|---|---|---|---|")
    for d in args.defenses:
        res = results[f"{d}/seed={args.seed}"]
        for a in ATTACKS:
            for s in args.attack_seeds:
                r = res["runs"][f"{a}/seed={s}"]
                print(f"| {d} | {res['clean_r1']:.3f} | {a} | {s} | {r['r1']:.3f} | {r['seconds']:.0f} | "
                      f"{r['forward_per_query']:.0f} / {r['backward_per_query']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
