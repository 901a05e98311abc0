"""Certified retrieval by randomized smoothing (``rml reproduce smoothing``) as a declarative config.

Protocol: the unseen-classes setting of :mod:`.dml` (its model, triplet loss and miner, training
settings, ``N_TRAIN`` images of classes 0-4 for training, ``N_EVAL`` test images of classes 5-9
for retrieval, leave-one-out), the network trained on noisy inputs
(:class:`~robust_metric_learning.deep.GaussianAugmentation` with the task's sigma, ``SIGMAS``).
Evaluation, l2 threat model:

* clean Recall@1 of the network itself;
* the smoothed top-1 decision and its certificate
  (:func:`~robust_metric_learning.deep.smoothed_top1_certificate`: ``N_SAMPLES`` noise samples
  per query, ``N_SELECT`` to choose the label, level ``ALPHA``): smoothed Recall@1 and certified
  Recall@1 at ``RADII`` on the first ``n_eval`` queries (default all);
* beside it, the Lipschitz certificate of the network
  (:func:`~robust_metric_learning.deep.certified_retrieval`) at the same radii;
* the soundness check (:func:`~robust_metric_learning.deep.attack_smoothed_top1`) on the first
  ``N_ATTACK`` certified queries within 1x and 2x their radii: the first must break none.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .plugin import Task, row_label

__all__ = ["DATASETS", "METHODS", "SIGMAS", "RADII", "attack_summary", "plan", "report", "run_task", "protocol"]

#: the datasets the dml protocol's models take: its 28x28 images, and the bundled 8x8 digits
DATASETS = ("mnist", "fashion-mnist", "digits")

SIGMAS = {"sigma0.12": 0.12, "sigma0.25": 0.25, "sigma0.5": 0.5}
METHODS = tuple(SIGMAS)
RADII = (0.1, 0.25, 0.5, 1.0)
N_SAMPLES = 10000
N_SELECT = 100
ALPHA = 1e-3
N_ATTACK = 200
ATTACK = {"scales": (1.0, 2.0), "steps": 100, "n_grad_samples": 64, "n_check": 2000}


def protocol() -> dict[str, Any]:
    """Every setting a cached result depends on, besides the task's own (its fingerprint covers this):
    the parts of the dml protocol this one uses, and its own."""
    from ..deep import hyperparameters
    from . import dml

    return {"train_classes": dml.TRAIN_CLASSES, "n_train": dml.N_TRAIN, "n_eval": dml.N_EVAL, "model": dml.MODEL,
            "train": dml.TRAIN, "loss": [hyperparameters(x) for x in dml.make_loss("triplet")],
            "sigmas": SIGMAS, "radii": RADII, "n_samples": N_SAMPLES, "n_select": N_SELECT, "alpha": ALPHA,
            "n_attack": N_ATTACK, "attack": ATTACK,
            "attack_rules": ["soft decision: softmax of -d^2/T, T = median distance gap / 4", "step 2.5 budget / steps",
                             "break: Clopper-Pearson upper bound < 1/2 at alpha / n_attack"]}


def _augmentation(sigma: float):
    from ..deep import GaussianAugmentation

    return GaussianAugmentation(sigma=sigma)


def run_task(dataset: str, method: str, seed: int, data, *, n_eval: int | None = None, checkpoint=None,
             n_samples: int | None = None, n_attack: int | None = None) -> dict[str, Any]:
    """Train one noise-augmented model, certify its smoothed retrieval, attack the certificate
    (``n_samples`` and ``n_attack`` default to ``N_SAMPLES`` and ``N_ATTACK``; 0 attacks none)."""
    from ..deep import (
        attack_smoothed_top1,
        certified_retrieval,
        embed,
        retrieval_metrics,
        smoothed_top1_certificate,
        train_embedding,
    )
    from . import dml

    sigma = SIGMAS[method]
    n_samples = N_SAMPLES if n_samples is None else n_samples
    n_attack = N_ATTACK if n_attack is None else n_attack
    X_tr, y_tr, X_ev, y_ev = data
    loss_fn, miner = dml.make_loss("triplet")
    model = dml.make_model(dataset, seed)
    t0 = time.perf_counter()
    hist = train_embedding(model, X_tr, y_tr, loss=loss_fn, miner=miner, defense=_augmentation(sigma),
                           seed=seed, checkpoint=checkpoint, resume="compatible", **dml.TRAIN)
    train_s = time.perf_counter() - t0
    queries = np.arange(len(y_ev) if n_eval is None else min(n_eval, len(y_ev)))
    emb = embed(model, X_ev)
    clean = retrieval_metrics(emb[queries], y_ev[queries], emb, y_ev, self_index=queries)
    t0 = time.perf_counter()
    cert = smoothed_top1_certificate(model, X_ev, y_ev, sigma=sigma, radii=RADII, n_samples=n_samples,
                                     n_select=N_SELECT, alpha=ALPHA, queries=queries, random_state=seed)
    certify_s = time.perf_counter() - t0
    lip = certified_retrieval(model, X_ev, y_ev, eps=list(RADII), norm="l2")
    t0 = time.perf_counter()
    # a break must be significant at ALPHA / n_attack: the check stops the run, so the tests' own false
    # alarms are bounded by ALPHA over all the queries attacked, not per query. A certificate can also be
    # wrong itself (probability ALPHA per query) and then be beaten legitimately: with both, a sound
    # run stops by chance with probability at most ALPHA + (wrong certificate and significant break),
    # the second a few 1e-5 per query attacked at most (Cohen's half-space worst case)
    attack = attack_smoothed_top1(model, X_ev, y_ev, cert, max_queries=n_attack, alpha=ALPHA / n_attack,
                                  random_state=seed, **ATTACK) if n_attack else None
    attack_s = time.perf_counter() - t0
    if attack and attack["scale_1"]["broken"]:
        raise RuntimeError(f"smoothing {dataset}/{method}: the attack refuted the certificates of "
                           f"{attack['scale_1']['broken']} queries within their radii (the certified label's "
                           f"probability significantly below 1/2)")
    return {"dataset": dataset, "method": method, "sigma": sigma, "seed": seed, "n_samples": n_samples,
            "alpha": ALPHA, "n_train": int(len(y_tr)),
            "n_eval": int(len(y_ev)), "n_queries": int(len(queries)), "train_loss": hist.loss,
            "epoch_s": hist.seconds, "train_s": train_s, "recall_at_1": clean["precision_at_1"],
            "smoothed_recall_at_1": cert["recall_at_1"], "radii": list(RADII),
            "certified_recall_at_1": cert["certified_recall_at_1"],
            "median_certified_radius": float(np.median(cert["radius"])),
            "lipschitz": lip["lipschitz"],
            "lipschitz_certified_recall_at_1": [float((lip["radii"][queries] > r).mean()) for r in RADII],
            "certify_s": certify_s, "certify_s_per_query": certify_s / len(queries),
            "attack": attack, "attack_s": attack_s}


def attack_summary(attack: dict | None) -> str:
    """``"200: 0 (1x) / 37 (2x)"``: queries attacked and those broken at each scale; ``"-"`` for none."""
    if not attack:
        return "-"
    return f"{attack['n_attacked']}: " + " / ".join(f"{attack[f'scale_{s:g}']['broken']} ({s:g}x)"
                                                   for s in attack["scales"])


def markdown_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The lines of the results table of one dataset: a row per model (label -> :func:`run_task`
    payload, all with the same radii)."""
    radii = next(iter(rows.values()))["radii"]
    lines = ["| model | samples, alpha | R@1 (network) | smoothed R@1 | "
             + " | ".join(f"cert R@1 l2 {r:g}" for r in radii)
             + " | Lipschitz cert R@1 (same radii) | attack: queries, broken at scale | certify s per query |",
             "|---|---|---|---|" + "---|" * len(radii) + "---|---|---|"]
    for label, p in rows.items():
        lines.append(f"| {label} | {p['n_samples']}, {p['alpha']:g} | {p['recall_at_1']:.3f} | "
                     f"{p['smoothed_recall_at_1']:.3f} | "
                     + " | ".join(f"{v:.3f}" for v in p["certified_recall_at_1"]) + " | "
                     + " / ".join(f"{v:.3f}" for v in p["lipschitz_certified_recall_at_1"])
                     + f" | {attack_summary(p['attack'])} | {p['certify_s_per_query']:.2f} |")
    return lines


def report(name: str, out, results: dict, context: dict | None = None) -> dict[str, Any]:
    """``report.md``, ``results.json`` and one plot per dataset: certified Recall@1 against the radius."""
    import io
    import json

    from matplotlib.figure import Figure

    from .._io import atomic_write_bytes, atomic_write_text

    summary: dict[str, Any] = {"experiment": name, "protocol": protocol(), "results": results}
    lines = [f"# rml reproduce {name}", "",
             "Networks trained on noisy inputs (sigma below), the dml protocol's unseen-classes retrieval. "
             "Certified R@1 of the smoothed top-1 decision (Cohen et al.'s certificate, with the samples and "
             "alpha of each row) beside the Lipschitz certificate of the network at the same l2 radii; "
             "the attack on the smoothed decision within multiples of each certified radius (the first "
             "certified queries; a break must be significant at alpha / queries attacked). Each "
             "certificate holds with probability 1 - alpha per query (Cohen et al.'s guarantee), not "
             "for all queries at once; certified R@1 is that of the smoothed label decision.", ""]
    for ds, rows in results.items():
        first = next(iter(rows.values()))
        lines += [f"## {ds} ({first['n_train']} training images, {first['n_queries']} queries)", "",
                  *markdown_table(rows), ""]
        fig = Figure(figsize=(5, 3.5))
        ax = fig.add_subplot()
        for label, p in rows.items():
            line, = ax.plot(p["radii"], p["certified_recall_at_1"], marker="o", label=f"{label} smoothed")
            ax.plot(p["radii"], p["lipschitz_certified_recall_at_1"], ls="--", color=line.get_color())
        ax.set_xlabel("l2 radius")
        ax.set_ylabel("certified Recall@1")
        ax.set_title(f"{ds}: smoothing (solid) vs Lipschitz (dashed)")
        ax.legend(fontsize="small")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        atomic_write_bytes(Path(out) / f"{ds}_certified_recall.png", buf.getvalue())
    atomic_write_text(Path(out) / "report.md", "\n".join(lines) + "\n")
    atomic_write_text(Path(out) / "results.json", json.dumps(summary, indent=1, default=float))
    return summary


def plan(name: str, out: Path, *, datasets, methods, seeds, n_eval, shuffle_seed, n_jobs, data_home,
         verbose) -> tuple[list[Task], dict]:
    """One task per (dataset, sigma, seed) for ``datasets`` among :data:`DATASETS` (default: MNIST and
    Fashion-MNIST where available, else digits); ``n_eval`` limits the queries certified (default all)."""
    from ..datasets import dataset_status
    from ..deep import hyperparameters
    from . import dml

    unknown = sorted(set(methods or ()) - set(METHODS))
    if unknown:
        raise ValueError(f"methods must be among {list(METHODS)} for smoothing, got {unknown}")
    if n_eval is not None and (isinstance(n_eval, bool) or not isinstance(n_eval, int) or n_eval < 1):
        raise ValueError(f"n_eval must be an integer >= 1 (queries certified; default: all), got {n_eval!r}")
    if datasets:
        dsets = list(datasets)
        bad = sorted(set(dsets) - set(DATASETS))
        if bad:
            raise ValueError(f"datasets must be among {list(DATASETS)} for smoothing (the dml protocol's models), "
                             f"got {bad}")
    else:
        status = dataset_status(data_home=data_home)
        dsets = [d for d in dml.DATASETS if status[d]["available"]] or ["digits"]
    seed_list = [0] if seeds is None else list(seeds)
    proto = protocol()
    tasks = []
    for ds in dsets:
        for seed in seed_list:
            data = dml._LazyData(ds, seed, data_home)
            for m in [m for m in METHODS if m in (methods or METHODS)]:
                key = (name, ds, m, f"seed{seed}") + (() if n_eval is None else (f"n{n_eval}",))
                settings = {"experiment": name, "dataset": ds, "method": m, "sigma": SIGMAS[m], "seed": seed,
                            "n_eval": n_eval, "augmentation": hyperparameters(_augmentation(SIGMAS[m])),
                            "protocol": proto}
                # training does not depend on n_eval: one checkpoint per (dataset, sigma, seed)
                ckpt = Path(out) / "checkpoints" / ("-".join(key[:4]) + ".pt")
                tasks.append(Task(
                    key, settings, (ds, row_label(m, seed, seed_list)), f"{ds} / {m} / seed {seed}",
                    lambda ds=ds, m=m, seed=seed, data=data, ckpt=ckpt: run_task(
                        ds, m, seed, data.get(), n_eval=n_eval, checkpoint=ckpt),
                    lambda p: (f"train {p['train_s']:.0f} s, certify {p['certify_s']:.0f} s, smoothed R@1 "
                               f"{p['smoothed_recall_at_1']:.3f}, certified "
                               + "/".join(f"{v:.3f}" for v in p["certified_recall_at_1"])
                               + f", attack {attack_summary(p['attack'])}")))
    return tasks, {}
