"""The perturbation-loss experiment (Yang, Guo, Dong & Xue, TNNLS 2022) as a declarative config.

Protocol
--------
For each dataset and each split seed: all the rows the loader gives (its train and test parts
together, raw features) are split 70/30, stratified, with ``random_state=seed``. Every method
is the pipeline ``StandardScaler -> Normalizer (rows to unit l2 norm) -> MahalanobisKNN(3)``,
the authors' preprocessing, fitted on the training part only:

* ``Euclidean``: no learning.
* ``LMNN``: :class:`~robust_metric_learning.learners.LMNNPL` without the perturbation loss
  (the paper's LMNN baseline), ``mu`` (``LMNNPL``'s ``regularization``) chosen by 5-fold stratified CV on the training part.
* ``LMNN-PL``: ``LMNNPL(perturbation=PerturbationLoss(tau, lam))``, ``(mu, lam, tau)`` chosen
  by 5-fold stratified CV on the training part. ``lam = 0`` (no perturbation loss) is one of
  the candidates, so LMNN-PL's search space contains LMNN's.

The searches are scikit-learn's ``RandomizedSearchCV`` on the whole pipeline, refitted on the
whole training part; the candidates are lists, drawn without replacement in a seeded order,
and every candidate is drawn (``N_ITER_PL = None``: the full grid). The selection
(:func:`select`) is by mean CV accuracy; ties in it (frequent on small sets: a validation
fold of wine has 25 points) go to the larger mean over the folds of the validation points'
median exact 1-NN radius, then to the candidate drawn first. The same rule serves both
methods. For comparison, each split also records the candidate the plain rule would take
(ties in CV accuracy broken at random, i.e. by draw order), refitted and evaluated the same
way (``ties_at_random``). The test part is used only for the final evaluation.

Grids (``GRID``): ``mu`` in {0.1, 0.3, 0.5} (at ``mu = 0.8`` splice's metric collapses),
``lam`` in {0, 0.1, 1, 10}, ``tau`` in {0.1, 0.2, 0.4, 0.8} (l2 in the preprocessed space,
where rows have unit norm), chosen on an exploration split (seed 1000, not one of the 20). The
paper does not list its grid and the authors' code (github.com/xyang6/LMNNPL, MATLAB) reads
the CV-chosen values of each split from a data file. Their optimiser differs from ours: the
step grows by 1.01 after a decrease of the objective and halves after an increase; ours is a
fixed step of 50 divided by ``max(1, lam * tau)``, with the best iterate kept.
Defaults: wine, breast_cancer, iris, and splice when its file is present; digits runs with
``--datasets digits`` but costs hours (about 1,000-2,500 s per split on one core).

Metrics on the test part: 3-NN and 1-NN accuracy; the exact 1-NN radius of every test point
(l2 in the preprocessed space, 0 for points the 1-NN classifier already gets wrong); the 3-NN
accuracy under Gaussian noise (:class:`~robust_metric_learning.attacks.NoiseAttack`,
``N(0, eps^2 / d)`` per coordinate, so ``E ||noise||^2 = eps^2``, added to the preprocessed
test point, ``NOISE_DRAWS`` draws per point and norm). Every split is checked for soundness:
certified 1-NN bound <= exact radius <= the norm of any misclassifying noise the 1-NN
classifier meets.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .checks import check_radii
from .plugin import Task

__all__ = ["DATASETS", "GRID", "LEARNER", "METHODS", "NOISE_EPS", "protocol", "run_split", "summarize"]

#: datasets of the experiment: the bundled ones, then splice when its file is present
DATASETS = ("wine", "breast_cancer", "iris", "splice")
METHODS = ("Euclidean", "LMNN", "LMNN-PL")
#: its per-point work runs in joblib workers: ``n_jobs`` applies (runner.reproduce)
TAKES_N_JOBS = True
#: split seeds of the published protocol (20 random 70/30 splits)
DEFAULT_SEEDS = tuple(range(20))
K = 3
CV_FOLDS = 5
TEST_SIZE = 0.3

#: hyper-parameter grids: ``mu`` weights the pull term; ``lam`` the perturbation loss (0: none);
#: ``tau`` is the desired margin, l2 in the preprocessed space (rows have unit norm)
GRID: dict[str, list[float]] = {"mu": [0.1, 0.3, 0.5], "lam": [0.0, 0.1, 1.0, 10.0], "tau": [0.1, 0.2, 0.4, 0.8]}
#: the projected-gradient step, divided by max(1, lam * tau) (:func:`learning_rate`)
BASE_LR = 50.0
#: fixed settings of every LMNNPL fit: the published 3 targets x 10 impostors
LEARNER: dict[str, Any] = {"n_neighbors": 3, "n_impostors": 10, "solver": "sgd", "max_iter": 300,
                           "convergence_tol": 1e-4, "dtype": "float32"}
#: the protocol describes LEARNER in the words its first results were fingerprinted with (a
#: description, not parameter names: renaming a parameter must not invalidate finished results)
_DESCRIBED_AS = {"n_neighbors": "k", "convergence_tol": "tol"}
#: LMNN-PL candidates drawn per split (None: all of them)
N_ITER_PL: int | None = None
#: mean CV accuracies this close count as tied
TIE_TOL = 1e-9
#: Gaussian noise: root mean square l2 norms eps (expected squared norm eps^2; preprocessed space) and draws
#: per point and norm
NOISE_EPS = [0.1, 0.2, 0.3, 0.5, 0.75, 1.0]
NOISE_DRAWS = 10


def learning_rate(lam: float, tau: float) -> float:
    """Projected-gradient step ``BASE_LR / max(1, lam * tau)``.

    The gradient of the perturbation loss grows like ``lam * tau``; with a step of 50 the fits
    with ``lam = 10, tau = 0.8`` diverge from the first epoch on wine.
    """
    return BASE_LR / max(1.0, lam * tau)


def protocol() -> dict[str, Any]:
    """Everything a cached result depends on (its fingerprint invalidates other protocols)."""
    return {"k": K, "cv_folds": CV_FOLDS, "test_size": TEST_SIZE, "grid": GRID, "base_lr": BASE_LR,
            "lr_rule": "base_lr / max(1, lam * tau)",
            "learner": {_DESCRIBED_AS.get(key, key): value for key, value in LEARNER.items()}, "n_iter_pl": N_ITER_PL,
            "tie_tol": TIE_TOL, "noise_eps": NOISE_EPS, "noise_draws": NOISE_DRAWS,
            "noise": "NoiseAttack(kind='gaussian', exact_norm=False, random_state=seed) on the 3-NN",
            "preprocessing": "StandardScaler -> Normalizer(l2)",
            "search": "RandomizedSearchCV(random_state=seed, all candidates), StratifiedKFold(5, shuffle=True, "
                      "random_state=seed); refit: best mean CV accuracy, ties -> larger mean validation median "
                      "exact 1-NN radius, then draw order; the plain rule (ties at random) recorded too",
            "radius": "exact 1-NN, l2 in the preprocessed space, 0 if 1-NN is wrong",
            "optimizer": "minimize keeps the best iterate"}


def load_all(name: str, data_home=None) -> tuple[np.ndarray, np.ndarray]:
    """All rows of a dataset (the loader's train and test parts together, raw features)."""
    from ..datasets import load_dataset

    X_tr, y_tr, X_te, y_te = load_dataset(name, data_home=data_home, scale=False)
    return np.vstack([X_tr, X_te]), np.concatenate([y_tr, y_te])


def knn_pipeline(metric: Any, n_jobs: int | None = None):
    """z-score -> unit l2 rows -> 3-NN under ``metric``."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    from ..neighbors import MahalanobisKNN

    return Pipeline([("scale", StandardScaler()), ("normalize", Normalizer()),
                     ("knn", MahalanobisKNN(K, metric=metric, n_jobs=n_jobs))])


def search_space(method: str) -> list[dict[str, list]]:
    """``RandomizedSearchCV`` candidates of ``method`` (all lists: drawn without replacement)."""
    lmnn = {"knn__metric__regularization": list(GRID["mu"]), "knn__metric__perturbation": [None],
            "knn__metric__learn_rate": [BASE_LR]}
    if method == "LMNN":
        return [lmnn]
    space = [lmnn] if 0.0 in GRID["lam"] else []
    return space + [{"knn__metric__regularization": list(GRID["mu"]), "knn__metric__perturbation__tau": [tau],
                     "knn__metric__perturbation__weight": [lam],
                     "knn__metric__learn_rate": [learning_rate(lam, tau)]}
                    for lam in GRID["lam"] if lam > 0 for tau in GRID["tau"]]


def _tied(cv_results: dict[str, Any]) -> np.ndarray:
    """Candidates whose mean CV accuracy is the best, to ``TIE_TOL`` (means of equal fold
    accuracies can differ in the last bits; those bits must not break ties)."""
    means = np.asarray(cv_results["mean_test_accuracy"])
    return np.flatnonzero(means >= means.max() - TIE_TOL)


def first_best(cv_results: dict[str, Any]) -> int:
    """The first candidate drawn among those with the best mean CV accuracy (ties at random)."""
    return int(_tied(cv_results)[0])


def select(cv_results: dict[str, Any]) -> int:
    """``refit`` rule: the best mean CV accuracy; among ties, the largest mean validation
    median 1-NN radius (to ``TIE_TOL``); then the candidate drawn first."""
    tied = _tied(cv_results)
    radius = np.asarray(cv_results["mean_test_radius"])[tied]
    return int(tied[np.flatnonzero(radius >= radius.max() - TIE_TOL)[0]])


def validation_median_radius(estimator, X, y) -> float:
    """Scorer: median exact 1-NN radius of the validation points ``X`` under the fitted
    pipeline's metric and training points (0 for points the 1-NN classifier gets wrong)."""
    from ..certify import geometry_radii

    P = estimator[:-1].transform(X)
    # the 1-NN radius of the K-NN's training set, whatever its K
    radii = geometry_radii(estimator[-1].geometry_, P, y, method="exact", progress=False)
    return float(np.median(radii))


def _short(params: dict[str, Any]) -> dict[str, float]:
    """``knn__metric__perturbation__weight`` -> ``lam`` etc.; no perturbation loss is ``lam = 0``."""
    out = {"mu": float(params["knn__metric__regularization"]), "lam": 0.0, "tau": 0.0}
    if "knn__metric__perturbation__weight" in params:
        out.update(lam=float(params["knn__metric__perturbation__weight"]),
                   tau=float(params["knn__metric__perturbation__tau"]))
    out["lr"] = float(params["knn__metric__learn_rate"])
    return out


def _evaluate(model, X_tr, y_tr, X_te, y_te, *, n_jobs, name: str = "", seed: int = 0,
              noise: bool = True) -> dict[str, Any]:
    """Test metrics of a fitted pipeline: 3-NN and 1-NN accuracy, exact 1-NN radii and (with
    ``noise``) accuracy under Gaussian noise, with the soundness checks."""
    from ..attacks import NoiseAttack
    from ..neighbors import MahalanobisKNN

    pre, knn3 = model[:-1], model[-1]
    P_tr, P_te = pre.transform(X_tr), pre.transform(X_te)
    out: dict[str, Any] = {"acc3": float(knn3.score(P_te, y_te))}
    t0 = time.perf_counter()
    metric = "euclidean" if knn3.metric_ is None else knn3.metric_  # the fitted learner
    knn1 = MahalanobisKNN(1, metric=metric, n_jobs=n_jobs).fit(P_tr, y_tr)
    radii = knn1.certify(P_te, y_te, method="exact", progress=False)
    check_radii(name, knn1.certify(P_te, y_te, method="bound", progress=False), radii,
                 "1-NN certified bound > exact radius")
    out["certify_s"] = time.perf_counter() - t0
    if noise:
        t0 = time.perf_counter()
        attack = NoiseAttack(kind="gaussian", n_draws=NOISE_DRAWS, exact_norm=False, n_jobs=n_jobs,
                             random_state=seed, progress=False)
        out["noise_acc3"] = np.atleast_1d(attack(knn3, P_te, y_te, eps=NOISE_EPS).accuracy).tolist()
        noise1 = attack(knn1, P_te, y_te, eps=NOISE_EPS)
        out["noise_acc1"] = np.atleast_1d(noise1.accuracy).tolist()
        out["noise_s"] = time.perf_counter() - t0
        check_radii(name, radii, np.asarray(noise1.radii, dtype=float), "exact 1-NN radius > a misclassifying noise")
    correct = knn1.predict(P_te) == y_te
    out["acc1"] = float(correct.mean())
    out["median_radius"] = float(np.median(radii))
    out["radii"] = radii.tolist()
    out["correct1"] = correct.astype(int).tolist()
    return out


def run_split(X: np.ndarray, y: np.ndarray, seed: int, method: str, *, n_jobs: int | None = None,
              name: str = "") -> dict[str, Any]:
    """Fit ``method`` on the seed's training part (CV inside it), evaluate on its test part."""
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import (
        RandomizedSearchCV,
        StratifiedKFold,
        train_test_split,
    )

    from ..learners import LMNNPL, PerturbationLoss

    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=TEST_SIZE, stratify=y, random_state=seed)
    out: dict[str, Any] = {"n_train": int(len(y_tr)), "n_test": int(len(y_te))}
    alt = None
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if method == "Euclidean":
            best = knn_pipeline("euclidean", n_jobs).fit(X_tr, y_tr)
        else:
            space = search_space(method)
            n_cand = sum(int(np.prod([len(v) for v in d.values()])) for d in space)
            n_iter = n_cand if method == "LMNN" or N_ITER_PL is None else min(N_ITER_PL, n_cand)
            search = RandomizedSearchCV(
                knn_pipeline(LMNNPL(perturbation=PerturbationLoss(), **LEARNER), n_jobs), space, n_iter=n_iter,
                scoring={"accuracy": "accuracy", "radius": validation_median_radius},
                cv=StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed),
                refit=select, n_jobs=n_jobs, random_state=seed, error_score="raise",
            ).fit(X_tr, y_tr)
            best = search.best_estimator_
            res = search.cv_results_
            means = np.asarray(res["mean_test_accuracy"])
            out.update(
                params=_short(res["params"][search.best_index_]), cv_score=float(means[search.best_index_]),
                cv_ties=int(_tied(res).size),
                cv=[{**_short(p), "mean": float(m), "std": float(s), "radius": float(r), "fit_s": float(t)}
                    for p, m, s, r, t in zip(res["params"], means, res["std_test_accuracy"],
                                             res["mean_test_radius"], res["mean_fit_time"])])
            learner = best[-1].metric_
            out.update(n_iter=int(learner.n_iter_), max_iter=int(learner.max_iter))
            i_alt = first_best(res)
            alt = {"params": _short(res["params"][i_alt])}
            if i_alt == search.best_index_:
                alt_model = best
            else:
                alt_model = clone(search.estimator).set_params(**res["params"][i_alt]).fit(X_tr, y_tr)
    out["fit_s"] = time.perf_counter() - t0
    # warnings of fits in worker processes (n_jobs > 1) are not seen here: None
    out["convergence_warnings"] = (sum(issubclass(w.category, ConvergenceWarning) for w in caught)
                                   if n_jobs in (None, 1) else None)
    out.update(_evaluate(best, X_tr, y_tr, X_te, y_te, n_jobs=n_jobs, name=name, seed=seed))
    if alt is not None:
        alt.update(_evaluate(alt_model, X_tr, y_tr, X_te, y_te, n_jobs=n_jobs, name=name, noise=False))
        out["ties_at_random"] = alt
    return out


# ------------------------------------------------------------------------------ summaries


def summarize(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Statistics of one method on one dataset over its split results (``seed`` added)."""
    acc3 = np.array([e["acc3"] for e in entries])
    radii = np.concatenate([e["radii"] for e in entries])
    correct = np.concatenate([e["correct1"] for e in entries]).astype(bool)
    s: dict[str, Any] = {
        "n_splits": len(entries), "seeds": [e["seed"] for e in entries],
        "acc3_mean": float(acc3.mean()), "acc3_std": float(acc3.std(ddof=1)) if len(acc3) > 1 else 0.0,
        "acc1_mean": float(np.mean([e["acc1"] for e in entries])),
        "median_radius": float(np.median(radii)),
        "median_radius_correct": float(np.median(radii[correct])) if correct.any() else None,
        "mean_split_median_radius": float(np.mean([e["median_radius"] for e in entries])),
    }
    if "noise_acc3" in entries[0]:
        s["noise_acc3"] = np.mean([e["noise_acc3"] for e in entries], axis=0).tolist()
    if "fit_s" in entries[0]:
        s["fit_s"] = float(sum(e["fit_s"] for e in entries))
    s["certify_s"] = float(sum(e["certify_s"] for e in entries))
    if "params" in entries[0]:
        names = ("mu", "lam", "tau")
        s["chosen"] = {n: {f"{v:g}": c for v, c in sorted(Counter(e["params"][n] for e in entries).items())}
                       for n in names}
        s["chosen_lam0"] = int(sum(e["params"]["lam"] == 0 for e in entries))
    if "cv_ties" in entries[0]:
        s["cv_ties_mean"] = float(np.mean([e["cv_ties"] for e in entries]))
        s["n_iter_mean"] = float(np.mean([e["n_iter"] for e in entries]))
        s["n_iter_hit_max"] = int(sum(e["n_iter"] >= e["max_iter"] for e in entries))
    return s


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Paired comparison of ``a`` (LMNN-PL) with ``b`` (LMNN) over the same seeds."""
    from scipy.stats import wilcoxon

    da = np.array([x["acc3"] - y["acc3"] for x, y in zip(a, b)])
    dr = np.array([x["median_radius"] - y["median_radius"] for x, y in zip(a, b)])

    def p_value(d: np.ndarray) -> float | None:
        return float(wilcoxon(d).pvalue) if len(d) > 1 and np.any(d != 0) else None

    def wtl(d: np.ndarray) -> list[int]:
        return [int((d > 0).sum()), int((d == 0).sum()), int((d < 0).sum())]

    sa, sb = summarize(a), summarize(b)
    return {"seeds": [e["seed"] for e in a], "acc3_diff_mean": float(da.mean()), "acc3_wins_ties_losses": wtl(da),
            "acc3_wilcoxon_p": p_value(da), "median_radius_wins_ties_losses": wtl(dr),
            "median_radius_wilcoxon_p": p_value(dr),
            "aim_accuracy": bool(sa["acc3_mean"] >= sb["acc3_mean"]),
            "aim_radius": bool(sa["median_radius"] > sb["median_radius"]),
            "radius_values": [sa["median_radius"], sb["median_radius"]]}


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.2g}"


def report(name: str, out, results: dict[str, dict[str, dict[int, dict]]],
           context: dict | None = None) -> dict[str, Any]:
    """``report.md``, ``results.json`` and per-dataset plots (noise accuracy, 1-NN robust error)."""
    import io
    import json

    from matplotlib.figure import Figure

    from .._io import atomic_write_bytes, atomic_write_text
    from ..certify import plot_robust_error, robust_error_curve

    summary: dict[str, Any] = {"experiment": name, "protocol": protocol(), "datasets": {}}
    lines = [f"# rml reproduce {name}", "",
             "LMNN vs LMNN-PL (Yang et al., TNNLS 2022) and Euclidean: random stratified 70/30 splits, "
             f"(mu, lambda, tau) by {CV_FOLDS}-fold CV on the training part, {K}-NN accuracy on the test part. "
             "Radii: exact 1-NN, l2 after z-scoring and unit-norm rows (0 if 1-NN is wrong). Gaussian noise: "
             f"N(0, eps^2/d) per coordinate added to the preprocessed test points (root mean square l2 norm eps: "
             "expected squared norm eps^2), "
             f"{NOISE_DRAWS} draws per point and eps.", ""]
    grid_eps = [0.0, *NOISE_EPS]
    for ds, per_method in results.items():
        entries = {m: [{**p, "seed": s} for s, p in sorted(per_seed.items())] for m, per_seed in per_method.items()}
        alt = {f"{m} (ties at random)": [{**e["ties_at_random"], "seed": e["seed"]} for e in v]
               for m, v in entries.items() if v and "ties_at_random" in v[0]}
        block: dict[str, Any] = {"methods": {m: summarize(v) for m, v in entries.items()},
                                 "ties_at_random": {m: summarize(v) for m, v in alt.items()}}
        n = max(s["n_splits"] for s in block["methods"].values())
        first = next(iter(entries.values()))[0]
        lines += [f"## {ds} ({n} splits; {first['n_train']} training, {first['n_test']} test points)", "",
                  "| method | 3-NN acc (mean ± std) | 1-NN acc | median radius | median radius (correct only) | "
                  + " | ".join(f"acc, noise {e:g}" for e in NOISE_EPS) + " | fit s |",
                  "|---|---|---|---|---|" + "---|" * len(NOISE_EPS) + "---|"]
        for m, s in [*block["methods"].items(), *block["ties_at_random"].items()]:
            mc = s["median_radius_correct"]
            noise = [f"{v:.4f}" for v in s["noise_acc3"]] if "noise_acc3" in s else ["-"] * len(NOISE_EPS)
            fit = f"{s['fit_s']:.0f}" if "fit_s" in s else "-"
            lines.append(f"| {m} | {s['acc3_mean']:.4f} ± {s['acc3_std']:.4f} | {s['acc1_mean']:.4f} | "
                         f"{s['median_radius']:.4f} | {'-' if mc is None else f'{mc:.4f}'} | "
                         + " | ".join(noise) + f" | {fit} |")
        lines.append("")
        for m, s in [*block["methods"].items(), *block["ties_at_random"].items()]:
            if "chosen" in s:
                chosen = "; ".join(f"{k}: " + ", ".join(f"{v}×{c}" for v, c in d.items()) for k, d in s["chosen"].items())
                extra = (f"; CV ties {s['cv_ties_mean']:.1f} on average; max_iter reached on {s['n_iter_hit_max']} "
                         f"final fits" if "cv_ties_mean" in s else "")
                lines.append(f"- {m}: CV-chosen {chosen} (lambda = 0 on {s['chosen_lam0']} of {s['n_splits']} "
                             f"splits){extra}")
        for suffix, group in (("", entries), (" (ties at random)", alt)):
            a, b = group.get("LMNN-PL" + suffix), group.get("LMNN" + suffix)
            seeds = sorted({e["seed"] for e in a or []} & {e["seed"] for e in b or []})
            if not seeds:
                continue
            c = compare([e for e in a if e["seed"] in seeds], [e for e in b if e["seed"] in seeds])
            block["paired" + suffix.replace(" ", "_").replace("(", "").replace(")", "")] = c
            lines += ["", f"Selection rule{suffix or ' (CV accuracy, ties by validation radius)'}:",
                      f"- mean 3-NN accuracy LMNN-PL ≥ LMNN: **{'yes' if c['aim_accuracy'] else 'no'}** "
                      f"(difference {c['acc3_diff_mean']:+.4f}; splits won/tied/lost {c['acc3_wins_ties_losses']}, "
                      f"Wilcoxon p = {_fmt_p(c['acc3_wilcoxon_p'])})",
                      f"- pooled median 1-NN radius LMNN-PL > LMNN: **{'yes' if c['aim_radius'] else 'no'}** "
                      f"({c['radius_values'][0]:.4f} vs {c['radius_values'][1]:.4f}; per-split medians "
                      f"won/tied/lost {c['median_radius_wins_ties_losses']}, "
                      f"Wilcoxon p = {_fmt_p(c['median_radius_wilcoxon_p'])})"]
        lines.append("")
        # plots: 3-NN accuracy under noise, and the 1-NN robust error from the pooled exact radii
        fig = Figure(figsize=(5, 3.5), dpi=120)
        ax = fig.subplots()
        for m, s in block["methods"].items():
            ax.plot(grid_eps, [s["acc3_mean"], *s["noise_acc3"]], marker="o", label=m)
        ax.set_xlabel("Gaussian noise, root mean square ℓ2 norm")
        ax.set_ylabel("3-NN accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(f"{ds}: accuracy under noise (mean over {n} splits)")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        atomic_write_bytes(out / f"{ds}_noise_accuracy.png", buf.getvalue())
        top = max(float(np.quantile(np.concatenate([e["radii"] for e in v]), 0.95)) for v in entries.values())
        eps = np.linspace(0.0, max(top, 1e-3), 11)
        curves = {m: robust_error_curve(np.concatenate([e["radii"] for e in v]), eps) for m, v in entries.items()}
        block["radius_curve"] = {"eps": eps.tolist(), "robust_error": {m: c.tolist() for m, c in curves.items()}}
        plot_robust_error(curves, eps, path=out / f"{ds}_radius_1nn_exact.png",
                          title=f"{ds}: exact 1-NN robust error (all splits)")
        summary["datasets"][ds] = block
    atomic_write_text(out / "report.md", "\n".join(lines))
    atomic_write_text(out / "results.json", json.dumps(summary, indent=1) + "\n")
    return summary


def plan(name: str, out: Path, *, datasets, methods, seeds, n_eval, shuffle_seed, n_jobs, data_home,
         verbose) -> tuple[list[Task], dict]:
    """The perturbation-loss protocol's tasks, one per (dataset, method, split): ``seeds`` are the
    seeds of the random 70/30 splits (default 0-19); every test point is evaluated."""
    from ..datasets import dataset_status

    if n_eval is not None:
        raise ValueError(f"n_eval is for the 'arml' experiment ('lmnn-pl' evaluates every test point), got {n_eval}")
    unknown = sorted(set(methods or ()) - set(METHODS))
    if unknown:
        raise ValueError(f"methods must be among {list(METHODS)}, got {unknown}")
    if datasets:
        dsets = list(datasets)
    else:
        status = dataset_status(data_home=data_home)
        dsets = [d for d in DATASETS if status[d]["available"]]
    meths = [m for m in METHODS if m in (methods or METHODS)]
    seeds = list(DEFAULT_SEEDS) if seeds is None else seeds
    proto = protocol()
    tasks: list[Task] = []
    for ds in dsets:
        X, y = load_all(ds, data_home)
        for method in meths:
            for seed in seeds:
                label = f"{ds} / {method} / split {seed}"
                settings = {"experiment": name, "dataset": ds, "method": method, "seed": seed, "protocol": proto,
                            "n_rows": int(len(y))}
                tasks.append(Task(
                    (name, ds, method, f"seed{seed}"), settings, (ds, method, seed), label,
                    lambda X=X, y=y, seed=seed, method=method, label=label: run_split(X, y, seed, method,
                                                                                       n_jobs=n_jobs, name=label),
                    lambda p: (f"fit {p['fit_s']:.1f} s, acc3 {p['acc3']:.4f}, median radius {p['median_radius']:.4f}"
                               + (f", {p['params']}" if "params" in p else ""))))
    return tasks, {}
