"""Write the Benchmarks and results page from the JSON files in ``benchmarks/results``.

One generator for every figure on the page: each table is rendered from exactly one JSON file
(``benchmarks/results/*.json``, and ``benchmarks/results/dml_cache/*.json`` for the deep
metric-learning runs), every number is formatted from that file, and each table names its file
and the command that writes it. A file that is missing, unreadable or not shaped as expected
makes its table say "not measured yet" instead of stopping the build; JSON files that no table
reads are listed at the end of the page.

``conf.py`` calls :func:`write_results_page` before Sphinx reads the sources.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = ["write_results_page", "NOT_MEASURED"]

NOT_MEASURED = "not measured yet"
DASH = "—"
DML_CACHE = "dml_cache"
LMNN_PL_COMMIT = "49f103a"  # the version of benchmarks/bench_lmnn_pl.py that wrote lmnn_pl*.json
DML_FIELDS = ("dataset", "loss", "defense", "clean", "eps", "adv_recall_at_1", "strength")

# display order of known names; anything else sorts after them, alphabetically
DATASET_ORDER = ["digits", "pendigits", "usps", "splice", "wine", "breast_cancer", "iris", "mnist", "fashion-mnist"]
LOSS_ORDER = ["triplet", "contrastive"]
DEFENSE_ORDER = ["natural", "naive", "est", "ours", "ours-sn", "ours-positive", "ours-negative", "act", "hm", "noise"]
LEARNER_ORDER = ["Euclidean", "NCA", "LMNN", "ITML", "LFDA", "ARML (published)", "ARML (ours)", "LMNN-PL"]
METRIC_ORDER = ["euclidean", "arml"]
ATTACK_ORDER = ["pgd20", "decay_pgd", "ensemble_v1", "ensemble", "doubled"]
DEFENSE_NAMES = {"natural": "natural", "naive": "naive", "est": "EST", "ours": "ours", "act": "ACT", "hm": "HM"}


class Unavailable(Exception):
    """A results file that is missing or cannot be read."""


def _order(known: Sequence[str], value: Any) -> tuple:
    return (known.index(value), "") if value in known else (len(known), str(value))


# ---------------------------------------------------------------------------------------------
# number formatting: every figure on the page goes through one of these


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _special(v: Any) -> str:
    return DASH if v is None else str(v)


def rate(v: Any) -> str:
    """An error, accuracy or recall: three decimals, without the leading zero (``.032``)."""
    if not _finite(v):
        return _special(v)
    s = f"{v:.3f}"
    return s[1:] if s.startswith("0.") else "-" + s[2:] if s.startswith("-0.") else s


def ratio(v: Any) -> str:
    """A speed ratio: ``240×``, ``29.6×``, ``0.45×``."""
    if not _finite(v):
        return _special(v)
    return f"{v:.0f}×" if abs(v) >= 100 else f"{v:.1f}×" if abs(v) >= 1 else f"{v:.2f}×"


def secs(v: Any) -> str:
    """Seconds: integers from 10 s on, else two significant digits."""
    if not _finite(v):
        return _special(v)
    if v == 0:
        return "0"
    return f"{v:.0f}" if abs(v) >= 10 else f"{v:.1f}" if abs(v) >= 1 else f"{v:.2g}"


def msecs(v: Any) -> str:
    """Seconds shown as milliseconds: one decimal below 100 ms, integers above."""
    if not _finite(v):
        return _special(v)
    ms = v * 1000
    return f"{ms:.0f}" if abs(ms) >= 100 else f"{ms:.1f}" if abs(ms) >= 0.1 else f"{ms:.2g}"


def num(v: Any) -> str:
    """A setting (ε, a radius, a count): as written, without trailing zeros."""
    return f"{v:g}" if _finite(v) else _special(v)


def sig(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}g}" if _finite(v) else _special(v)


def points(v: Any, decimals: int = 1) -> str:
    """A difference of rates in percentage points (``v`` a fraction)."""
    return f"{100 * v:.{decimals}f}" if _finite(v) else _special(v)


def fixed(v: Any, decimals: int) -> str:
    return f"{v:.{decimals}f}" if _finite(v) else _special(v)


def percent(v: Any) -> str:
    return f"{100 * v:.1f}%" if _finite(v) else _special(v)


def sci(v: Any) -> str:
    return f"{v:.1e}" if _finite(v) else _special(v)


def yes(v: Any) -> str:
    return "yes" if v is True else "no" if v is False else _special(v)


def mean_sd(values: Sequence[float]) -> str:
    if len(values) < 2:
        return rate(values[0]) if values else DASH
    return f"{rate(statistics.mean(values))} ± {rate(statistics.stdev(values))}"


def gib(kib: Any) -> str:
    return f"{kib / 2**20:.2f}" if _finite(kib) else _special(kib)


def lit(s: Any) -> str:
    """Free text from a JSON file as an inline literal (escaped text where a literal cannot hold it)."""
    s = " ".join(str(s).split())
    return f"``{s}``" if s and "`" not in s else text(s)


def text(s: Any) -> str:
    """Free text from a JSON file, escaped so that reStructuredText shows it as written."""
    s = " ".join(str(s).split())
    return re.sub(r"([\\`*_|\[\]<>:])", r"\\\1", s) if s else DASH


# ---------------------------------------------------------------------------------------------
# reStructuredText


class Page:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def heading(self, title: str, char: str) -> None:
        self.lines += [title, char * len(title), ""]

    def para(self, *parts: str) -> None:
        self.lines += [" ".join(p for p in parts if p), ""]

    def bullets(self, items: Iterable[str]) -> None:
        items = list(items)
        self.lines += [f"* {item}" for item in items] + ([""] if items else [])

    def table(self, title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        if not rows:
            self.para(f"*{text(title)}: {NOT_MEASURED}* (no entries).")
            return
        self.lines += [f".. list-table:: {title}", "   :header-rows: 1", ""]
        for row in [header, *rows]:
            if len(row) != len(header):
                raise ValueError(f"row {row!r} has {len(row)} cells, the header {len(header)}")
            self.lines.append(f"   * - {row[0] if str(row[0]).strip() else DASH}")
            self.lines += [f"     - {c if str(c).strip() else DASH}" for c in row[1:]]
        self.lines.append("")


class Results:
    """The JSON files of one results folder; remembers which ones a table has asked for."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.asked: set[str] = set()

    def load(self, name: str) -> Any:
        self.asked.add(name)
        path = self.folder / name
        if not path.is_file():
            raise Unavailable(f"``benchmarks/results/{name}`` is missing")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise Unavailable(f"``benchmarks/results/{name}`` cannot be read ({type(exc).__name__})") from None

    def all_json(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*.json") if p.is_file())


def section(page: Page, render: Callable[[Page], None], name: str) -> None:
    """Render one table (or group of tables) into ``page``; a missing or malformed file gives
    a "not measured yet" line instead, and nothing half-written."""
    sub = Page()
    try:
        render(sub)
    except Unavailable as exc:
        page.para(f"*{NOT_MEASURED}*: {exc}.")
        return
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, ZeroDivisionError,
            statistics.StatisticsError) as exc:
        page.para(f"*{NOT_MEASURED}*: ``benchmarks/results/{name}`` does not hold what this table reads "
                  f"({type(exc).__name__}: {text(exc)}).")
        return
    page.lines += sub.lines


def source(name: str, command: str, where: str = "") -> str:
    return f"From ``benchmarks/results/{name}``, written by ``{command}``{where}."


# ---------------------------------------------------------------------------------------------
# Speed


def certify_speed(page: Page, res: Results) -> None:
    d = res.load("certify.json")
    rows = d["rows"]
    args = d.get("args", {})
    env = d.get("env", {})
    page.para("Seconds per test point of the exact 1-NN radius and of the K-NN certified bound against "
              "baselines that solve the same problems without the shared work: the exact radius with each "
              "per-negative QP handed to a general-purpose solver, the bound with the full positive × "
              "negative margin matrix rebuilt for every point. Ours is timed on all its points and on the "
              "baseline's points, so both ratios are given (the per-class precomputation weighs more on "
              "fewer points); the baseline's radii are checked against ours in the same run.",
              source("certify.json", "python benchmarks/bench_certify.py"),
              f"Settings of this run: {text(args.get('n_eval'))} test points "
              f"({lit(args.get('test_points'))}), baselines on the first "
              f"{text(args.get('n_baseline'))}, K = {text(args.get('K'))}; torch {text(env.get('torch'))}, "
              f"{text(env.get('torch_threads'))} torch threads on {text(env.get('cpu_count'))} CPUs.")
    base = [r for r in rows if r.get("baseline_points")]
    page.table("Certification against a QP baseline: milliseconds per point and ratios",
               ["data (train × features)", "metric", "method", "ours, ms/pt", "ours, ms/pt on the baseline's points",
                "baseline, ms/pt", "ratio (same points)", "ratio (vs full run)", "max rel. diff. of radii",
                "baseline"],
               [[f"{text(r['dataset'])} ({r['n_train']} × {r['n_features']})", text(r["metric"]), text(r["method"]),
                 f"{msecs(r['ours_s_per_pt'])} ({r['ours_points']} pts)", msecs(r.get("ours_same_points_s_per_pt")),
                 f"{msecs(r['baseline_s_per_pt'])} ({r['baseline_points']} pts)", ratio(r["ratio_same_points"]),
                 ratio(r["ratio_vs_full_run"]), sci(r.get("max_rel_diff_vs_baseline")), text(r.get("baseline"))]
                for r in base])
    big = [r for r in rows if not r.get("baseline_points")]
    if big:
        page.table("Without a baseline: milliseconds per point and peak memory",
                   ["data (train × features)", "metric", "method", "points", "ms/pt", "peak RSS, GiB",
                    "RSS after loading the data, GiB"],
                   [[f"{text(r['dataset'])} ({r['n_train']} × {r['n_features']})", text(r["metric"]),
                     text(r["method"]), str(r["ours_points"]), msecs(r["ours_s_per_pt"]),
                     gib(r.get("memory", {}).get("peak_rss_kib")),
                     gib(r.get("memory", {}).get("rss_after_load_kib"))] for r in big])
    failures = d.get("failures") or []
    if failures:
        page.para(f"The run recorded {len(failures)} failure(s):")
        page.bullets(text(f) for f in failures)
    if d.get("source", {}).get("changed_during_run"):
        page.para("The file records that the library source changed while the benchmark ran.")


def vs_metric_learn(page: Page, res: Results, name: str, command: str) -> None:
    d = res.load(name)
    data, proto, ver = d["data"], d["protocol"], d["versions"]
    threads = d.get("machine", {}).get("thread_env", {}).get("OMP_NUM_THREADS")
    page.para(f"Fit time and test accuracy ({text(proto['accuracy'])}), {text(data['name'])} "
              f"({data['train_shape'][0]} training and {data['test_shape'][0]} test points), each library with "
              f"its defaults: metric-learn {text(ver['metric_learn_env']['metric_learn'])} in its own environment "
              f"(scikit-learn {text(ver['metric_learn_env']['sklearn'])}), ours with "
              f"{text(ver['ours'].get('torch_threads'))} torch thread(s), "
              f"``OMP_NUM_THREADS={text(threads) if threads else 'unset'}``. Fits under "
              f"{num(proto['repeat_below_s'])} s are run {proto['n_repeat']} times and the median kept; ratio = "
              "metric-learn's fit time over ours.", source(name, command))
    rows = []
    for r in d["table"]:
        ml_acc = rate(r["ml_acc"]) if r.get("ml_usable") else "not usable"
        rows.append([text(r["method"]), secs(r["ml_fit_s"]), secs(r["ours_fit_s"]), ratio(r["speed_ratio"]), ml_acc,
                     rate(r["ours_acc"]) if r.get("ours_usable") else "not usable",
                     "; ".join(text(n) for n in r.get("notes", [])) or DASH])
    page.table(f"Against metric-learn ({name})",
               ["method", "metric-learn fit s", "ours fit s", "ratio", "metric-learn acc", "ours acc", "notes"], rows)
    aims = d.get("aims") or []
    if aims:
        page.para("Aims recorded in the file:")
        page.bullets(f"{text(a['aim'])}: {'met' if a.get('met') else '**not met**'}" for a in aims)


def _attack_groups(d: dict) -> list[tuple[tuple, list[dict]]]:
    groups: dict[tuple, list[dict]] = {}
    for key, e in d.items():
        steps = e["settings"]["boundary"].get("steps", DASH)
        groups.setdefault((e["dataset"], e["n_eval"], e["k"], steps), []).append(e)
    out = sorted(groups.items(), key=lambda kv: (_order(DATASET_ORDER, kv[0][0]), kv[0][1:]))
    return [(k, sorted(v, key=lambda e: _order(METRIC_ORDER, e["metric"]))) for k, v in out]


def attack_speed(page: Page, res: Results) -> None:
    d = res.load("attacks.json")
    page.para("Seconds per point of the structural attack against the Boundary attack (decision-based, "
              "with foolbox's default schedule, as in the ARML experiments), K-NN with the K in the table, "
              "on the same points in one process; and how their radii compare on the points both attack "
              "(the attacks' radii are upper bounds of the true radius: smaller is stronger).",
              source("attacks.json", "python benchmarks/bench_attacks.py --metrics euclidean arml --previous COMMIT (the earlier commit of each row)"))
    rows = []
    prev = []
    for (dataset, n_eval, k, steps), entries in _attack_groups(d):
        for e in entries:
            sp, pp = e["seconds_per_point"], e["per_point"]
            label = [f"{text(dataset)} ({n_eval})", text(e["metric"]), str(k)]
            rows.append(label + [msecs(sp["structural_wall"]), f"{msecs(sp['boundary_wall'])} ({num(steps)} steps)",
                                 f"{ratio(e['ratio_boundary_over_structural']['wall'])} "
                                 f"({ratio(e['ratio_boundary_over_structural']['cpu'])})",
                                 fixed(pp["boundary_over_structural_median"], 3),
                                 f"{percent(pp['frac_boundary_smaller'])} "
                                 f"({percent(pp['frac_boundary_smaller_by_1pct'])} by > 1%)",
                                 f"{pp['structural_failed']} / {pp['boundary_failed']}"])
            p = e.get("previous_structural")
            if p:
                r = p["previous_over_current_radius"]
                now = p.get("current_wall_per_point", sp["structural_wall"])  # alternating runs' median, if any
                prev.append(label + [text(p["commit"]), msecs(p["wall_per_point"]), msecs(now),
                                     f"{ratio(p['speedup_wall'])} ({ratio(p['speedup_cpu'])})",
                                     sci(max(abs(r["min"] - 1), abs(r["max"] - 1))),
                                     f"{percent(r['frac_current_longer'])} / {percent(r['frac_current_shorter'])}"])
    page.table("Structural attack against the Boundary attack",
               ["data (points)", "metric", "K", "structural ms/pt", "Boundary ms/pt", "ratio, wall (CPU)",
                "Boundary radius ÷ structural, median", "points where Boundary's is shorter",
                "failed: structural / Boundary"], rows)
    if prev:
        page.para("The structural attack against its own earlier version (the whole package at that commit), "
                  "on the same points under the same metric. Where the JSON holds ``runs_wall_per_point``, "
                  "both versions ran alternately, each run in its own process (the code compared is in "
                  "``current_code``), the times are the medians of those runs and the radii are compared "
                  "between them; otherwise the earlier version was timed once beside the row's own run.")
        page.table("Structural attack against its earlier version",
                   ["data (points)", "metric", "K", "earlier commit", "earlier ms/pt", "now ms/pt",
                    "speed-up, wall (CPU)", "earlier radius ÷ now, largest deviation from 1",
                    "points longer / shorter now"], prev)


def dml_epoch(page: Page, res: Results) -> None:
    d = res.load("dml_epoch.json")
    nat = d["natural_seconds"]
    page.para(f"One training epoch of each defence from the same weights, in one run, on {text(d['dataset'])} "
              f"({d['n_train']} images; the ``rml reproduce dml`` setting), natural training timed before and "
              f"after the others ({' s / '.join(secs(s) for s in nat)} s); ratio = the epoch's seconds over the "
              f"mean natural epoch; aim = the natural epochs a defence may cost (``steps + 2`` where it attacks "
              f"one copy of each input). {text(d.get('threads'))} torch thread(s), {text(d.get('cpus'))} CPUs.",
              source("dml_epoch.json", "python benchmarks/bench_dml_epoch.py"
                     + (f" --threads {d['threads']}" if _finite(d.get("threads")) else "")))
    rows = sorted(d["rows"], key=lambda r: r["steps"])  # stable: the run's order within a step count
    page.table("Robust deep metric learning: cost of an epoch",
               ["defence", "PGD steps", "epoch s", "ratio to natural", "aim", "adversarial inputs"],
               [[text(DEFENSE_NAMES.get(r["defense"], r["defense"])), str(r["steps"]), secs(r["seconds"]),
                 ratio(r["ratio"]), num(r.get("bound")), str(r.get("n_adversarial", DASH))] for r in rows])


# ---------------------------------------------------------------------------------------------
# Learner results


def arml(page: Page, res: Results) -> None:
    d = res.load("arml.json")
    page.para("Clean and robust error of the exact 1-NN classifier under each learned metric (the fraction "
              "of test points whose exact radius is at most ε), official splits, min-max scaling, the first "
              "test points after the ARML experiments' shuffle. \"ARML (published)\" is ARML with the published "
              "settings, \"ARML (ours)\" with a larger learning rate (the ``learning_rate`` column). Fit and "
              "certification seconds as recorded with each entry.",
              source("arml.json", "python benchmarks/bench_arml.py"),
              "Entries are cached per (dataset, method); ``--methods LMNN --force`` remeasures one method.")
    groups: dict[tuple, list[dict]] = {}
    for e in d.values():
        groups.setdefault((e["dataset"], e["n_eval"], tuple(e["eps"])), []).append(e)
    for (dataset, n_eval, eps), entries in sorted(groups.items(), key=lambda kv: (_order(DATASET_ORDER, kv[0][0]),
                                                                                  kv[0][1:])):
        entries.sort(key=lambda e: _order(LEARNER_ORDER, e["method"]))
        page.table(f"{dataset}, {n_eval} test points: exact 1-NN robust error",
                   ["method", "clean", *[f"ε = {num(x)}" for x in eps], "fit s", "certify s", "learning_rate"],
                   [[text(e["method"]), rate(e["clean_error"]), *[rate(v) for v in e["robust_error"]],
                     secs(e["fit_s"]), secs(e.get("certify_s")),
                     text(e.get("params", {}).get("learning_rate", DASH)).strip("'")] for e in entries])


def lmnn_pl(page: Page, res: Results, name: str, default: bool = False) -> None:
    d = res.load(name)
    proto, summary = d["protocol"], d["summary"]
    grid = proto["grid"]
    command = "python benchmarks/bench_lmnn_pl.py"
    if not default:
        command += (f" --datasets {' '.join(summary)} --n-iter-pl {proto['n_iter_pl']} "
                    f"--output benchmarks/results/{name}")
    page.para(f"Euclidean, LMNN and LMNN-PL (LMNN with the perturbation loss), {proto['k']}-NN, on random "
              f"stratified splits ({num(1 - proto['test_size'])} / {num(proto['test_size'])}) of each dataset, rows "
              f"{text(proto['preprocessing'])}; hyper-parameters by {proto['cv_folds']}-fold CV on the training part "
              f"({lit(proto['search'])}, {text(proto.get('n_iter_pl'))} LMNN-PL candidates per split from μ "
              f"∈ {{{', '.join(num(x) for x in grid['mu'])}}}, λ ∈ {{{', '.join(num(x) for x in grid['lam'])}}}, "
              f"τ ∈ {{{', '.join(num(x) for x in grid['tau'])}}}). Accuracy: mean ± sd of the {proto['k']}-NN "
              f"test accuracy over the splits; radius: {text(proto['radius'])}, the median over every test "
              "point of every split. Paired: LMNN-PL against LMNN per split (wins / ties / losses, Wilcoxon p).",
              source(name, command, f" in a checkout of commit {LMNN_PL_COMMIT}"))
    methods = ["Euclidean", "LMNN", "LMNN-PL"]
    rows = []
    for dataset, s in summary.items():
        m = s["methods"]
        pr = s.get("paired", {})
        n = {m[x]["n_seeds"] for x in methods if x in m}
        rows.append([text(dataset), "/".join(str(x) for x in sorted(n)),
                     *[f"{rate(m[x]['acc3_mean'])} ± {rate(m[x]['acc3_std'])}" if x in m else DASH for x in methods],
                     *[rate(m[x]["median_radius"]) if x in m else DASH for x in methods],
                     "{} / {} / {} (p = {})".format(*pr["median_radius_wins_ties_losses"],
                                                    sig(pr["median_radius_wilcoxon_p"], 2)) if pr else DASH,
                     "{} / {} / {} (p = {})".format(*pr["acc3_wins_ties_losses"],
                                                    sig(pr["acc3_wilcoxon_p"], 2)) if pr else DASH])
    page.table(f"LMNN-PL against LMNN and Euclidean ({name})",
               ["dataset", "splits", *[f"{x} acc" for x in methods], *[f"{x} median radius" for x in methods],
                "paired radius", "paired accuracy"], rows)


def metric_learn_suite(page: Page, res: Results) -> None:
    d = res.load("metric_learn_suite.json")
    sw, ver = d["swapped"], d.get("versions", {})
    page.para(f"metric-learn {text(ver.get('metric_learn'))}'s own tests of the learners we share with it "
              f"(selected with ``-k`` {lit(d['selection']['keyword'])}, see the script's docstring), run "
              f"once on metric-learn (the baseline) and once with those learners swapped for ours, in one "
              f"environment (scikit-learn {text(ver.get('sklearn'))}); the pass rate counts only the tests that "
              "pass on the baseline.",
              source("metric_learn_suite.json", "python benchmarks/metric_learn_suite.py --tests /tmp/mltests/test"),
              "(``/tmp/mltests/test``: the ``test/`` folder of a metric-learn checkout, "
              "``git -C <metric-learn> archive HEAD test | tar -x -C /tmp/mltests``.)")
    page.table("metric-learn compatibility: its test suite against our learners",
               ["selected", "pass on the baseline", "pass with ours", "fail", "error", "skipped", "not run",
                "pass rate"],
               [[str(d["selected"]), str(d["baseline_passed"]), str(sw["passed"]), str(sw["failed"]),
                 str(sw["errored"]), str(sw["skipped"]), str(sw["not run"]), percent(d["ratio"])]])
    failing = d.get("failing") or []
    if failing:
        page.table("Tests that pass on the baseline and not with ours",
                   ["test", "outcome", "first line of the error"],
                   [[lit(f["test"]), text(f.get("outcome")), lit(f.get("error"))] for f in failing])
    base = d.get("baseline_not_passed") or []
    if base:
        page.para("Selected tests that do not pass on metric-learn itself (not counted):")
        page.bullets(f"{lit(f['test'])}: {lit(f.get('error'))}" for f in base)


# ---------------------------------------------------------------------------------------------
# Attacks


def attack_strength(page: Page, res: Results) -> None:
    d = res.load("attacks.json")
    page.para("Robust error at each ε of the K-NN classifier: the certified one (an upper bound of the true "
              "robust error) and the attacks' (the fraction of points an attack breaks within ε, a lower "
              "bound: the higher, the stronger the attack); the gap is certified − structural, in points. "
              "Each cell holds one value per metric, in the order of the caption.",
              source("attacks.json", "python benchmarks/bench_attacks.py --metrics euclidean arml --previous COMMIT (the earlier commit of each row)"))
    for (dataset, n_eval, k, steps), entries in _attack_groups(d):
        by_eps: dict[tuple, list[dict]] = {}
        for e in entries:
            by_eps.setdefault(tuple(e["eps"]), []).append(e)
        for eps, es in by_eps.items():
            metrics = " / ".join(e["metric"] for e in es)
            kinds = [("certified", lambda e, i: rate(e["robust_error"]["certified"][i])),
                     ("structural", lambda e, i: rate(e["robust_error"]["structural"][i])),
                     ("Boundary", lambda e, i: rate(e["robust_error"]["boundary"][i])),
                     ("gap (points)", lambda e, i: points(e["gap_certified_minus_structural"][i]))]
            rows = [[label, *[" / ".join(f(e, i) for e in es) for i in range(len(eps))]] for label, f in kinds]
            page.para(f"{text(dataset)}, {text(metrics)}: the structural attack at least as strong as the Boundary "
                      "attack at every ε: "
                      + " / ".join(yes(e.get("structural_at_least_as_strong_every_eps")) for e in es) + ".")
            page.table(f"{dataset} ({n_eval} points), K = {k}, robust error ({metrics})",
                       ["ε", *[num(x) for x in eps]], rows)


# ---------------------------------------------------------------------------------------------
# Deep metric learning


def _dml_cache(res: Results) -> tuple[list[dict], list[str]]:
    """The payloads of ``dml_cache/*.json`` (verified), and one line per file left out."""
    folder = res.folder / DML_CACHE
    payloads, skipped = [], []
    names = sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []
    for name in names:
        rel = f"{DML_CACHE}/{name}"
        try:
            entry = res.load(rel)
            payload = entry["payload"]
            digest = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
            if entry["sha256"] != digest:
                skipped.append(f"``{rel}``: its payload fails its SHA-256")
                continue
            key = [str(k) for k in entry["key"]]
            if key[0] != "dml":
                skipped.append(f"``{rel}``: not a ``dml`` task (key {text(key)})")
                continue
            if key[1:4] != [payload["dataset"], payload["loss"], payload["defense"]]:
                skipped.append(f"``{rel}``: its key and its payload disagree")
                continue
            if any(k not in payload for k in DML_FIELDS) or "ensemble" not in payload["strength"]:
                skipped.append(f"``{rel}``: its payload lacks fields this page reads")
                continue
            payloads.append(payload)
        except Unavailable as exc:
            skipped.append(str(exc))
        except (KeyError, IndexError, TypeError, AttributeError):
            skipped.append(f"``{rel}``: not a result-cache entry")
    payloads.sort(key=lambda p: (_order(DATASET_ORDER, p["dataset"]), _order(LOSS_ORDER, p["loss"]),
                                 _order(DEFENSE_ORDER, p["defense"]), p.get("seed", 0)))
    return payloads, skipped


def _joined(values: Sequence[Any], radii: Sequence[Any], common: bool) -> str:
    if common:
        return " / ".join(rate(v) for v in values)
    return ", ".join(f"{num(r)}: {rate(v)}" for r, v in zip(radii, values))


def ident(p: dict) -> list[str]:
    return [text(p["dataset"]), text(p["loss"]), text(p["defense"]), str(p.get("seed", DASH))]


def dml_cache(page: Page, res: Results) -> None:
    payloads, skipped = _dml_cache(res)
    page.para("The ``rml reproduce dml`` protocol (SmallCNN embeddings trained on half of the classes, "
              "retrieval on the unseen ones, ℓ∞ attacks; see the experiment's docstring), remeasured with the "
              "evaluation ensemble ``RetrievalEnsemble`` (the worst case over its members, against the clean "
              "gallery). One row per finished task, each from its own file: "
              "``benchmarks/results/dml_cache/dml__<dataset>__<loss>__<defence>__seed<seed>.json``, the cache "
              "entry ``rml reproduce dml`` writes to ``results/dml/cache`` (copy the files back there and a run "
              "resumes from them). Written by ``rml reproduce dml`` (``--methods`` adds defences).")
    if skipped:
        page.para("Files left out:")
        page.bullets(skipped)
    if not payloads:
        page.para(f"*{NOT_MEASURED}*: no finished task in ``benchmarks/results/{DML_CACHE}``.")
        return
    n_train = sorted({p.get("n_train") for p in payloads}, key=str)
    n_eval = sorted({p.get("n_eval") for p in payloads}, key=str)
    page.para(f"Training images per task: {', '.join(text(x) for x in n_train)}; retrieval queries: "
              f"{', '.join(text(x) for x in n_eval)}.")
    earlier = [" / ".join(text(x) for x in ident(p)) for p in payloads if "doubled_extra" not in p["strength"]]
    if earlier:  # results of the ensemble before its rounds (their strength check has no extra-break counts)
        page.para("Measured with the earlier ensemble (focus stages without the rounds), which failed the doubling "
                  "check on one model; read their adversarial figures as upper bounds until they are remeasured: "
                  + "; ".join(earlier) + ".")
    eps = sorted({e for p in payloads for e in p["eps"]})
    l2 = {tuple(p.get("cert_l2_eps", [])) for p in payloads}
    linf = {tuple(p["eps"]) for p in payloads}
    l2_head = " / ".join(num(r) for r in next(iter(l2))) if len(l2) == 1 else ""
    linf_head = " / ".join(num(r) for r in next(iter(linf))) if len(linf) == 1 else ""
    rows = []
    for p in payloads:
        adv = dict(zip(p["eps"], p["adv_recall_at_1"]))
        rows.append(ident(p) + [rate(p["clean"]["precision_at_1"]),
                                rate(p["clean"].get("mean_average_precision_at_r")),
                                *[rate(adv[e]) if e in adv else DASH for e in eps],
                                _joined(p.get("certified_recall_at_1_l2", []), p.get("cert_l2_eps", []), len(l2) == 1),
                                _joined(p.get("certified_recall_at_1", []), p["eps"], len(linf) == 1),
                                sig(p.get("lipschitz"))])
    page.table("Deep metric learning: clean, adversarial and certified Recall@1",
               ["dataset", "loss", "defence", "seed", "clean R@1", "MAP@R", *[f"adv. R@1 ε = {num(e)}" for e in eps],
                f"certified R@1, ℓ2 {l2_head}".strip(), f"certified R@1, ℓ∞ {linf_head}".strip(), "Lipschitz bound"],
               rows)
    page.para("Attack-strength check, on the first queries at the training ε: adversarial R@1 under the "
              "evaluation (its own figure: a query broken at a smaller ε counts as broken), the ensemble with "
              "doubled steps, restarts, focus restarts and rounds, and a decaying-step PGD; the doubling drop is "
              "how many points of R@1 the queries only the doubled ensemble breaks would take off the "
              "evaluation's figure (0: the ensemble has converged). The shift "
              "check compares the embedding shift PGD reaches with random search's at the same number of "
              "forward passes.")
    rows = []
    for p in payloads:
        s = p["strength"]
        rows.append(ident(p) + [str(s.get("n_queries", DASH)), num(s.get("eps")), rate(s["ensemble"]),
                                rate(s.get("doubled")), rate(s.get("decay_pgd")), fixed(s.get("doubled_drop_points"), 2),
                                f"{s.get('doubled_extra', DASH)} / {s.get('decay_pgd_extra', DASH)}",
                                yes(s.get("beats_decay_pgd")),
                                f"{fixed(s.get('shift_pgd_mean'), 3)} / {fixed(s.get('shift_random_mean'), 3)}",
                                str(s.get("shift_pgd_below_random", DASH))])
    page.table("Deep metric learning: attack-strength check",
               ["dataset", "loss", "defence", "seed", "queries", "ε", "ensemble R@1", "doubled R@1",
                "decay-PGD R@1", "doubling drop (points)", "queries only doubled / decay-PGD breaks",
                "ensemble ≤ decay-PGD", "shift: PGD / random",
                "queries where PGD's shift < random's"], rows)
    page.para("What the evaluation cost: seconds of the adversarial evaluation over every ε and inputs "
              "forwarded per query (with a backward pass, and in all); the whole evaluation (with the "
              "certification), the checks, and the training time the run's history records (the sum of its "
              "epochs; a task resumed from a finished checkpoint records almost no training in ``train_s``).")
    rows = []
    for p in payloads:
        passes = p.get("adv_passes_per_query", {})
        epochs = p.get("epoch_s") or []
        rows.append(ident(p) + [secs(p.get("adv_s")), secs(passes.get("backward")), secs(passes.get("forward")),
                                secs(p.get("eval_s")), secs(p.get("check_s")),
                                secs(sum(epochs)) if epochs else DASH, str(len(epochs)) if epochs else DASH])
    page.table("Deep metric learning: evaluation cost",
               ["dataset", "loss", "defence", "seed", "adversarial evaluation s", "backward passes / query",
                "forward passes / query", "evaluation s", "checks s", "training s (sum of epochs)", "epochs"], rows)


def _train_eps_entries(d: dict) -> list[dict]:
    out = []
    for e in d.values():
        proto = e["protocol"]
        out.append({**e, "epochs": e.get("epochs", proto["train"]["epochs"]), "ref_eps": proto["train_eps"],
                    "default_epochs": proto["train"]["epochs"], "adv": dict(zip(e["eval_eps"], e["adv_r1"]))})
    return out


def _evaluation(entries: Iterable[dict]) -> str:
    """The evaluations the entries were measured under, in words (each kind once)."""
    kinds = set()
    for e in entries:
        p = e["protocol"]
        if "eval_attack" in p:
            queries = (f" on the first {e['n_queries']} evaluation images as queries (all of them the gallery)"
                       if "n_queries" in e else " on every evaluation image")
            kinds.add(lit(p['eval_attack'].get('name', 'the ensemble')) + queries)
        else:
            kinds.add(f"PGD-{p['eval_steps']} with a fixed step of {num(p['eval_rel_step'])} ε alone (the earlier "
                      "evaluation, which overestimates robustness: read these figures as upper bounds)")
    return "; ".join(sorted(kinds))


def dml_train_eps(page: Page, res: Results) -> None:
    entries = _train_eps_entries(res.load("dml_train_eps.json"))
    ref = sorted({e["ref_eps"] for e in entries})
    defenses = sorted({e["defense"] for e in entries}, key=lambda x: _order(DEFENSE_ORDER, x))
    page.para("Naive adversarial training perturbs every member of a triplet, ours only the anchor, so the "
              "same ε is not the same training attack: the training ε, the epochs and the seed varied, the "
              "rest as in ``rml reproduce dml``. Adversarial R@1 under "
              f"{_evaluation(entries)}.",
              source("dml_train_eps.json", "python benchmarks/bench_dml_train_eps.py"),
              "Epochs: ``--train-eps 0.1 --epochs 5 10 20``; seeds: ``--train-eps 0.1 --seeds 0 1 2`` "
              "(and ``--loss contrastive``).")

    def key(e: dict) -> tuple:
        return _order(DATASET_ORDER, e["dataset"]), _order(LOSS_ORDER, e["loss"]), e["seed"]

    def cells(group: list[dict], fmt: Callable[[dict], str]) -> list[str]:
        by = {e["defense"]: e for e in group}
        return [fmt(by[x]) if x in by else DASH for x in defenses]

    def sweep(subset: list[dict], field: str, show: Callable, fmt: Callable[[dict], str]) -> list[list[str]]:
        """One row per value of ``field`` for every (dataset, loss, seed) that has several."""
        rows = []
        for (ds, loss, seed), group in _groups(subset, key, lambda e: (e["dataset"], e["loss"], e["seed"])):
            values = sorted({e[field] for e in group})
            if len(values) < 2:
                continue
            for v in values:
                rows.append([text(ds), text(loss), str(seed), show(v),
                             *cells([e for e in group if e[field] == v], fmt)])
        return rows

    # training eps: default epochs, every (dataset, loss, seed) with several training eps
    base = [e for e in entries if e["epochs"] == e["default_epochs"]]
    rows = sweep(base, "train_eps", num, lambda e: f"{rate(e['clean_r1'])} / {rate(e['adv'].get(e['ref_eps']))} / "
                                                   f"{rate(e['adv'].get(e['train_eps']))}")
    page.table(f"Training ε: clean R@1 / adversarial R@1 at ε = {', '.join(num(x) for x in ref)} / at the training ε",
               ["dataset", "loss", "seed", "training ε", *defenses], rows)

    # epochs: the protocol's training eps, every (dataset, loss, seed) with several epoch counts
    at_ref = [e for e in entries if e["train_eps"] == e["ref_eps"]]
    rows = sweep(at_ref, "epochs", str,
                 lambda e: f"{rate(e['clean_r1'])} / {rate(e['adv'].get(e['ref_eps']))}, {secs(e['train_s'])} s")
    page.table(f"Epochs: clean R@1 / adversarial R@1 at ε = {', '.join(num(x) for x in ref)}, training seconds",
               ["dataset", "loss", "seed", "epochs", *defenses], rows)

    # seeds: the protocol's training eps and epochs, every (dataset, loss, defence) with several seeds
    rows = []
    base_ref = [e for e in at_ref if e["epochs"] == e["default_epochs"]]
    for (ds, loss, dfn), group in _groups(
            base_ref, lambda e: (_order(DATASET_ORDER, e["dataset"]), _order(LOSS_ORDER, e["loss"]),
                                 _order(DEFENSE_ORDER, e["defense"])),
            lambda e: (e["dataset"], e["loss"], e["defense"])):
        if len(group) < 2:
            continue
        group.sort(key=lambda e: e["seed"])
        rows.append([text(ds), text(loss), text(dfn), ", ".join(str(e["seed"]) for e in group),
                     mean_sd([e["clean_r1"] for e in group]), mean_sd([e["adv"][e["ref_eps"]] for e in group])])
    page.table(f"Seeds: mean ± sd over the seeds at the training ε = {', '.join(num(x) for x in ref)}",
               ["dataset", "loss", "defence", "seeds", "clean R@1", "adversarial R@1 at the training ε"], rows)


def _groups(items: list[dict], sort_key: Callable, group_key: Callable) -> list[tuple[tuple, list[dict]]]:
    groups: dict[tuple, list[dict]] = {}
    for e in sorted(items, key=sort_key):
        groups.setdefault(group_key(e), []).append(e)
    return list(groups.items())


def _attack_name(rep: str) -> str:
    """An attack's repr without the arguments that do not change what it computes."""
    return re.sub(r"(?:norm|batch_size|random_state|progress)=[^,()]*(?:, |(?=\)))", "", rep).replace(", )", ")")


def eval_attack(page: Page, res: Results) -> None:
    d = res.load("eval_attack.json")
    page.para("How strong is the deep evaluation: adversarial R@1 of the same models under the earlier "
              "default (plain PGD), a decaying-step PGD, the evaluation ensemble and the ensemble with doubled "
              "steps and restarts (the setting of the script's docstring: a small MNIST model, ℓ∞). Lower R@1 "
              "is a stronger attack; with several attack seeds the mean and the range are given. The attack "
              "column is the attack as the file records it.",
              source("eval_attack.json", "python benchmarks/bench_eval_attack.py --defenses natural naive ours"),
              "(``--attack-seeds 0 1 2`` for the runs with several seeds.)")
    rows = []
    entries = sorted(d.values(), key=lambda e: (_order(DEFENSE_ORDER, e["defense"]), e.get("seed", 0)))
    for e in entries:
        runs: dict[str, list[dict]] = {}
        for k, r in e["runs"].items():
            runs.setdefault(k.split("/")[0], []).append(r)
        for label in sorted(runs, key=lambda x: _order(ATTACK_ORDER, x)):
            rs = runs[label]
            r1 = [r["r1"] for r in rs]
            r1_cell = rate(r1[0]) if len(r1) == 1 else f"{rate(statistics.mean(r1))} ({rate(min(r1))} – {rate(max(r1))})"
            reps = sorted({_attack_name(r["attack"]) for r in rs})
            rows.append([text(e["defense"]), rate(e.get("clean_r1")), text(label), str(len(rs)), r1_cell,
                         secs(statistics.mean(r["seconds"] for r in rs)),
                         secs(statistics.mean(r["forward_per_query"] for r in rs)),
                         "; ".join(lit(x) for x in reps)])
    page.table("Adversarial R@1 under each evaluation attack",
               ["defence", "clean R@1", "label", "attack seeds", "adv. R@1", "seconds", "forward passes / query",
                "attack as recorded"], rows)
    page.para(_doubling_verdict(entries))


#: the convergence standard: doubling the evaluation's steps and restarts may take at most this
#: many points off an adversarial R@1
DOUBLING_STANDARD = 0.5


def _doubling_verdict(entries: list[dict]) -> str:
    """A sentence per model: the points of R@1 the doubled ensemble takes off the ensemble's
    figure, as ``dml.strength_check`` counts them (the queries only the doubled run breaks) where
    both runs record their broken queries, else the difference of the two figures (marked), the
    largest over the attack seeds; judged against :data:`DOUBLING_STANDARD`."""
    parts, net = [], False
    for e in entries:
        ens = {k.split("/", 1)[1]: r for k, r in e["runs"].items() if k.startswith("ensemble/")}
        dbl = {k.split("/", 1)[1]: r for k, r in e["runs"].items() if k.startswith("doubled/")}
        drops = []
        for seed in sorted(set(ens) & set(dbl)):
            a, b = ens[seed], dbl[seed]
            if "broken" in a and "broken" in b and e.get("n_queries"):
                drops.append(100 * len(set(b["broken"]) - set(a["broken"])) / e["n_queries"])
            else:
                drops.append(max(0.0, 100 * (a["r1"] - b["r1"])))
                net = True
        if drops:
            drop = max(drops)
            verdict = "above" if drop > DOUBLING_STANDARD + 1e-9 else "within"
            parts.append(f"{text(e['defense'])} {drop:.2f} ({verdict} the standard)")
    if not parts:
        return "No model here has both the ensemble and the doubled ensemble run."
    how = (" (where a run does not record its broken queries, the difference of the two figures, which "
           "extra breaks on both sides could hide)" if net else "")
    return (f"Points of R@1 the queries only the doubled ensemble breaks take off the ensemble's figure{how}, "
            f"the largest over the attack seeds; the convergence standard is at most {DOUBLING_STANDARD:g}: "
            + "; ".join(parts) + ".")


def _smoothing_command(entries: list[dict]) -> str:
    """The command that writes these entries (one per dataset, as the script takes one dataset a run)."""
    runs = []
    for ds in dict.fromkeys(e["dataset"] for e in entries):
        es = [e for e in entries if e["dataset"] == ds]
        cmd = f"python benchmarks/bench_smoothing.py --dataset {ds} --sigmas {' '.join(num(e['sigma']) for e in es)}"
        for flag, field in (("--queries", "queries"), ("--samples", "samples"), ("--threads", "threads")):
            values = {e.get(field) for e in es}
            if len(values) == 1 and _finite(next(iter(values))):
                cmd += f" {flag} {next(iter(values))}"
        runs.append(cmd)
    return " && ".join(runs) or "python benchmarks/bench_smoothing.py"


def smoothing(page: Page, res: Results) -> None:
    d = res.load("smoothing.json")
    entries = sorted(d.values(), key=lambda e: (_order(DATASET_ORDER, e["dataset"]), e["sigma"]))
    page.para("Randomized smoothing of a model trained on noisy inputs (the ``rml reproduce dml`` setting): "
              "the smoothed top-1 label's certificate (Monte Carlo with the samples and α given) against the "
              "Lipschitz certificate of the same model, certified R@1 at each ℓ2 radius.",
              source("smoothing.json", _smoothing_command(entries)))
    rows = []
    for e in entries:
        rows.append([text(e["dataset"]), num(e["sigma"]), str(e["queries"]), str(e["samples"]), num(e["alpha"]),
                     rate(e["smoothed_recall_at_1"]),
                     ", ".join(f"{num(r)}: {rate(v)}" for r, v in zip(e["radii"], e["certified_recall_at_1"])),
                     ", ".join(f"{num(r)}: {rate(v)}" for r, v in zip(e["radii"], e["lipschitz_certified_recall_at_1"])),
                     secs(e.get("train_s")), secs(e.get("certify_s_per_query")), _attack_cell(e.get("attack"))])
    page.table("Randomized smoothing: certified Recall@1",
               ["dataset", "σ", "queries", "samples", "α", "smoothed R@1", "certified R@1 (smoothing), radius: value",
                "certified R@1 (Lipschitz), radius: value", "training s", "certification s / query",
                "soundness attack: queries, broken at each multiple of the radius"], rows)


def _attack_cell(a) -> str:
    """The soundness attack's counts (as ``rml reproduce smoothing`` reports them), or a dash where
    the entry has none (older runs)."""
    from robust_metric_learning.experiments.smoothing import attack_summary

    return attack_summary(a) if isinstance(a, dict) else "—"


# ---------------------------------------------------------------------------------------------


def write_results_page(out: str, results_dir: str) -> None:
    """Write ``out`` (reStructuredText) from the JSON files in ``results_dir``."""
    res = Results(results_dir)
    page = Page()
    page.heading("Benchmarks and results", "=")
    page.para("Every number on this page is read from a JSON file in ``benchmarks/results`` when the "
              "documentation is built (by ``docs/results_page.py``); each table names its file and the command "
              "that writes it. The timings were taken on a shared machine (the CPUs and threads are given where the file "
              "records them); ratios measured within one run are the figures to compare.")

    page.heading("Speed", "-")
    for title, render, name in [
        ("Certification against a QP baseline", lambda p: certify_speed(p, res), "certify.json"),
        ("Learners against metric-learn", lambda p: vs_metric_learn(
            p, res, "vs_metric_learn.json", "python benchmarks/bench_vs_metric_learn.py"), "vs_metric_learn.json"),
        ("Learners against metric-learn, one thread", lambda p: vs_metric_learn(
            p, res, "vs_metric_learn_1thread.json",
            "python benchmarks/bench_vs_metric_learn.py --threads 1 --out benchmarks/results/vs_metric_learn_1thread.json"),
         "vs_metric_learn_1thread.json"),
        ("Attacks: structural against Boundary", lambda p: attack_speed(p, res), "attacks.json"),
        ("Robust deep metric learning: cost of an epoch", lambda p: dml_epoch(p, res), "dml_epoch.json"),
    ]:
        page.heading(title, "~")
        section(page, render, name)

    page.heading("Learner results", "-")
    for title, render, name in [
        ("ARML and the classic learners", lambda p: arml(p, res), "arml.json"),
        ("The perturbation loss (LMNN-PL)", lambda p: lmnn_pl(p, res, "lmnn_pl.json", default=True), "lmnn_pl.json"),
        ("LMNN-PL on wine, more candidates per split", lambda p: lmnn_pl(p, res, "lmnn_pl_wine_fullgrid.json"),
         "lmnn_pl_wine_fullgrid.json"),
        ("Compatibility with metric-learn's tests", lambda p: metric_learn_suite(p, res), "metric_learn_suite.json"),
    ]:
        page.heading(title, "~")
        if name == "lmnn_pl.json":
            page.para(f"The LMNN-PL files were written by the first version of ``benchmarks/bench_lmnn_pl.py`` "
                      f"(commit {LMNN_PL_COMMIT}: ``git show {LMNN_PL_COMMIT}:benchmarks/bench_lmnn_pl.py``), whose "
                      "protocol they record; the script now runs ``rml reproduce lmnn-pl`` into "
                      "``benchmarks/results/lmnn_pl/``.")
        section(page, render, name)

    page.heading("Attacks", "-")
    page.heading("Attack strength: certified, structural and Boundary", "~")
    section(page, lambda p: attack_strength(p, res), "attacks.json")

    page.heading("Deep metric learning", "-")
    page.heading("Remeasured with the evaluation ensemble", "~")
    section(page, lambda p: dml_cache(p, res), DML_CACHE)
    page.heading("Training ε, epochs and seeds", "~")
    section(page, lambda p: dml_train_eps(p, res), "dml_train_eps.json")
    page.heading("Strength of the evaluation attack", "~")
    section(page, lambda p: eval_attack(p, res), "eval_attack.json")
    page.heading("Randomized smoothing", "~")
    section(page, lambda p: smoothing(p, res), "smoothing.json")

    page.heading("Other files", "-")
    unknown = [n for n in res.all_json() if n not in res.asked]
    if unknown:
        page.para("JSON files in ``benchmarks/results`` that no table on this page reads:")
        folders: dict[str, list[str]] = {}
        for n in unknown:
            folder, _, base = n.rpartition("/")
            folders.setdefault(folder, []).append(n if not folder else base)
        page.bullets([f"``{n}``" for n in folders.pop("", [])]
                     + [f"in ``{folder}/``: " + ", ".join(f"``{n}``" for n in names) for folder, names in folders.items()])
    else:
        page.para("Every JSON file in ``benchmarks/results`` is rendered above.")

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(page.lines).rstrip() + "\n", encoding="utf-8")
