"""Adversarially robust deep metric learning (``rml reproduce dml``) as a declarative config.

Protocol
--------
For each dataset (MNIST, Fashion-MNIST; the bundled 8x8 ``digits`` when asked for or when
neither file set is present), each loss and each defence: an embedding net is trained on
``N_TRAIN`` images of classes 0-4 of the training part and evaluated by retrieval on
``N_EVAL`` images of the unseen classes 5-9 of the test part, every image a query against all
the others (leave-one-out). Both subsets are drawn with the task's seed.

* Model: :class:`~robust_metric_learning.deep.SmallCNN` (``MODEL``) for 28x28 images,
  :class:`~robust_metric_learning.deep.MLP` for ``digits``; L2-normalised embeddings.
* Losses (pytorch-metric-learning, ``LOSSES``): triplet margin and contrastive, both with the
  same triplet miner (``MINER``: every triplet within a mining margin of 0.5, wider than the
  loss margins; a pair loss gets the triplets as pairs).
* Defences (``DEFENSES``, :mod:`~robust_metric_learning.deep.robust`): natural training; naive
  adversarial training; EST; ours. Attacks in training: PGD, l_inf, ``TRAIN_EPS``,
  ``TRAIN_STEPS`` steps of ``2 eps / steps`` from a random start.
* Training (``TRAIN``): Adam, class-balanced batches (all 5 classes x ``m``), ``epochs``.

Evaluation: clean Recall@1, MAP@R, NMI; adversarial Recall@1 and MAP@R at ``EVAL_EPS`` (l_inf,
only queries correct at R@1 attacked, clean gallery), each the worst case over the evaluation
ensemble (:class:`~robust_metric_learning.attacks.RetrievalEnsemble`): APGD on the retrieval
margin and on the gallery cross-entropy at each of ``EVAL_TEMPERATURES`` (``EVAL_STEPS`` steps,
``EVAL_RESTARTS`` restarts each), and PGD-``EVAL_PGD_STEPS`` with a fixed step ``EVAL_REL_STEP * eps``
(``EVAL_RESTARTS`` restarts), then the focus stages ``EVAL_FOCUS``: more restarts of each
APGD member (margin and cross-entropies) on the near misses, and up to ``EVAL_ROUNDS`` more
runs of the last stage with twice the steps until one breaks nothing; certified Recall@1 at the
same l_inf radii and at ``CERT_L2_EPS`` (l2), from the embedding margin bound and the network's
Lipschitz bound. Checks on every model, failing loudly: certified-robust queries are never
broken by the attack (soundness); and, at the training eps, recorded for the report (:func:`strength_check`): on the first ``N_STRENGTH``
queries, the evaluation's own figure against the ensemble with doubled steps, restarts, focus
restarts and rounds (the queries only it breaks: the points they would take off show whether
the evaluation converged) and against a plain PGD with a decaying step (``DECAY_PGD``; the
report flags an ensemble that is weaker), and PGD's embedding shift against random search with
the same number of forward passes on ``N_SHIFT_CHECK`` queries (PGD must find at least as much
on every query).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .cache import stage_checkpoint
from .checks import check_certified_unbroken
from .plugin import Task, row_label, split_row_label

__all__ = ["DATASETS", "DEFENSES", "EXTRA_DEFENSES", "ALL_DEFENSES", "LOSSES", "EVAL_EPS", "protocol",
           "load_task_data", "run_task", "report", "eval_attack", "decay_pgd", "make_loss", "make_defense",
           "make_model", "plan"]

DATASETS = ("mnist", "fashion-mnist")
DEFENSES = ("natural", "naive", "est", "ours")
#: defences run only when asked for (``--methods``): "ours-sn" is ours on the same SmallCNN with
#: every Linear/Conv2d weight spectrally normalised (a 5-10x smaller Lipschitz bound, so
#: non-zero certified R@1); "ours-positive" and "ours-negative" are ours with that role
#: perturbed instead of the anchor (the role ablation); "act" and "hm" are the ranking
#: literature's defences (:class:`~robust_metric_learning.deep.AntiCollapseTriplets`,
#: :class:`~robust_metric_learning.deep.HardnessManipulation`, its gradual target on the scale of
#: ``HM_MARGIN``) with this protocol's training attack
_ROLE_VARIANTS = ("positive", "negative")
EXTRA_DEFENSES = ("ours-sn",) + tuple(f"ours-{role}" for role in _ROLE_VARIANTS) + ("act", "hm")
HM_MARGIN = 0.2
ALL_DEFENSES = DEFENSES + EXTRA_DEFENSES
LOSSES = ("triplet", "contrastive")
#: training split: classes seen in training; the others are retrieved at test time
TRAIN_CLASSES = (0, 1, 2, 3, 4)
N_TRAIN = 10000
N_EVAL = 1000
#: model and optimiser
MODEL: dict[str, Any] = {"embedding_dim": 64, "channels": (16, 32), "hidden": 128}
TRAIN: dict[str, Any] = {"epochs": 5, "m": 20, "lr": 1e-3}
#: the attack used in training, l_inf on [0, 1] pixels
TRAIN_EPS = 0.1
TRAIN_STEPS = 5
#: ours: fraction of the mined triplets attacked, and the role perturbed. The anchor role, every
#: triplet: the retrieval attack moves the query, which is what the anchor's attack rehearses
#: (the ours-positive / ours-negative ablation measures the other roles).
OURS: dict[str, Any] = {"rate": 1.0, "role": "anchor"}
#: the miner (pytorch-metric-learning's TripletMarginMiner) shared by every loss and defence: every
#: triplet with d(a, n) - d(a, p) < 0.5. The loss margin is 0.2, so natural training is unchanged in
#: kind; the adversarial defences also get the triplets that are satisfied on clean inputs but
#: within reach of an eps-attack (``rml reproduce dml``, MNIST, triplet, ours' adversarial R@1 at
#: eps 0.1: semi-hard mining .390, this .480).
MINER: dict[str, Any] = {"margin": 0.5, "type_of_triplets": "all"}
#: evaluation
EVAL_EPS = (0.01, 0.03, 0.1, 0.3)
#: the evaluation ensemble: APGD steps and restarts (of every member), the PGD member's steps
#: and its fixed step relative to eps
EVAL_STEPS = 100
EVAL_RESTARTS = 1
EVAL_PGD_STEPS = 20
EVAL_REL_STEP = 0.25
#: temperatures of the ensemble's cross-entropy members (one APGD member each)
EVAL_TEMPERATURES = (0.1, 0.03)
#: its focus stages (margin, restarts): restarts of every APGD member (the margin and each
#: cross-entropy) on the near misses, the unbroken queries whose best margin is at least -margin
#: times the gallery's scale
EVAL_FOCUS = ((1.0, 2), (0.3, 4), (0.1, 32))
#: at most this many more runs of the last focus stage (twice the steps), until one breaks nothing
EVAL_ROUNDS = 4
#: the strength check's plain PGD with a decaying step (eps/4 at first, cosine to 0)
DECAY_PGD: dict[str, Any] = {"steps": 100, "restarts": 3, "rel_step_size": 0.25, "step_schedule": "cosine"}
CERT_L2_EPS = (0.01, 0.03, 0.1, 0.3)
N_SHIFT_CHECK = 200
#: queries (first rows of the evaluation set, the whole set as gallery) of the attack-strength check
N_STRENGTH = 300


def eval_attack(seed: int, *, scale: int = 1):
    """The evaluation attack: the retrieval ensemble, l_inf, seeded; ``scale`` multiplies its steps,
    restarts, focus restarts and most rounds (2 for the strength check)."""
    from ..attacks import RetrievalEnsemble

    return RetrievalEnsemble(norm="linf", steps=EVAL_STEPS, restarts=EVAL_RESTARTS, pgd_steps=EVAL_PGD_STEPS,
                             pgd_rel_step_size=EVAL_REL_STEP, temperatures=EVAL_TEMPERATURES, focus=EVAL_FOCUS,
                             rounds=EVAL_ROUNDS, random_state=seed).scaled(scale)


def decay_pgd(seed: int):
    """The strength check's plain PGD with a decaying step (``DECAY_PGD``), l_inf, seeded."""
    from ..attacks import PGD

    return PGD(norm="linf", random_state=seed, **DECAY_PGD)


def make_loss(name: str):
    from pytorch_metric_learning import losses, miners

    miner = miners.TripletMarginMiner(**MINER)
    if name == "triplet":
        return losses.TripletMarginLoss(margin=0.2), miner
    if name == "contrastive":
        return losses.ContrastiveLoss(pos_margin=0.0, neg_margin=0.5), miner
    raise ValueError(f"loss must be one of {list(LOSSES)}, got {name!r}")


def make_defense(name: str, eps: float = TRAIN_EPS):
    """The defence ``name``; a ``-sn`` variant is its base defence (the model differs, see
    :func:`_model`), ``ours-<role>`` is ours with that role. ``eps``: the training attack's
    budget (``TRAIN_EPS`` in the protocol; benchmarks/bench_dml_train_eps.py varies it)."""
    from ..deep import (
        AntiCollapseTriplets,
        EmbeddingShiftTriplets,
        HardnessManipulation,
        NaiveAdversarial,
        Natural,
        RobustTriplets,
    )

    if name not in ALL_DEFENSES:
        raise ValueError(f"defense must be one of {list(ALL_DEFENSES)}, got {name!r}")
    makers = {
        "natural": lambda: Natural(),
        "naive": lambda: NaiveAdversarial(eps=eps, steps=TRAIN_STEPS),
        "est": lambda: EmbeddingShiftTriplets(eps=eps, steps=TRAIN_STEPS),
        "ours": lambda: RobustTriplets(eps=eps, steps=TRAIN_STEPS, **OURS),
        "act": lambda: AntiCollapseTriplets(eps=eps, steps=TRAIN_STEPS),
        "hm": lambda: HardnessManipulation(eps=eps, steps=TRAIN_STEPS, margin=HM_MARGIN),
    }
    for role in _ROLE_VARIANTS:
        makers[f"ours-{role}"] = lambda role=role: RobustTriplets(eps=eps, steps=TRAIN_STEPS,
                                                                  **{**OURS, "role": role})
    return makers[name.removesuffix("-sn")]()


def make_model(dataset: str, seed: int, *, spectral_norm: bool = False):
    import torch

    from ..deep import MLP, SmallCNN

    torch.manual_seed(seed)
    if dataset == "digits":
        return MLP(64, hidden=(128,), embedding_dim=MODEL["embedding_dim"], spectral_norm=spectral_norm)
    return SmallCNN(**MODEL, spectral_norm=spectral_norm)


def protocol() -> dict[str, Any]:
    """Every setting a cached result depends on (its fingerprint covers this)."""
    from ..deep import hyperparameters

    return {"train_classes": TRAIN_CLASSES, "n_train": N_TRAIN, "n_eval": N_EVAL, "model": MODEL, "train": TRAIN,
            "train_eps": TRAIN_EPS, "train_steps": TRAIN_STEPS, "ours": OURS, "eval_eps": EVAL_EPS,
            "eval_attack": {"name": "RetrievalEnsemble", "steps": EVAL_STEPS, "restarts": EVAL_RESTARTS,
                            "pgd_steps": EVAL_PGD_STEPS, "pgd_rel_step": EVAL_REL_STEP,
                            "temperatures": list(EVAL_TEMPERATURES), "focus": [list(f) for f in EVAL_FOCUS],
                            "rounds": EVAL_ROUNDS,
                            "members": ["APGD margin", "APGD cross-entropy per temperature", "PGD",
                                        "focus: APGD margin and cross-entropy per temperature on near misses",
                                        "rounds: the last focus stage again, twice the steps, until one breaks "
                                        "nothing"]},
            "decay_pgd": DECAY_PGD, "cert_l2_eps": CERT_L2_EPS,
            "n_shift_check": N_SHIFT_CHECK, "n_strength": N_STRENGTH,
            # adversarial R@1 counts a query broken at a smaller eps as broken at the larger ones
            "adv_monotone_in_eps": True,
            "losses": {n: [hyperparameters(x) for x in make_loss(n)] for n in LOSSES}}


def load_task_data(dataset: str, seed: int, data_home=None) -> tuple[np.ndarray, ...]:
    """Training images of the seen classes and evaluation images of the unseen ones."""
    from ..datasets import load_dataset

    if dataset == "digits":  # pixels 0..16: scale by the range, not per feature, so test images stay in [0, 1]
        X_tr, y_tr, X_te, y_te = load_dataset(dataset, scale=False)
        X_tr, X_te = X_tr / 16.0, X_te / 16.0
    else:
        X_tr, y_tr, X_te, y_te = load_dataset(dataset, data_home=data_home)
    rng = np.random.default_rng(seed)
    seen_tr = np.flatnonzero(np.isin(y_tr, TRAIN_CLASSES))
    unseen_te = np.flatnonzero(~np.isin(y_te, TRAIN_CLASSES))
    tr = np.sort(rng.choice(seen_tr, min(N_TRAIN, len(seen_tr)), replace=False))
    te = np.sort(rng.choice(unseen_te, min(N_EVAL, len(unseen_te)), replace=False))
    return (X_tr[tr].astype(np.float32), y_tr[tr], X_te[te].astype(np.float32), y_te[te])


def _attack_seconds(cost: dict[str, Any]) -> tuple[float, float]:
    """Seconds an ``adversarial_retrieval`` call spent attacking (its ``cost``), over every eps, and
    the part of them spent before a resume (read from its checkpoint, not in this process)."""
    return (float(sum(cost["seconds"])),
            float(sum(sec for sec, old in zip(cost["seconds"], cost["restored"]) if old)))


def strength_check(model, X_ev, y_ev, adv: dict[str, Any], subset: np.ndarray, seed: int,
                   checkpoint=None) -> dict[str, Any]:
    """The evaluation against the doubled ensemble and the decaying-step PGD at ``TRAIN_EPS`` on the
    queries ``subset``: each one's R@1, and the queries each breaks that the evaluation did not.

    The evaluation's figure is its own (``adv``, from ``adversarial_retrieval`` at ``EVAL_EPS``:
    a query broken at a smaller eps counts as broken), on the subset's queries that have another
    item of their class (as ``precision_at_1`` counts them). The doubling drop is the points of
    R@1 the doubled ensemble's extra breaks would take off the evaluation's figure (0: it
    converged), not the difference of two separate runs' figures, which extra breaks on both
    sides would hide. With a task ``checkpoint``, each run resumes from its stage checkpoint.
    """
    from ..deep import adversarial_retrieval

    i_train = EVAL_EPS.index(TRAIN_EPS)
    classes, counts = np.unique(y_ev, return_counts=True)
    valid = counts[np.searchsorted(classes, y_ev[subset])] > 1
    broken = np.asarray(adv["flipped"][i_train], dtype=bool)[subset]
    n = int(valid.sum())
    if n == 0:
        raise ValueError(f"no query of the strength check's {len(subset)} has another item of its class")
    correct = np.asarray(adv["attacked"], dtype=bool)[subset] & ~broken
    out: dict[str, Any] = {"ensemble": float(np.mean(correct[valid]))}
    for label, attack in (("doubled", eval_attack(seed, scale=2)), ("decay_pgd", decay_pgd(seed))):
        r = adversarial_retrieval(model, X_ev, y_ev, eps=[TRAIN_EPS], attack=attack, queries=subset,
                                  checkpoint=stage_checkpoint(checkpoint, label), resume="compatible")
        out[label] = r["precision_at_1"][0]
        out[f"{label}_extra"] = int((np.asarray(r["flipped"][0], dtype=bool) & ~broken)[valid].sum())
        # its attack's seconds, and those of them spent before a resume (read from its checkpoint)
        out[f"{label}_s"], out[f"{label}_restored_s"] = _attack_seconds(r["cost"])
    # points of R@1 the doubled ensemble's extra breaks take off the evaluation's figure
    out["doubled_drop_points"] = 100 * out["doubled_extra"] / n
    out["beats_decay_pgd"] = bool(out["ensemble"] <= out["decay_pgd"] + 1e-12)
    return out


def run_task(dataset: str, loss: str, defense: str, seed: int, data, *, checkpoint=None) -> dict[str, Any]:
    """Train one model, evaluate it, run the checks; a JSON-ready payload."""
    import torch

    from ..attacks import PGD, EmbeddingShift, RandomSearch
    from ..deep import (
        adversarial_retrieval,
        certified_retrieval,
        embed,
        retrieval_metrics,
        train_embedding,
    )

    X_tr, y_tr, X_ev, y_ev = data
    loss_fn, miner = make_loss(loss)
    model = make_model(dataset, seed, spectral_norm=defense.endswith("-sn"))
    t0 = time.perf_counter()
    hist = train_embedding(model, X_tr, y_tr, loss=loss_fn, miner=miner, defense=make_defense(defense), seed=seed,
                           checkpoint=checkpoint, resume="compatible", **TRAIN)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb = embed(model, X_ev)
    clean = retrieval_metrics(emb, y_ev, emb, y_ev, self_index=np.arange(len(y_ev)), nmi=True, seed=seed)
    adv = adversarial_retrieval(model, X_ev, y_ev, eps=list(EVAL_EPS), attack=eval_attack(seed),
                                checkpoint=stage_checkpoint(checkpoint, "eval"), resume="compatible")
    # the attack's cost over every eps, also the budgets finished before a resume (from the checkpoint)
    cost = adv["cost"]
    adv_s, restored_s = _attack_seconds(cost)
    cert = certified_retrieval(model, X_ev, y_ev, eps=list(EVAL_EPS), norm="linf")
    cert_l2 = certified_retrieval(model, X_ev, y_ev, eps=list(CERT_L2_EPS), norm="l2")
    # soundness: a query certified at eps is never broken by the attack at eps
    check_certified_unbroken(f"dml {dataset}/{loss}/{defense}", cert["radii"], EVAL_EPS, adv["flipped"])
    eval_s = time.perf_counter() - t0 + restored_s
    # attack strength at the training eps
    t0 = time.perf_counter()
    subset = np.arange(min(N_STRENGTH, len(y_ev)))
    stronger = strength_check(model, X_ev, y_ev, adv, subset, seed, checkpoint)
    pgd = PGD(norm="linf", steps=EVAL_PGD_STEPS, rel_step_size=EVAL_REL_STEP, random_state=seed)
    xq = torch.as_tensor(X_ev[:N_SHIFT_CHECK])
    objective = EmbeddingShift(emb[:N_SHIFT_CHECK])
    s_pgd = pgd(model, xq, objective, eps=TRAIN_EPS).scores
    s_rs = RandomSearch(norm="linf", n_queries=pgd.n_forward, random_state=seed)(model, xq, objective,
                                                                                eps=TRAIN_EPS).scores
    check_s = time.perf_counter() - t0 + stronger["doubled_restored_s"] + stronger["decay_pgd_restored_s"]
    return {
        "dataset": dataset, "loss": loss, "defense": defense, "seed": seed,
        "n_train": int(len(y_tr)), "n_eval": int(len(y_ev)),
        "train_loss": hist.loss, "epoch_s": hist.seconds, "n_adversarial": hist.n_adversarial,
        "clean": clean, "eps": list(EVAL_EPS),
        "adv_recall_at_1": adv["precision_at_1"], "adv_map_at_r": adv["mean_average_precision_at_r"],
        "attack_success": adv["success"],
        "certified_recall_at_1": cert["certified_recall_at_1"], "lipschitz": cert["lipschitz"],
        "cert_l2_eps": list(CERT_L2_EPS), "certified_recall_at_1_l2": cert_l2["certified_recall_at_1"],
        "median_certified_radius_l2": float(np.median(cert_l2["radii"])),
        "strength": {"eps": TRAIN_EPS, "n_queries": int(len(subset)), **stronger,
                     "shift_pgd_mean": float(s_pgd.mean()), "shift_random_mean": float(s_rs.mean()),
                     "shift_pgd_below_random": int((s_pgd < s_rs - 1e-6).sum())},
        "train_s": train_s, "eval_s": eval_s, "check_s": check_s, "adv_s": adv_s,
        # the adversarial evaluation's cost (every eps): inputs forwarded per query, with gradient
        # (each then has one backward pass) and without
        "adv_passes_per_query": {"forward": (cost["gallery_forward"] + sum(cost["forward"])) / len(y_ev),
                                 "backward": sum(cost["backward"]) / len(y_ev)},
    }


def _fmt(v: float) -> str:
    return f"{v:.3f}"


def report(name: str, out, results: dict[str, dict[str, dict[str, dict]]],
           context: dict | None = None) -> dict[str, Any]:
    """``report.md``, ``results.json`` and one plot per (dataset, loss): adversarial R@1 vs eps."""
    import io
    import json

    from matplotlib.figure import Figure

    from .._io import atomic_write_bytes, atomic_write_text

    summary: dict[str, Any] = {"experiment": name, "protocol": protocol(), "results": results}
    lines = [f"# rml reproduce {name}", "",
             f"Embedding nets trained on classes {TRAIN_CLASSES[0]}-{TRAIN_CLASSES[-1]}, retrieval on the unseen "
             "classes (test images, leave-one-out). Adversarial R@1: the worst case over APGD on the retrieval "
             f"margin and APGD on the gallery cross-entropy ({EVAL_STEPS} steps) and PGD-{EVAL_PGD_STEPS} (step "
             f"{EVAL_REL_STEP:g} eps), {EVAL_RESTARTS} restarts each, then focus stages (margin, restarts) "
             f"{', '.join(str(tuple(f)) for f in EVAL_FOCUS)} on the near misses and up to {EVAL_ROUNDS} more runs of "
             "the last one with twice the steps until one breaks nothing; l_inf, attacked queries against the clean "
             "gallery. "
             "Training attacks: "
             f"PGD-{TRAIN_STEPS}, l_inf eps = {TRAIN_EPS}. Certified R@1: embedding margin bound / "
             "Lipschitz bound of the network.", ""]
    for ds, per_loss in results.items():
        for loss, per_def in per_loss.items():
            first = next(iter(per_def.values()))
            lines += [f"## {ds}, {loss} loss ({first['n_train']} training images, {first['n_eval']} queries)", "",
                      "| defence | clean R@1 | MAP@R | NMI | " + " | ".join(f"adv R@1 {e:g}" for e in EVAL_EPS)
                      + " | " + " | ".join(f"cert R@1 l2 {e:g}" for e in CERT_L2_EPS)
                      + " | cert R@1 linf 0.01 | train s |",
                      "|---|---|---|---|" + "---|" * (len(EVAL_EPS) + len(CERT_L2_EPS)) + "---|---|"]
            for d, p in per_def.items():
                lines.append(f"| {d} | {_fmt(p['clean']['precision_at_1'])} | "
                             f"{_fmt(p['clean']['mean_average_precision_at_r'])} | {_fmt(p['clean']['NMI'])} | "
                             + " | ".join(map(_fmt, p["adv_recall_at_1"])) + " | "
                             + " | ".join(map(_fmt, p["certified_recall_at_1_l2"])) + " | "
                             + f"{_fmt(p['certified_recall_at_1'][0])} | {p['train_s']:.0f} |")
            lines.append("")
            i = EVAL_EPS.index(TRAIN_EPS)
            for tag, rows in _by_seed(per_def).items():
                nat, ours = rows.get("natural"), rows.get("ours")
                if not (nat and ours):
                    continue
                a_nat, a_ours = nat["adv_recall_at_1"][i], ours["adv_recall_at_1"][i]
                gain = f"{a_ours / a_nat:.1f}x" if a_nat > 0 else f"unbounded (natural {a_nat:.3f})"
                others = {d: p["adv_recall_at_1"][i] for d, p in rows.items() if d not in ("ours", "natural")}
                drop = nat["clean"]["precision_at_1"] - ours["clean"]["precision_at_1"]
                lines.append(f"- at eps = {TRAIN_EPS}{tag}: ours / natural adversarial R@1 = {gain}; "
                             + ", ".join(f"ours {'>' if ours['adv_recall_at_1'][i] > v else '<='} {d} ({v:.3f})"
                                         for d, v in others.items())
                             + f"; clean R@1 {-100 * drop:+.1f} points against natural")
            for d, p in per_def.items():
                s = p["strength"]
                lines.append(f"- {d}: attack checks at eps {s['eps']} on {s['n_queries']} queries: R@1 "
                             f"ensemble {s['ensemble']:.3f}, doubled steps and restarts {s['doubled']:.3f} "
                             f"(breaks {s['doubled_extra']} more queries: {-s['doubled_drop_points']:+.1f} "
                             f"points), PGD-{DECAY_PGD['steps']} x "
                             f"{DECAY_PGD['restarts']} with a decaying step {s['decay_pgd']:.3f} "
                             f"({'ensemble at least as strong' if s['beats_decay_pgd'] else 'ensemble WEAKER'}); "
                             f"adversarial evaluation {p['adv_s']:.0f} s, "
                             f"{p['adv_passes_per_query']['forward']:.0f} forward / "
                             f"{p['adv_passes_per_query']['backward']:.0f} backward passes per query over the "
                             f"{len(EVAL_EPS)} eps; embedding shift PGD "
                             f"{s['shift_pgd_mean']:.3f} vs random search {s['shift_random_mean']:.3f} "
                             f"(PGD below on {s['shift_pgd_below_random']} of {N_SHIFT_CHECK} queries); "
                             f"Lipschitz bound {p['lipschitz']:.3g}; epoch {np.mean(p['epoch_s']):.1f} s")
            lines.append("")
            fig = Figure(figsize=(5, 3.5))
            ax = fig.add_subplot()
            for d, p in per_def.items():
                ax.plot([0.0, *EVAL_EPS], [p["clean"]["precision_at_1"], *p["adv_recall_at_1"]], marker="o", label=d)
            ax.set_xscale("symlog", linthresh=0.01)
            ax.set_xlabel("l_inf eps")
            ax.set_ylabel("adversarial Recall@1")
            ax.set_title(f"{ds}, {loss} loss")
            ax.legend()
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100)
            atomic_write_bytes(out / f"{ds}_{loss}_adv_recall.png", buf.getvalue())
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "results.json", json.dumps(summary, indent=1, default=float))
    return summary


def _by_seed(per_def: dict) -> dict[str, dict]:
    """Rows grouped by seed (``" seed s"`` suffix, or ``""`` for a one-seed run), keyed by defence."""
    groups: dict[str, dict] = {}
    for label, p in per_def.items():
        d, s = split_row_label(label)
        groups.setdefault("" if s is None else f" (seed {s})", {})[d] = p
    return groups


def plan(name: str, out: Path, *, datasets, methods, seeds, n_eval, shuffle_seed, n_jobs, data_home,
         verbose) -> tuple[list[Task], dict]:
    """Robust deep metric learning's tasks, one per (dataset, loss, defence, seed); training
    checkpoints under ``out/checkpoints`` let an interrupted task resume mid-training."""
    from ..datasets import dataset_status

    unknown = sorted(set(methods or ()) - set(ALL_DEFENSES))
    if unknown:
        raise ValueError(f"methods must be among {list(ALL_DEFENSES)} for dml, got {unknown}")
    if n_eval is not None:
        raise ValueError(f"n_eval is fixed by the dml protocol ({N_EVAL}), got {n_eval}")
    if datasets:
        dsets = list(datasets)
    else:
        status = dataset_status(data_home=data_home)
        dsets = [d for d in DATASETS if status[d]["available"]] or ["digits"]
        if dsets == ["digits"] and verbose:
            print("dml: neither MNIST nor Fashion-MNIST is in the data home; running on the bundled digits",
                  flush=True)
    defs = [d for d in ALL_DEFENSES if d in (methods or DEFENSES)]
    seeds = [0] if seeds is None else seeds
    proto = protocol()
    tasks: list[Task] = []
    for ds in dsets:
        for seed in seeds:
            data = _LazyData(ds, seed, data_home)
            for loss in LOSSES:
                for d in defs:
                    key = (name, ds, loss, d, f"seed{seed}")
                    settings = {"experiment": name, "dataset": ds, "loss": loss, "defense": d, "seed": seed,
                                "protocol": proto}
                    ckpt = Path(out) / "checkpoints" / ("-".join(key) + ".pt")
                    tasks.append(Task(
                        key, settings, (ds, loss, row_label(d, seed, seeds)), f"{ds} / {loss} / {d} / seed {seed}",
                        lambda ds=ds, loss=loss, d=d, seed=seed, data=data, ckpt=ckpt: run_task(
                            ds, loss, d, seed, data.get(), checkpoint=ckpt),
                        lambda p: (f"train {p['train_s']:.0f} s, eval {p['eval_s']:.0f} s, R@1 "
                                   f"{p['clean']['precision_at_1']:.3f}, adv R@1 "
                                   + "/".join(f"{v:.3f}" for v in p["adv_recall_at_1"]))))
    return tasks, {}


class _LazyData:
    """A task's data, loaded on first use (a run whose tasks are all cached loads nothing)."""

    def __init__(self, dataset: str, seed: int, data_home):
        self.args, self.data = (dataset, seed, data_home), None

    def get(self):
        if self.data is None:
            self.data = load_task_data(*self.args)
        return self.data
