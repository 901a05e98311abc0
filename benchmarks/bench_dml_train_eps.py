"""Adversarial Recall@1 against the training ε and epochs, for naive adversarial training and ours.

The setting of ``rml reproduce dml`` (experiments/dml.py: SmallCNN, classes 0-4 for training,
retrieval on the unseen classes 5-9, the protocol's loss, miner and PGD steps in training,
its evaluation ensemble ``dml.eval_attack``), with the training ε and the
number of epochs varied. Naive training perturbs every member of every triplet at once, ours
only the anchor (``dml.OURS``): at equal ε the two are not equally strong training attacks, and
this measures how each one's robustness grows with the budget and with longer training.

Run::

    python benchmarks/bench_dml_train_eps.py [--datasets mnist fashion-mnist] [--loss triplet]
        [--train-eps 0.05 0.1 0.15 0.2] [--epochs 5] [--seeds 0] [--queries 300] [--jobs 2]

Adversarial R@1 is measured on the first ``--queries`` evaluation images as queries (the whole
evaluation set the gallery; default ``dml.N_STRENGTH``, the queries of the protocol's strength
check: the full ensemble on all 1000 costs about three times as much). Each (dataset, loss,
defence, training ε, epochs, seed) result is cached in
``benchmarks/results/dml_train_eps.json`` (``--force`` recomputes; a result under another
protocol or number of queries is rerun), each trained model in
``results/dml_train_eps/checkpoints`` (a rerun evaluates it again without training; the evaluation's
progress is checkpointed beside it after each ε; ``--force`` evaluates afresh); prints a Markdown table
(with several seeds: mean ± standard deviation over them; a seed draws the training and
evaluation images and the initial weights).
Without the data files (``$RML_DATA``) it says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from itertools import product
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "dml_train_eps.json"
CHECKPOINTS = REPO / "results" / "dml_train_eps" / "checkpoints"
EVAL_EPS = (0.05, 0.1, 0.15, 0.2)


def _key(dataset: str, loss: str, defense: str, eps: float, epochs: int, seed: int) -> str:
    from robust_metric_learning.experiments import dml

    # the protocol's epochs are left out of the key (results from before --epochs keep theirs)
    more = "" if epochs == dml.TRAIN["epochs"] else f"/epochs={epochs}"
    return f"{dataset}/{loss}/{defense}/eps={eps}{more}/seed={seed}"


def _protocol() -> dict:
    """The dml protocol a result depends on (as stored in JSON); a result under another is rerun."""
    from robust_metric_learning.experiments import dml

    return json.loads(json.dumps(dml.protocol()))


def run_one(dataset: str, loss: str, defense: str, eps: float, epochs: int, seed: int, n_queries: int,
            force: bool = False) -> dict:
    """Train one model at training ε ``eps`` for ``epochs`` (or load it from its checkpoint) and
    evaluate it on the first ``n_queries`` evaluation images (one torch thread)."""
    import numpy as np
    import torch

    from robust_metric_learning.deep import adversarial_retrieval, embed, retrieval_metrics, train_embedding
    from robust_metric_learning.experiments import dml
    from robust_metric_learning.experiments.cache import stage_checkpoint

    torch.set_num_threads(1)
    X_tr, y_tr, X_ev, y_ev = dml.load_task_data(dataset, seed)
    loss_fn, miner = dml.make_loss(loss)
    model = dml.make_model(dataset, seed)
    ckpt = CHECKPOINTS / f"{_key(dataset, loss, defense, eps, epochs, seed).replace('/', '__')}.pt"
    hist = train_embedding(model, X_tr, y_tr, loss=loss_fn, miner=miner,
                           defense=dml.make_defense(defense, eps=eps), seed=seed, progress=False,
                           checkpoint=ckpt, resume="compatible", **{**dml.TRAIN, "epochs": epochs})
    train_s = float(sum(hist.seconds))  # the epochs' own times, also when resumed from the checkpoint
    queries = np.arange(min(n_queries, len(y_ev)))
    emb = embed(model, X_ev)
    clean = retrieval_metrics(emb[queries], y_ev[queries], emb, y_ev, self_index=queries, seed=seed)
    adv = adversarial_retrieval(model, X_ev, y_ev, eps=list(EVAL_EPS), attack=dml.eval_attack(seed), queries=queries,
                                checkpoint=stage_checkpoint(ckpt, "eval"), resume=False if force else "compatible")
    return {"dataset": dataset, "loss": loss, "defense": defense, "train_eps": eps, "epochs": epochs, "seed": seed,
            "train_s": round(train_s, 1), "clean_r1": float(clean["precision_at_1"]),
            "adv_r1": [float(v) for v in adv["precision_at_1"]], "eval_eps": list(EVAL_EPS),
            "n_queries": int(len(queries)), "eval_s": round(sum(adv["cost"]["seconds"]), 1),  # (before a resume too)
            "protocol": _protocol()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    p.add_argument("--loss", default="triplet")
    p.add_argument("--defenses", nargs="+", default=["naive", "ours"], choices=["naive", "ours"])
    p.add_argument("--train-eps", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.2])
    p.add_argument("--epochs", type=int, nargs="+", default=None, help="default: the protocol's")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--queries", type=int, default=None, help="default: dml.N_STRENGTH")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--force", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("RML_DATA", str(REPO.parent / "shared" / "data"))

    import numpy as np

    from robust_metric_learning._io import atomic_write_text
    from robust_metric_learning.datasets import dataset_status
    from robust_metric_learning.experiments import dml

    epochs = args.epochs or [dml.TRAIN["epochs"]]
    n_queries = dml.N_STRENGTH if args.queries is None else args.queries
    if not 1 <= n_queries <= dml.N_EVAL:
        p.error(f"--queries must be in [1, {dml.N_EVAL}] (the evaluation images), got {n_queries}")

    status = dataset_status()
    datasets = [d for d in args.datasets if status[d]["available"]]
    if not datasets:
        print(f"none of {args.datasets} found under $RML_DATA; nothing measured")
        return 0
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    settings = list(product(datasets, args.defenses, args.train_eps, epochs))  # one table row each
    todo = [(d, args.loss, m, e, n, s) for d, m, e, n in settings for s in args.seeds]
    current = _protocol()
    missing = [t for t in todo if args.force or results.get(_key(*t), {}).get("protocol") != current
               or results[_key(*t)].get("n_queries") != n_queries]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_one, *t, n_queries, args.force): t for t in missing}
        for f in as_completed(futures):
            results[_key(*futures[f])] = f.result()
            atomic_write_text(RESULTS, json.dumps(results, indent=1, sort_keys=True) + "\n")
            print(f"done {_key(*futures[f])}", flush=True)

    def cell(values) -> str:
        return f"{np.mean(values):.3f}" + (f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else "")

    head = " | ".join(f"adv R@1 ε={e}" for e in EVAL_EPS)
    print(f"\n{args.loss} loss, seeds {args.seeds}\n")
    print(f"| dataset | defence | training ε | epochs | clean R@1 | {head} | train s |")
    print("|---|---|---|---|---|" + "---|" * len(EVAL_EPS) + "---|")
    for d, m, e, n in settings:
        rs = [results[_key(d, args.loss, m, e, n, s)] for s in args.seeds]
        adv = " | ".join(cell([r["adv_r1"][i] for r in rs]) for i in range(len(EVAL_EPS)))
        print(f"| {d} | {m} | {e} | {n} | {cell([r['clean_r1'] for r in rs])} | {adv} | "
              f"{np.mean([r['train_s'] for r in rs]):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
