"""Run a published experiment task by task, caching each finished (dataset, method, seed)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .._io import atomic_write_text
from .cache import ResultCache, fingerprint
from .checks import check_radii

__all__ = ["reproduce", "EXPERIMENTS"]

EXPERIMENTS = ("arml", "lmnn-pl", "dml")
#: the K of the K-NN part of the ARML experiment (certified and empirical radii)
K_CERTIFY = 11
#: relative slack of the soundness check (radii come from solvers with ~1e-9 tolerance)


def _available(datasets: Sequence[str] | None, data_home) -> list[str]:
    from ..datasets import dataset_status
    from .arml import ARML_DATASETS

    if datasets:
        return list(datasets)
    status = dataset_status(data_home=data_home)
    return [d for d in ARML_DATASETS if status[d]["available"]]


def _eval_points(dataset: str, n_eval: int, seed: int, data_home, n_train: int | None = None):
    """Training part (a stratified subsample of ``n_train`` points if given) and the first
    ``n_eval`` test points after a shuffle with ``seed``; and the size of the whole training part."""
    from sklearn.utils import shuffle

    from ..datasets import load_dataset
    from .arml import subsample

    X_tr, y_tr, X_te, y_te = load_dataset(dataset, data_home=data_home)
    n_full = len(y_tr)
    X_tr, y_tr = subsample(X_tr, y_tr, n_train)
    X_ev, y_ev = shuffle(X_te, y_te, random_state=seed)
    return (X_tr, y_tr, X_ev[:n_eval], y_ev[:n_eval]), n_full


def _arml_task(dataset: str, method: str, seed: int, data, n_jobs) -> dict:
    """Fit one learner, then radii of the evaluation points: exact 1-NN, K-NN certified and
    K-NN empirical (the structural attack), with the soundness checks."""
    from ..attacks import StructuralAttack
    from ..certify import certified_radius_knn, exact_radius_1nn
    from ..neighbors import MahalanobisKNN
    from .arml import dataset_settings, make_learner, subsample

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


def _cached(cache: ResultCache, key: tuple, settings: dict, compute, verbose: bool, label: str, describe) -> dict:
    """The cached payload of ``key`` if valid under ``settings``, else ``compute()``, stored."""
    fp = fingerprint(settings)
    payload = cache.load(key, fp)
    status = "cached"
    if payload is None:
        payload = compute()
        cache.store(key, fp, payload)
        status = describe(payload)
    if verbose:
        print(f"{label}: {status}", flush=True)
    return payload


def reproduce(name: str, out: str | Path, *, datasets: Sequence[str] | None = None,
              methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None, n_eval: int | None = None,
              shuffle_seed: int = 42, n_jobs: int | None = None, data_home=None, verbose: bool = True) -> dict:
    """Run experiment ``name`` into folder ``out``: cached task results under ``out/cache``,
    then ``report.md``, ``results.json`` and plots per dataset.

    ``"arml"``: ``seeds`` are learner seeds (default 0), ``n_eval`` test points after a shuffle
    with ``shuffle_seed`` (default: the dataset's, 1000 unless ``experiments/arml.py`` states
    otherwise); the training subsample and learner settings of each dataset are those of
    ``experiments.arml.dataset_settings``. ``"lmnn-pl"``: ``seeds`` are the seeds of the random
    70/30 splits (default 0-19), every test point is evaluated (``n_eval`` must stay None).
    Interrupting and rerunning recomputes only the tasks not yet finished; a corrupt or partial
    cache entry is detected (checksum) and recomputed.
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {list(EXPERIMENTS)}, got {name!r}")
    if seeds is not None:
        seeds = list(seeds)
        if not seeds or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in seeds):
            raise ValueError(f"seeds must be a non-empty list of non-negative integers, got {seeds!r}")
    if name == "dml":
        return _reproduce_dml(name, Path(out), datasets=datasets, methods=methods, seeds=seeds, n_eval=n_eval,
                              data_home=data_home, verbose=verbose)
    if name == "lmnn-pl":
        if n_eval is not None:
            raise ValueError(f"n_eval is for the 'arml' experiment ('lmnn-pl' evaluates every test point), got {n_eval}")
        return _reproduce_lmnn_pl(name, Path(out), datasets=datasets, methods=methods, seeds=seeds, n_jobs=n_jobs,
                                  data_home=data_home, verbose=verbose)
    from .arml import METHODS, SUBSAMPLE_SEED, dataset_settings, eps_grid, make_learner

    seeds = [0] if seeds is None else seeds
    if n_eval is not None and (isinstance(n_eval, bool) or not isinstance(n_eval, (int, np.integer))
                               or n_eval < 1):
        raise ValueError(f"n_eval must be >= 1 (an integer, or None for each dataset's default), got {n_eval!r}")
    unknown = sorted(set(methods or ()) - set(METHODS))
    if unknown:
        raise ValueError(f"methods must be among {list(METHODS)}, got {unknown}")
    out = Path(out)
    cache = ResultCache(out / "cache")
    dsets = _available(datasets, data_home)
    meths = list(methods or METHODS)
    results: dict = {}
    protocols: dict = {}
    for ds in dsets:
        proto = dataset_settings(ds)
        ds_n_eval = proto["n_eval"] if n_eval is None else int(n_eval)
        protocols[ds] = {"n_train": proto["n_train"], "n_eval": ds_n_eval, "subsample_seed": SUBSAMPLE_SEED,
                         "learners": proto["learners"], "fit_n_train": proto["fit_n_train"]}
        data, n_full = _eval_points(ds, ds_n_eval, shuffle_seed, data_home, proto["n_train"])
        protocols[ds]["n_train_of"] = n_full
        for method in meths:
            for seed in seeds:
                params = {k: repr(v) for k, v in make_learner(method, ds, seed).get_params().items()}
                settings = {"experiment": name, "dataset": ds, "method": method, "seed": seed, "params": params,
                            "n_eval": ds_n_eval, "shuffle_seed": shuffle_seed, "k": K_CERTIFY,
                            "n_train": proto["n_train"], "fit_n_train": proto["fit_n_train"].get(method),
                            "subsample_seed": SUBSAMPLE_SEED}
                payload = _cached(
                    cache, (name, ds, method, f"seed{seed}"), settings,
                    lambda: _arml_task(ds, method, seed, data, n_jobs), verbose, f"{ds} / {method} / seed {seed}",
                    lambda p: f"fit {p['fit_s']:.1f} s, certify {p['certify_s']:.1f} s, attack {p['attack_s']:.1f} s")
                results.setdefault(ds, {}).setdefault(method, {})[seed] = payload
    return _report(name, out, results, {ds: eps_grid(ds) for ds in dsets}, protocols)


def _lmnn_pl_task(X, y, seed: int, method: str, n_jobs, name: str) -> dict:
    from .lmnn_pl import run_split

    return run_split(X, y, seed, method, n_jobs=n_jobs, name=name)


def _reproduce_lmnn_pl(name: str, out: Path, *, datasets, methods, seeds, n_jobs, data_home, verbose) -> dict:
    """The perturbation-loss protocol (experiments/lmnn_pl.py), one cached task per split."""
    from ..datasets import dataset_status
    from . import lmnn_pl

    unknown = sorted(set(methods or ()) - set(lmnn_pl.METHODS))
    if unknown:
        raise ValueError(f"methods must be among {list(lmnn_pl.METHODS)}, got {unknown}")
    if datasets:
        dsets = list(datasets)
    else:
        status = dataset_status(data_home=data_home)
        dsets = [d for d in lmnn_pl.DATASETS if status[d]["available"]]
    meths = [m for m in lmnn_pl.METHODS if m in (methods or lmnn_pl.METHODS)]
    seeds = list(lmnn_pl.DEFAULT_SEEDS) if seeds is None else seeds
    proto = lmnn_pl.protocol()
    cache = ResultCache(out / "cache")
    results: dict = {}
    for ds in dsets:
        X, y = lmnn_pl.load_all(ds, data_home)
        for method in meths:
            for seed in seeds:
                label = f"{ds} / {method} / split {seed}"
                settings = {"experiment": name, "dataset": ds, "method": method, "seed": seed, "protocol": proto,
                            "n_rows": int(len(y))}
                payload = _cached(
                    cache, (name, ds, method, f"seed{seed}"), settings,
                    lambda: _lmnn_pl_task(X, y, seed, method, n_jobs, label), verbose, label,
                    lambda p: (f"fit {p['fit_s']:.1f} s, acc3 {p['acc3']:.4f}, median radius {p['median_radius']:.4f}"
                               + (f", {p['params']}" if "params" in p else "")))
                results.setdefault(ds, {}).setdefault(method, {})[seed] = payload
    return lmnn_pl.report(name, out, results)


def _reproduce_dml(name: str, out: Path, *, datasets, methods, seeds, n_eval, data_home, verbose) -> dict:
    """Robust deep metric learning (experiments/dml.py): one cached task per (dataset, loss,
    defence, seed); training checkpoints under ``out/checkpoints`` let an interrupted task
    resume mid-training."""
    from ..datasets import dataset_status
    from . import dml

    unknown = sorted(set(methods or ()) - set(dml.ALL_DEFENSES))
    if unknown:
        raise ValueError(f"methods must be among {list(dml.ALL_DEFENSES)} for dml, got {unknown}")
    if n_eval is not None:
        raise ValueError(f"n_eval is fixed by the dml protocol ({dml.N_EVAL}), got {n_eval}")
    if datasets:
        dsets = list(datasets)
    else:
        status = dataset_status(data_home=data_home)
        dsets = [d for d in dml.DATASETS if status[d]["available"]] or ["digits"]
        if dsets == ["digits"] and verbose:
            print("dml: neither MNIST nor Fashion-MNIST is in the data home; running on the bundled digits",
                  flush=True)
    defs = [d for d in dml.ALL_DEFENSES if d in (methods or dml.DEFENSES)]
    seeds = [0] if seeds is None else seeds
    proto = dml.protocol()
    cache = ResultCache(out / "cache")
    results: dict = {}
    for ds in dsets:
        for seed in seeds:
            data = dml.load_task_data(ds, seed, data_home)
            for loss in dml.LOSSES:
                for d in defs:
                    label = f"{ds} / {loss} / {d} / seed {seed}"
                    key = (name, ds, loss, d, f"seed{seed}")
                    settings = {"experiment": name, "dataset": ds, "loss": loss, "defense": d, "seed": seed,
                                "protocol": proto}
                    ckpt = out / "checkpoints" / ("-".join(key) + ".pt")
                    payload = _cached(
                        cache, key, settings, lambda: dml.run_task(ds, loss, d, seed, data, checkpoint=ckpt),
                        verbose, label,
                        lambda p: (f"train {p['train_s']:.0f} s, eval {p['eval_s']:.0f} s, R@1 "
                                   f"{p['clean']['precision_at_1']:.3f}, adv R@1 "
                                   + "/".join(f"{v:.3f}" for v in p["adv_recall_at_1"])))
                    results.setdefault(ds, {}).setdefault(loss, {})[d] = payload
    return dml.report(name, out, results)


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


def _report(name: str, out: Path, results: dict, grids: dict, protocols: dict | None = None) -> dict:
    """Markdown tables, JSON (radii summarised as curves) and PNG plots, written atomically."""
    from ..certify import plot_robust_error

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
