"""LMNN-PL vs LMNN vs Euclidean: the published perturbation-loss protocol (Yang et al., TNNLS 2022).

Protocol
--------
For each dataset (wine, breast_cancer, splice) and each seed: all the rows the loader gives
(its train and test parts concatenated, raw features) are split 70/30, stratified, with
``random_state=seed``. Every method is the pipeline

    StandardScaler -> Normalizer (rows to unit l2 norm) -> MahalanobisKNN(3, metric=...)

fitted on the training part only:

* ``Euclidean``: ``metric="euclidean"``.
* ``LMNN``: ``metric=LMNNPL(...)`` without perturbation (the paper's LMNN baseline), ``mu``
  chosen by 5-fold stratified CV on the training part.
* ``LMNN-PL``: ``LMNNPL(perturbation=PerturbationLoss(tau, lam))``, ``(mu, lam, tau)`` chosen
  by 5-fold stratified CV on the training part.

Both searches are scikit-learn's ``RandomizedSearchCV`` on the whole pipeline, scored by
accuracy, refitted on the whole training part. The grids are lists, so candidates are drawn
without replacement (``random_state=seed``); the LMNN search draws all of its candidates.
Ties in mean CV accuracy (frequent on small sets) go to the candidate drawn first
(:func:`first_best`), i.e. they are broken at random, the same way for both methods. The
test part is used only for the final evaluation.

Grids (``GRID``), chosen on an exploration split (seed 1000, not one of the benchmark's):
``mu`` in {0.1, 0.3, 0.5} (the weight of the *pull* term; at ``mu = 0.8`` splice's metric
collapses towards 0 and its accuracy to chance); ``lam`` in {0.1, 1, 10}, so that the
perturbation loss (at most ``tau^2`` per triplet) goes from a small fraction of the LMNN loss
(about 0.1-0.5 at the optimum) to dominating it; ``tau`` in {0.1, 0.2, 0.4, 0.8}, l2 in the
preprocessed space, where rows have unit norm (distances <= 2; test 1-NN radii are about
0.03-0.1 on splice and 0.3-0.4 on wine and breast_cancer). The projected-gradient step is
``50 / max(1, lam * tau)`` (:func:`learning_rate`): with the published step of 50, the fits with
``lam = 10, tau = 0.8`` diverge from the first epoch on wine and breast_cancer (the loss never
goes below its value at the identity, and the no-improvement rule stops them after 11 epochs,
with no ``ConvergenceWarning``). ``LMNN-PL`` draws
``--n-iter-pl`` (6) of the 36 ``(mu, lam, tau)`` candidates per split, LMNN all 3 of its own:
the whole run (3 datasets x 20 seeds) took 26 minutes on one core. Training runs in float32
(float64 gives the same accuracies and radii to about 3 decimals on the exploration split, at
~1.5x the time); certification in float64. Other settings (``LEARNER``): the published 3
targets x 10 impostors and projected gradient descent from the identity, and the library's
``max_iter=300``, ``tol=1e-4``. On breast_cancer LMNN does not converge in 300 epochs (it needs
1000-1600; on the exploration split, running it to convergence leaves the CV accuracy within
0.003 and shrinks the test median radius from 0.31 to 0.24), so there the LMNN baseline's
radius is, if anything, flattered.

Metrics on the test part: 3-NN accuracy; 1-NN accuracy; the exact certified 1-NN radius of
every test point (``exact_radius_1nn`` through ``MahalanobisKNN(1).certify``, l2 in the
preprocessed space, i.e. after z-scoring and row normalisation fitted on the training part),
**0 for points the 1-NN classifier already gets wrong** (the library's convention). Medians are
reported both that way and over the correctly classified points only. Per dataset: mean and
std of the 3-NN accuracy over the seeds, the median radius over all test points of all seeds
pooled, the mean of the per-seed medians, and the distribution of the CV-chosen
hyper-parameters.

Aims (per dataset): mean 3-NN accuracy of LMNN-PL >= LMNN's, and the pooled median certified
radius (0 for misclassified points) of LMNN-PL > LMNN's.

Each (dataset, seed, method) result is cached in ``benchmarks/results/lmnn_pl.json`` (written
atomically after each) together with a fingerprint of the protocol; entries of another
protocol are recomputed. ``--force`` recomputes everything asked for.

Run::

    OMP_WAIT_POLICY=PASSIVE RML_DATA=../shared/data \\
        python benchmarks/bench_lmnn_pl.py [--datasets wine breast_cancer splice] \\
        [--seeds 0 1 ... 19] [--n-jobs 1] [--n-iter-pl 6] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "lmnn_pl.json"
DATASETS = ["wine", "breast_cancer", "splice"]
METHODS = ["Euclidean", "LMNN", "LMNN-PL"]
K = 3
CV_FOLDS = 5
TEST_SIZE = 0.3

#: hyper-parameter grids (see the module docstring for the reasons)
GRID: dict[str, list[float]] = {"mu": [0.1, 0.3, 0.5], "lam": [0.1, 1.0, 10.0], "tau": [0.1, 0.2, 0.4, 0.8]}
#: the published projected-gradient step, divided by max(1, lam)
BASE_LR = 50.0
#: fixed settings of every LMNNPL fit (the published recipe: 3 targets x 10 impostors)
LEARNER = {"k": 3, "n_impostors": 10, "solver": "sgd", "max_iter": 300, "tol": 1e-4, "dtype": "float32"}
N_ITER_PL = 6
#: mean CV accuracies this close count as tied
TIE_TOL = 1e-9


# ------------------------------------------------------------------------------ pieces


def learning_rate(lam: float, tau: float) -> float:
    """Projected-gradient step: ``BASE_LR / max(1, lam * tau)``.

    The gradient of the perturbation loss is ``2 lam m dm/dM`` over the triplets with margin
    ``0 <= m < tau``, so its size grows like ``lam * tau``; the published step of 50 is kept
    while ``lam * tau <= 1``.
    """
    return BASE_LR / max(1.0, lam * tau)


def protocol(n_iter_pl: int) -> dict[str, Any]:
    """Everything that defines a result; its hash invalidates cached entries of other protocols."""
    return {"k": K, "cv_folds": CV_FOLDS, "test_size": TEST_SIZE, "grid": GRID, "base_lr": BASE_LR,
            "learner": LEARNER, "n_iter_pl": n_iter_pl, "lr_rule": "base_lr / max(1, lam * tau)", "tie_tol": TIE_TOL, "preprocessing": "StandardScaler -> Normalizer(l2)",
            "search": "RandomizedSearchCV(scoring='accuracy', random_state=seed), StratifiedKFold(5, shuffle, seed)",
            "radius": "exact 1-NN, l2 in the preprocessed space, 0 if 1-NN is wrong"}


def fingerprint(proto: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(proto, sort_keys=True).encode()).hexdigest()[:16]


def data_home() -> str:
    return os.environ.get("RML_DATA", str(REPO.parent / "shared" / "data"))


def load_all(name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """All rows of a dataset (the loader's train and test parts together, raw features)."""
    from robust_metric_learning.datasets import load_dataset

    try:
        X_tr, y_tr, X_te, y_te = load_dataset(name, data_home=data_home(), scale=False)
    except FileNotFoundError as exc:
        print(f"skipping {name}: {str(exc).splitlines()[0]}")
        return None
    return np.vstack([X_tr, X_te]), np.concatenate([y_tr, y_te])


def knn_pipeline(metric: Any, n_jobs: int | None = None):
    """z-score -> unit l2 rows -> 3-NN under ``metric``."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    from robust_metric_learning.neighbors import MahalanobisKNN

    return Pipeline([("scale", StandardScaler()), ("normalize", Normalizer()),
                     ("knn", MahalanobisKNN(K, metric=metric, n_jobs=n_jobs))])


def search_space(method: str) -> list[dict[str, list]]:
    """``RandomizedSearchCV`` distributions (all lists: drawn without replacement)."""
    if method == "LMNN":
        return [{"knn__metric__mu": GRID["mu"]}]
    return [{"knn__metric__mu": GRID["mu"], "knn__metric__perturbation__tau": [tau],
             "knn__metric__perturbation__weight": [lam], "knn__metric__learning_rate": [learning_rate(lam, tau)]}
            for lam in GRID["lam"] for tau in GRID["tau"]]


def first_best(cv_results: dict[str, Any]) -> int:
    """``refit`` rule: the first candidate drawn whose mean CV accuracy is the best (to 1e-9).

    Means of equal fold accuracies can differ in the last bits; without the tolerance those
    bits, not the draw order, would break ties.
    """
    means = np.asarray(cv_results["mean_test_score"])
    return int(np.flatnonzero(means >= means.max() - TIE_TOL)[0])


def short(params: dict[str, Any]) -> dict[str, float]:
    """``knn__metric__perturbation__weight`` -> ``lam`` etc."""
    names = {"knn__metric__mu": "mu", "knn__metric__perturbation__tau": "tau",
             "knn__metric__perturbation__weight": "lam", "knn__metric__learning_rate": "lr"}
    return {names[k]: float(v) for k, v in params.items()}


def run_one(X: np.ndarray, y: np.ndarray, seed: int, method: str, n_iter_pl: int, n_jobs: int) -> dict[str, Any]:
    """Fit ``method`` on the seed's training part (CV inside it), evaluate on its test part."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import (
        RandomizedSearchCV,
        StratifiedKFold,
        train_test_split,
    )

    from robust_metric_learning.learners import LMNNPL, PerturbationLoss
    from robust_metric_learning.neighbors import MahalanobisKNN

    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=TEST_SIZE, stratify=y, random_state=seed)
    out: dict[str, Any] = {"n_train": len(y_tr), "n_test": len(y_te)}
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if method == "Euclidean":
            best = knn_pipeline("euclidean", n_jobs).fit(X_tr, y_tr)
        else:
            pl = None if method == "LMNN" else PerturbationLoss()
            space = search_space(method)
            n_cand = sum(int(np.prod([len(v) for v in d.values()])) for d in space)
            n_iter = n_cand if method == "LMNN" else min(n_iter_pl, n_cand)
            search = RandomizedSearchCV(
                knn_pipeline(LMNNPL(perturbation=pl, **LEARNER), n_jobs), space, n_iter=n_iter,
                scoring="accuracy", cv=StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed),
                refit=first_best, n_jobs=n_jobs, random_state=seed, error_score="raise",
            ).fit(X_tr, y_tr)
            best = search.best_estimator_
            res = search.cv_results_
            means = np.asarray(res["mean_test_score"])
            out.update(
                params=short(res["params"][search.best_index_]), cv_score=float(means[search.best_index_]),
                cv_ties=int(np.sum(means >= means.max() - TIE_TOL)),
                cv=[{**short(p), "mean": round(float(m), 6), "std": round(float(s), 6), "fit_s": round(float(t), 3)}
                    for p, m, s, t in zip(res["params"], means, res["std_test_score"], res["mean_fit_time"])],
            )
            learner = best[-1].metric_
            out.update(n_iter=int(learner.n_iter_), max_iter=int(learner.max_iter))
    out["fit_s"] = time.perf_counter() - t0
    # warnings of fits in other processes (n_jobs > 1) are not seen here
    out["convergence_warnings"] = sum(issubclass(w.category, ConvergenceWarning) for w in caught) \
        if n_jobs == 1 else None
    pre, knn3 = best[:-1], best[-1]
    out["acc3"] = float(best.score(X_te, y_te))
    t0 = time.perf_counter()
    P_tr, P_te = pre.transform(X_tr), pre.transform(X_te)
    metric = "euclidean" if knn3.metric_ is None else knn3.metric_  # the fitted learner
    knn1 = MahalanobisKNN(1, metric=metric, n_jobs=n_jobs).fit(P_tr, y_tr)
    radii = knn1.certify(P_te, y_te, method="exact", progress=False)
    out["certify_s"] = time.perf_counter() - t0
    correct = knn1.predict(P_te) == y_te
    out["acc1"] = float(correct.mean())
    out["median_radius"] = float(np.median(radii))
    out["median_radius_correct"] = float(np.median(radii[correct])) if correct.any() else None
    out["radii"] = [round(float(r), 7) for r in radii]
    out["correct1"] = correct.astype(int).tolist()
    return out


# ------------------------------------------------------------------------------ summary


def summarize(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-method statistics over the seeds of one dataset."""
    acc3 = np.array([e["acc3"] for e in entries])
    radii = np.concatenate([e["radii"] for e in entries])
    correct = np.concatenate([e["correct1"] for e in entries]).astype(bool)
    s: dict[str, Any] = {
        "n_seeds": len(entries), "seeds": [e["seed"] for e in entries],
        "acc3_mean": float(acc3.mean()), "acc3_std": float(acc3.std(ddof=1)) if len(acc3) > 1 else 0.0,
        "acc1_mean": float(np.mean([e["acc1"] for e in entries])),
        "median_radius": float(np.median(radii)),
        "median_radius_correct": float(np.median(radii[correct])) if correct.any() else None,
        "mean_split_median_radius": float(np.mean([e["median_radius"] for e in entries])),
        "fit_s": float(sum(e["fit_s"] for e in entries)), "certify_s": float(sum(e["certify_s"] for e in entries)),
    }
    if "params" in entries[0]:
        s["chosen"] = {name: {str(v): c for v, c in sorted(Counter(e["params"][name] for e in entries).items())}
                       for name in entries[0]["params"] if name != "lr"}
        s["chosen_combinations"] = dict(Counter(
            " ".join(f"{k}={v:g}" for k, v in e["params"].items() if k != "lr") for e in entries).most_common())
        s["cv_ties_mean"] = float(np.mean([e["cv_ties"] for e in entries]))
        s["n_iter_mean"] = float(np.mean([e["n_iter"] for e in entries]))
        s["n_iter_hit_max"] = int(sum(e["n_iter"] >= e["max_iter"] for e in entries))
        s["n_iter_le_11"] = int(sum(e["n_iter"] <= 11 for e in entries))
    return s


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Paired comparison of LMNN-PL (``a``) with LMNN (``b``) over common seeds."""
    from scipy.stats import wilcoxon

    da = np.array([x["acc3"] - y["acc3"] for x, y in zip(a, b)])
    dr = np.array([x["median_radius"] - y["median_radius"] for x, y in zip(a, b)])

    def p_value(d: np.ndarray) -> float | None:
        if len(d) < 2 or not np.any(d != 0):
            return None
        return float(wilcoxon(d).pvalue)

    return {"acc3_diff_mean": float(da.mean()), "acc3_wins_ties_losses": [int((da > 0).sum()), int((da == 0).sum()),
                                                                         int((da < 0).sum())],
            "acc3_wilcoxon_p": p_value(da),
            "median_radius_wins_ties_losses": [int((dr > 0).sum()), int((dr == 0).sum()), int((dr < 0).sum())],
            "median_radius_wilcoxon_p": p_value(dr)}


def fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.2g}"


def fmt_chosen(s: dict[str, Any]) -> str:
    if "chosen" not in s:
        return ""
    return "; ".join(f"{n}: " + ", ".join(f"{v}x{c}" for v, c in d.items()) for n, d in s["chosen"].items())


def report(summary: dict[str, Any]) -> None:
    """Markdown table and the aims, per dataset."""
    for ds, by in summary.items():
        n = next(iter(by["methods"].values()))["n_seeds"]
        print(f"\n### {ds} ({n} random 70/30 splits)\n")
        print("| method | 3-NN acc (mean ± std) | 1-NN acc | median radius (0 if wrong) | median radius "
              "(correct only) | mean of split medians | CV-chosen hyper-parameters (value x count) |")
        print("|---|---|---|---|---|---|---|")
        for m, s in by["methods"].items():
            mc = s["median_radius_correct"]
            print(f"| {m} | {s['acc3_mean']:.4f} ± {s['acc3_std']:.4f} | {s['acc1_mean']:.4f} | "
                  f"{s['median_radius']:.4f} | {'-' if mc is None else f'{mc:.4f}'} | "
                  f"{s['mean_split_median_radius']:.4f} | {fmt_chosen(s)} |")
        aims = by.get("aims")
        if aims:
            c = by["paired"]
            print(f"\naim 1 (mean 3-NN accuracy LMNN-PL >= LMNN): {'MET' if aims['accuracy'] else 'NOT MET'} "
                  f"(difference {c['acc3_diff_mean']:+.4f}; splits won/tied/lost {c['acc3_wins_ties_losses']}, "
                  f"Wilcoxon p={fmt_p(c['acc3_wilcoxon_p'])})")
            print(f"aim 2 (pooled median certified 1-NN radius LMNN-PL > LMNN): "
                  f"{'MET' if aims['radius'] else 'NOT MET'} ({aims['radius_values'][0]:.4f} vs "
                  f"{aims['radius_values'][1]:.4f}; correct-only convention: {aims['radius_correct_values'][0]:.4f} "
                  f"vs {aims['radius_correct_values'][1]:.4f}; per-split medians won/tied/lost "
                  f"{c['median_radius_wins_ties_losses']}, Wilcoxon p={fmt_p(c['median_radius_wilcoxon_p'])})")


def build_summary(cache: dict[str, Any], datasets: list[str], seeds: list[int], fp: str) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for ds in datasets:
        by = {m: [cache[k] for s in seeds if (k := f"{ds}/{s}/{m}") in cache and cache[k]["protocol"] == fp]
              for m in METHODS}
        if not any(by.values()):
            continue
        entry: dict[str, Any] = {"methods": {m: summarize(v) for m, v in by.items() if v}}
        common = sorted({e["seed"] for e in by["LMNN"]} & {e["seed"] for e in by["LMNN-PL"]})
        if common:
            a = [e for e in by["LMNN-PL"] if e["seed"] in common]
            b = [e for e in by["LMNN"] if e["seed"] in common]
            sa, sb = summarize(a), summarize(b)
            entry["paired"] = compare(a, b)
            entry["aims"] = {"seeds": common, "accuracy": sa["acc3_mean"] >= sb["acc3_mean"],
                             "radius": sa["median_radius"] > sb["median_radius"],
                             "radius_values": [sa["median_radius"], sb["median_radius"]],
                             "radius_correct": (sa["median_radius_correct"] or 0) > (sb["median_radius_correct"] or 0),
                             "radius_correct_values": [sa["median_radius_correct"], sb["median_radius_correct"]]}
        summary[ds] = entry
    return summary


# ------------------------------------------------------------------------------ main

_NUMBER_LIST = re.compile(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]")


def dumps(doc: dict[str, Any]) -> str:
    """JSON with ``indent=1``, but each list of numbers (per-point radii) on one line."""
    return _NUMBER_LIST.sub(lambda m: "[" + ",".join(x.strip() for x in m.group(1).split(",")) + "]",
                            json.dumps(doc, indent=1)) + "\n"



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=DATASETS)
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(20)))
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--n-jobs", type=int, default=1, help="joblib workers for the CV search and certification")
    p.add_argument("--n-iter-pl", type=int, default=N_ITER_PL, help="LMNN-PL candidates drawn per split")
    p.add_argument("--force", action="store_true", help="recompute cached results")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args()

    import torch

    from robust_metric_learning._io import atomic_write_text

    torch.set_num_threads(1)  # parallelism, if any, comes from --n-jobs processes
    proto = protocol(args.n_iter_pl)
    fp = fingerprint(proto)
    doc = json.loads(args.output.read_text()) if args.output.is_file() else {}
    cache: dict[str, Any] = doc.get("splits", {})
    stale = [k for k, v in cache.items() if v.get("protocol") != fp]
    if stale:
        print(f"{len(stale)} cached entries are from another protocol; they are kept but not used")

    def save() -> None:
        out = {"protocol": proto, "protocol_id": fp, "splits": cache,
               "summary": build_summary(cache, DATASETS, sorted({v["seed"] for v in cache.values()}), fp)}
        atomic_write_text(args.output, dumps(out))

    t_start = time.perf_counter()
    for ds in args.datasets:
        data = load_all(ds)
        if data is None:
            continue
        X, y = data
        for seed in args.seeds:
            for m in args.methods:
                key = f"{ds}/{seed}/{m}"
                if key in cache and cache[key].get("protocol") == fp and not args.force:
                    continue
                r = run_one(X, y, seed, m, args.n_iter_pl, args.n_jobs)
                cache[key] = {"dataset": ds, "seed": seed, "method": m, "protocol": fp, **r}
                save()
                extra = f" {r['params']} cv={r['cv_score']:.4f} ties={r['cv_ties']} it={r['n_iter']}" \
                    if "params" in r else ""
                print(f"{key}: acc3 {r['acc3']:.4f} median radius {r['median_radius']:.4f} "
                      f"fit {r['fit_s']:.1f}s{extra}", flush=True)
    save()
    print(f"\nthis invocation: {time.perf_counter() - t_start:.0f} s")
    summary = build_summary(cache, args.datasets, args.seeds, fp)
    total = sum(m["fit_s"] + m["certify_s"] for by in summary.values() for m in by["methods"].values())
    print(f"compute recorded for the results shown (fit + certify): {total:.0f} s")
    report(summary)


if __name__ == "__main__":
    main()
