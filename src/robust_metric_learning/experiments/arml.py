"""The ARML experiments (Provably Robust Metric Learning, NeurIPS 2020) as a declarative config.

Six learners per dataset; for the first ``n_eval`` test points after a seeded shuffle: clean
error, exact 1-NN radii and K-NN (K = 11) certified radii, and the robust-error curves on a
per-dataset ε grid.

The published protocol (the authors' code, github.com/wangwllu/provably_robust_metric_learning:
every training point, metric-learn's defaults for NCA, LMNN, ITML and LFDA, ARML's 1000
full-batch epochs on a GPU, the first 1000 test points after the seed-42 shuffle) is followed on
every dataset except where :data:`DATASET_SETTINGS` says otherwise: on MNIST and Fashion-MNIST
(60000 x 784) it would take days on 2 CPU cores, so there every learner is fitted on (and every
point is evaluated against) a seeded stratified training subsample, and the learners whose
defaults are infeasible at 784 features run with the stated settings. This module is the one
place that states them; the runner puts them in every cache entry's fingerprint and in the report.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from sklearn.base import BaseEstimator

from .._io import atomic_write_text
from .checks import check_radii
from .plugin import Task

__all__ = ["EPS_GRIDS", "METHODS", "eps_grid", "ARML_DATASETS", "DATASET_SETTINGS", "SUBSAMPLE_SEED", "K_CERTIFY",
           "dataset_settings", "make_learner", "subsample", "eval_points", "run_task", "plan", "report",
           "paired_against_best"]

#: the K of the K-NN part of the ARML experiment (certified and empirical radii)
K_CERTIFY = 11

#: ε grids (l2, [0, 1]-scaled features) per dataset; low-dimensional sets use the small grid
EPS_GRIDS: dict[str, list[float]] = {
    "mnist": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
    "fashion-mnist": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
    "usps": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
    "digits": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0],
}
_LOW_DIM_EPS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5]

#: the Mahalanobis datasets of the experiment (digits needs no files)
ARML_DATASETS = ("digits", "pendigits", "usps", "splice", "mnist", "fashion-mnist")


def eps_grid(dataset: str) -> list[float]:
    """The ε grid of ``dataset`` (pendigits, splice and other low-dimensional sets: 0.05 … 0.5)."""
    return list(EPS_GRIDS.get(dataset, _LOW_DIM_EPS))


def _methods() -> dict[str, Callable[[int], BaseEstimator]]:
    from ..learners import ARML, ITML, LFDA, LMNN, NCA, Euclidean

    return {
        "Euclidean": lambda seed: Euclidean(),
        "NCA": lambda seed: NCA(random_state=seed),
        "LMNN": lambda seed: LMNN(random_state=seed),
        "ITML": lambda seed: ITML(random_state=seed),
        "LFDA": lambda seed: LFDA(),
        "ARML": lambda seed: ARML(random_state=seed),
    }


#: method name -> factory(seed) of an unfitted learner (published settings)
METHODS = _methods()
#: its per-point work runs in joblib workers: ``n_jobs`` applies (runner.reproduce)
TAKES_N_JOBS = True


#: Seed of the stratified training subsamples (``n_train``, ``fit_n_train``)
SUBSAMPLE_SEED = 0

#: the published protocol: every training point, 1000 test points, the learners' defaults
_PUBLISHED: dict = {"n_train": None, "n_eval": 1000, "learners": {}, "fit_n_train": {}}

# MNIST and Fashion-MNIST (60000 x 784). Measured on 2 cores with 10000 training points: the
# exact 1-NN radius, the K = 11 bound and the structural attack cost 0.1-1 s per point and
# learner each, one ARML epoch 1.1 s, one LMNN iteration 4.4 s. With the settings below both
# datasets run in well under an hour on 2 cores (the results page of the documentation gives the measured time).
_IMAGES: dict = {
    # training points every learner is fitted on and every test point is evaluated against
    "n_train": 5000,
    # test points evaluated (the first after the seed-42 shuffle), unless --n-eval says otherwise
    "n_eval": 200,
    # learner parameters that differ from the published defaults (set_params on METHODS' learner)
    "learners": {},
    # learners fitted on a smaller stratified subsample of the n_train points (still evaluated
    # against all n_train): method -> number of points
    "fit_n_train": {"LMNN": 2000},
}

#: dataset -> the settings that differ from the published protocol (see :func:`dataset_settings`)
DATASET_SETTINGS: dict[str, dict] = {"mnist": _IMAGES, "fashion-mnist": _IMAGES}


def dataset_settings(dataset: str) -> dict:
    """The protocol of ``dataset``: ``n_train`` (None: every training point), default ``n_eval``,
    ``learners`` (method -> parameters changed from the published defaults) and ``fit_n_train``
    (method -> points it is fitted on, when fewer than ``n_train``); a fresh copy."""
    out = copy.deepcopy(_PUBLISHED)
    out.update(copy.deepcopy(DATASET_SETTINGS.get(dataset, {})))
    return out


def make_learner(method: str, dataset: str, seed: int) -> BaseEstimator:
    """An unfitted ``method`` learner with ``dataset``'s settings (published ones elsewhere)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    learner = METHODS[method](seed)
    changed = dataset_settings(dataset)["learners"].get(method, {})
    return learner.set_params(**changed) if changed else learner


def subsample(X: np.ndarray, y: np.ndarray, n: int | None, *, seed: int = SUBSAMPLE_SEED):
    """A stratified subsample of ``n`` rows of ``(X, y)``, in their original order (all rows if
    ``n`` is None or at least ``len(y)``)."""
    if n is None or n >= len(y):
        return X, y
    from sklearn.model_selection import train_test_split

    idx, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=seed)
    idx = np.sort(idx)
    return X[idx], y[idx]


# ------------------------------------------------------------------ the runner's plugin


def _available(datasets: Sequence[str] | None, data_home) -> list[str]:
    from ..datasets import dataset_status

    if datasets:
        return list(datasets)
    status = dataset_status(data_home=data_home)
    return [d for d in ARML_DATASETS if status[d]["available"]]


def eval_points(dataset: str, n_eval: int, seed: int, data_home, n_train: int | None = None):
    """Training part (a stratified subsample of ``n_train`` points if given) and the first
    ``n_eval`` test points after a shuffle with ``seed``; and the size of the whole training part."""
    from sklearn.utils import shuffle

    from ..datasets import load_dataset

    X_tr, y_tr, X_te, y_te = load_dataset(dataset, data_home=data_home)
    n_full = len(y_tr)
    X_tr, y_tr = subsample(X_tr, y_tr, n_train)
    X_ev, y_ev = shuffle(X_te, y_te, random_state=seed)
    return (X_tr, y_tr, X_ev[:n_eval], y_ev[:n_eval]), n_full


def run_task(dataset: str, method: str, seed: int, data, n_jobs) -> dict:
    """Fit one learner, then radii of the evaluation points: exact 1-NN, K-NN certified and
    K-NN empirical (the structural attack), with the soundness checks."""
    from ..attacks import StructuralAttack
    from ..certify import certified_radius_knn, exact_radius_1nn
    from ..neighbors import MahalanobisKNN

    X_tr, y_tr, X_ev, y_ev = data
    learner = make_learner(method, dataset, seed)
    # a learner too slow for the whole training part is fitted on a stratified subsample of it
    X_fit, y_fit = subsample(X_tr, y_tr, dataset_settings(dataset)["fit_n_train"].get(method))
    t0 = time.perf_counter()
    learner.fit(X_fit, y_fit)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = exact_radius_1nn(X_tr, y_tr, X_ev, y_ev, metric=learner, n_jobs=n_jobs)
    cert_1 = certified_radius_knn(X_tr, y_tr, X_ev, y_ev, n_neighbors=1, metric=learner, n_jobs=n_jobs)
    cert_k = certified_radius_knn(X_tr, y_tr, X_ev, y_ev, n_neighbors=K_CERTIFY, metric=learner, n_jobs=n_jobs)
    certify_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    knn = MahalanobisKNN(K_CERTIFY, metric=learner).fit(X_tr, y_tr)
    empirical_k = StructuralAttack(n_jobs=n_jobs, random_state=seed)(knn, X_ev, y_ev).radii
    attack_s = time.perf_counter() - t0
    name = f"{dataset}/{method}/seed {seed}"
    check_radii(name, cert_1, exact, "1-NN certified bound > exact radius")
    check_radii(name, cert_k, np.asarray(empirical_k, dtype=float), f"K={K_CERTIFY} certified > empirical radius")
    return {"fit_s": fit_s, "certify_s": certify_s, "attack_s": attack_s, "n_eval": int(len(y_ev)),
            "n_train": int(len(y_tr)), "n_fit": int(len(y_fit)), "n_iter": int(getattr(learner, "n_iter_", 0)),
            "radius_1nn_exact": exact.tolist(), "radius_knn_certified": cert_k.tolist(),
            "radius_knn_empirical": np.asarray(empirical_k, dtype=float).tolist()}


def plan(name: str, out: Path, *, datasets, methods, seeds, n_eval, shuffle_seed, n_jobs, data_home,
         verbose) -> tuple[list[Task], dict]:
    """The ARML experiment's tasks (``seeds``: learner seeds, default 0; ``n_eval``: test points
    after a shuffle with ``shuffle_seed``, default each dataset's) and its report's context."""
    seeds = [0] if seeds is None else seeds
    if n_eval is not None and (isinstance(n_eval, bool) or not isinstance(n_eval, (int, np.integer))
                               or n_eval < 1):
        raise ValueError(f"n_eval must be >= 1 (an integer, or None for each dataset's default), got {n_eval!r}")
    unknown = sorted(set(methods or ()) - set(METHODS))
    if unknown:
        raise ValueError(f"methods must be among {list(METHODS)}, got {unknown}")
    dsets = _available(datasets, data_home)
    meths = list(methods or METHODS)
    tasks: list[Task] = []
    protocols: dict = {}
    for ds in dsets:
        proto = dataset_settings(ds)
        ds_n_eval = proto["n_eval"] if n_eval is None else int(n_eval)
        protocols[ds] = {"n_train": proto["n_train"], "n_eval": ds_n_eval, "subsample_seed": SUBSAMPLE_SEED,
                         "learners": proto["learners"], "fit_n_train": proto["fit_n_train"]}
        data, n_full = eval_points(ds, ds_n_eval, shuffle_seed, data_home, proto["n_train"])
        protocols[ds]["n_train_of"] = n_full
        for method in meths:
            for seed in seeds:
                params = {k: repr(v) for k, v in make_learner(method, ds, seed).get_params().items()}
                settings = {"experiment": name, "dataset": ds, "method": method, "seed": seed, "params": params,
                            "n_eval": ds_n_eval, "shuffle_seed": shuffle_seed, "k": K_CERTIFY,
                            "n_train": proto["n_train"], "fit_n_train": proto["fit_n_train"].get(method),
                            "subsample_seed": SUBSAMPLE_SEED}
                tasks.append(Task(
                    (name, ds, method, f"seed{seed}"), settings, (ds, method, seed), f"{ds} / {method} / seed {seed}",
                    lambda ds=ds, method=method, seed=seed, data=data: run_task(ds, method, seed, data, n_jobs),
                    lambda p: f"fit {p['fit_s']:.1f} s, certify {p['certify_s']:.1f} s, attack {p['attack_s']:.1f} s"))
    return tasks, {"grids": {ds: eps_grid(ds) for ds in dsets}, "protocols": protocols}


def _curve(radii: list[float], eps: list[float]) -> list[float]:
    from ..certify import robust_error_curve

    return robust_error_curve(np.asarray(radii, dtype=float), [0.0, *eps]).tolist()


def _protocol_lines(proto: dict, n_full: int | None) -> list[str]:
    """The report's statement of a dataset's protocol where it differs from the published one."""
    lines = []
    if proto["n_train"] is not None:
        lines.append(f"Training part: a stratified subsample of {proto['n_train']} points"
                     + (f" of {n_full}" if n_full else "") + f" (seed {proto['subsample_seed']}); every "
                     "learner is fitted on it and every radius is computed against it.")
    for method, n in proto["fit_n_train"].items():
        lines.append(f"{method} is fitted on a stratified subsample of {n} of those points "
                     f"(seed {proto['subsample_seed']}), evaluated against all of them.")
    for method, params in proto["learners"].items():
        lines.append(f"{method} settings changed from the published defaults: "
                     + ", ".join(f"{k}={v!r}" for k, v in params.items()) + ".")
    return lines + [""] if lines else []


def _eps_table(eps: Sequence[float], rows: dict[str, list[str]]) -> list[str]:
    """Markdown lines of a table with one row per method and one column per ε (0 first)."""
    return (["| method | ε=0 | " + " | ".join(f"ε={e:g}" for e in eps) + " |", "|---|---|" + "---|" * len(eps)]
            + [f"| {m} | " + " | ".join(cells) + " |" for m, cells in rows.items()] + [""])


def paired_against_best(per_method: dict, kind: str, eps: Sequence[float], target: str = "ARML") -> list[dict]:
    """At each ε: ``target`` against the other method with the lowest robust error there, on the
    same points (every seed's points pooled): both errors, the points only one of the two gets
    wrong, and the exact two-sided McNemar p-value (a binomial test on those discordant points)."""
    from scipy.stats import binomtest

    def wrong(method: str, e: float) -> np.ndarray:
        per_seed = per_method[method]
        return np.concatenate([np.asarray(per_seed[s][kind], dtype=float) <= e for s in sorted(per_seed)])

    rows = []
    for e in eps:
        t = wrong(target, e)
        others = {m: wrong(m, e) for m in per_method if m != target}
        best = min(others, key=lambda m: others[m].mean())
        b = others[best]
        t_only, b_only = int((t & ~b).sum()), int((b & ~t).sum())
        p = binomtest(t_only, t_only + b_only).pvalue if t_only + b_only else 1.0
        rows.append({"eps": e, "best_other": best, "best_other_error": float(b.mean()), "error": float(t.mean()),
                     "only_target_wrong": t_only, "only_other_wrong": b_only, "p_value": float(p)})
    return rows


def report(name: str, out: Path, results: dict, context: dict) -> dict:
    """Markdown tables, JSON (radii summarised as curves) and PNG plots, written atomically."""
    from ..certify import plot_robust_error

    grids, protocols = context["grids"], context.get("protocols")

    summary: dict = {"experiment": name, "k": K_CERTIFY, "datasets": {}}
    lines = [f"# rml reproduce {name}", ""]
    kinds = [("radius_1nn_exact", "exact 1-NN"), ("radius_knn_certified", f"K={K_CERTIFY} certified"),
             ("radius_knn_empirical", f"K={K_CERTIFY} empirical (structural attack)")]
    for ds, per_method in results.items():
        eps = grids[ds]
        block: dict = {"eps": eps, "methods": {}}
        for method, per_seed in per_method.items():
            curves = {kind: np.mean([_curve(p[kind], eps) for p in per_seed.values()], axis=0).tolist()
                      for kind, _ in kinds}
            first = next(iter(per_seed.values()))
            block["methods"][method] = {
                "curves": curves, "seeds": sorted(per_seed),
                "fit_s": float(np.mean([p["fit_s"] for p in per_seed.values()])),
                "seconds": float(np.mean([p["fit_s"] + p["certify_s"] + p["attack_s"] for p in per_seed.values()])),
                "n_eval": first["n_eval"], "n_train": first.get("n_train"), "n_fit": first.get("n_fit")}
        proto = (protocols or {}).get(ds)
        if proto is not None:
            block["protocol"] = proto
        summary["datasets"][ds] = block
        n_eval = next(iter(block["methods"].values()))["n_eval"]
        n_train = next(iter(block["methods"].values()))["n_train"]
        lines += [f"## {ds} ({n_eval} test points" + (f", {n_train} training points" if n_train else "") + ")", ""]
        if proto is not None:
            lines += _protocol_lines(proto, proto.get("n_train_of"))
        for kind, label in kinds:
            lines += [f"{label} robust error (at ε = 0: the clean error; a certified radius of 0 also counts):", ""]
            lines += _eps_table(eps, {m: [f"{v:.3f}" for v in c["curves"][kind]] for m, c in block["methods"].items()})
            plot_robust_error({m: v["curves"][kind] for m, v in block["methods"].items()}, [0.0, *eps],
                              path=out / f"{ds}_{kind}.png", title=f"{ds}: {label}")
        gap = {m: (np.array(v["curves"]["radius_knn_certified"]) - np.array(v["curves"]["radius_knn_empirical"]))
               .round(4).tolist() for m, v in block["methods"].items()}
        block["certified_minus_empirical"] = gap
        lines += [f"K={K_CERTIFY} gap, certified − empirical robust error, in points (the truth lies between):", ""]
        lines += _eps_table(eps, {m: [f"{100 * v:.1f}" for v in g] for m, g in gap.items()})
        if "ARML" in per_method and len(per_method) > 1:
            block["arml_vs_best"] = {kind: paired_against_best(per_method, kind, eps) for kind, _ in kinds}
            lines += ["ARML against the other method with the lowest robust error at each ε, on the same "
                      "points: that method, its error / ARML's, and the exact McNemar p-value of the difference "
                      "(a binomial test on the points only one of the two gets wrong):", "",
                      "| ε | " + " | ".join(label for _, label in kinds) + " |", "|---|" + "---|" * len(kinds)]
            for i, e in enumerate(eps):
                cells = [block["arml_vs_best"][kind][i] for kind, _ in kinds]
                lines.append(f"| {e:g} | " + " | ".join(
                    f"{r['best_other']} {r['best_other_error']:.3f} / {r['error']:.3f} (p {r['p_value']:.2g})"
                    for r in cells) + " |")
            lines.append("")
        lines += ["fit seconds: " + ", ".join(f"{m} {v['fit_s']:.1f}" for m, v in block["methods"].items()),
                  "", "seconds in all (fit, radii, attack): "
                  + ", ".join(f"{m} {v['seconds']:.1f}" for m, v in block["methods"].items()), ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    atomic_write_text(out / "results.json", json.dumps(summary, indent=1) + "\n")
    return summary
