"""Which attack settings break the queries that the doubled evaluation ensemble breaks and the
ensemble does not: the probe behind each change of ``rml reproduce dml``'s ``EVAL_*`` settings.

On one trained ``rml reproduce dml`` model (its checkpoint under ``--out``/checkpoints), at the
training eps on the strength subset (the first ``dml.N_STRENGTH`` queries): the ensemble and the
doubled ensemble, the queries only the doubled one breaks, then those queries attacked by variants
of the ensemble (other seeds; steps, restarts, focus restarts or the most rounds doubled alone; a
wider first focus stage). Prints one line per attack.

Run::

    python benchmarks/probe_eval_attack.py --dataset fashion-mnist --loss contrastive --defense est
        [--seed 0] [--out results/dml] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, choices=["mnist", "fashion-mnist", "digits"])
    p.add_argument("--loss", required=True, choices=["triplet", "contrastive"])
    p.add_argument("--defense", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "results" / "dml")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    os.environ.setdefault("RML_DATA", str(REPO.parent / "shared" / "data"))
    import numpy as np
    import torch

    from robust_metric_learning.attacks import RetrievalEnsemble
    from robust_metric_learning.deep import adversarial_retrieval, train_embedding
    from robust_metric_learning.experiments import dml

    torch.set_num_threads(args.threads)
    ckpt = args.out / "checkpoints" / f"dml-{args.dataset}-{args.loss}-{args.defense}-seed{args.seed}.pt"
    if not ckpt.exists():
        p.error(f"no checkpoint {ckpt}: run rml reproduce dml for this task first")
    X_tr, y_tr, X_ev, y_ev = dml.load_task_data(args.dataset, args.seed)
    model = dml.make_model(args.dataset, args.seed, spectral_norm=args.defense.endswith("-sn"))
    loss, miner = dml.make_loss(args.loss)
    train_embedding(model, X_tr, y_tr, loss=loss, miner=miner, defense=dml.make_defense(args.defense), seed=args.seed,
                    checkpoint=ckpt, resume="compatible", progress=False, **dml.TRAIN)
    subset, eps = np.arange(min(dml.N_STRENGTH, len(y_ev))), dml.TRAIN_EPS

    def broken(attack, queries):
        t = time.perf_counter()
        r = adversarial_retrieval(model, X_ev, y_ev, eps=[eps], attack=attack, queries=queries)
        return np.asarray(r["flipped"][0], dtype=bool), r["precision_at_1"][0], time.perf_counter() - t

    found = {}
    for label, attack in (("ensemble", dml.eval_attack(args.seed)), ("doubled", dml.eval_attack(args.seed, scale=2))):
        found[label], r1, s = broken(attack, subset)
        print(f"{label}: R@1 {r1:.4f} on {len(subset)} queries ({s:.0f} s)", flush=True)
    missed = subset[found["doubled"] & ~found["ensemble"]]
    print(f"broken only by the doubled ensemble: {missed.tolist()}", flush=True)
    if not len(missed):
        return 0
    base = dict(norm="linf", steps=dml.EVAL_STEPS, restarts=dml.EVAL_RESTARTS, pgd_steps=dml.EVAL_PGD_STEPS,
                pgd_rel_step_size=dml.EVAL_REL_STEP, temperatures=dml.EVAL_TEMPERATURES, focus=dml.EVAL_FOCUS,
                rounds=dml.EVAL_ROUNDS)
    variants = {**{f"seed {s}": dict(base, random_state=s) for s in (1, 2, 3)},
                "steps x2": dict(base, steps=2 * dml.EVAL_STEPS, pgd_steps=2 * dml.EVAL_PGD_STEPS),
                "restarts x2": dict(base, restarts=2 * dml.EVAL_RESTARTS),
                "focus restarts x2": dict(base, focus=tuple((m, 2 * r) for m, r in dml.EVAL_FOCUS)),
                "wider first focus": dict(base, focus=((2.0, 2),) + tuple(dml.EVAL_FOCUS)),
                "rounds x2": dict(base, rounds=2 * dml.EVAL_ROUNDS)}
    for name, kw in variants.items():
        kw.setdefault("random_state", args.seed)
        hit, _, s = broken(RetrievalEnsemble(**kw), missed)
        print(f"{name}: breaks {int(hit.sum())} of {len(missed)} ({s:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
