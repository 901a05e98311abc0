"""K = 11 attacks side by side: the structural attack against the Boundary attack, and both
against the certified radius.

What it measures, for each dataset and metric, on the same test points (official split,
[0, 1] scaling, the test set shuffled with seed 42, the first ``--n-eval`` points; the
experiment's ε grid, ``experiments.arml.eps_grid``):

* the K = 11 certified radius (:func:`certified_radius_knn`, a lower bound);
* :class:`StructuralAttack` with its defaults, and :class:`BoundaryAttack` with its defaults,
  which are foolbox 3's (25000 steps, spherical and source steps 0.01, adaptation 1.5 on the
  success rates of the last 100 / 30 checks taken every 10 steps, convergence at a source step
  of 1e-7): the ARML experiments ran foolbox's ``BoundaryAttack()`` unchanged on their K-NN
  (github.com/wangwllu/provably_robust_metric_learning, ``main_boundary_attack.py``);
* robust error at every ε (fraction of points with radius <= ε; ε = 0 is the clean error) for
  the three, the gap certified - structural, and per point how the two attacks compare;
* seconds per point (wall clock, and CPU time of this process) of each attack, and the ratio.

Every radius is checked: certified <= each attack's radius on every point (else the script
fails). The stronger attack finds adversarial points within ε for more points, i.e. has the
higher empirical robust error (both are lower bounds of the true robust error, the certified
one an upper bound); the script exits with status 1 if the structural attack's robust error is
below the Boundary attack's at some ε (after writing the results).

Metrics: ``euclidean`` (M = I) and ``arml`` (ARML with its published settings, fitted here on
the training set; its fit time is recorded). Data are read from ``$RML_DATA`` (else
``<repo>/../shared/data``); digits needs no files, and a dataset whose files are missing is
skipped with a message. Each (dataset, metric, n-eval) result is kept in
``benchmarks/results/attacks.json`` (written atomically) and reused unless ``--force``.

With ``--previous COMMIT`` the structural attack as it was at that commit (the whole package
of then, from a git worktree, under this run's fitted metric) and as it is now are timed on the
same points, ``--previous-repeats`` runs each (default 5), alternating, each in its own process;
the ratio is of the medians, and the radii are compared. A cached result without this
comparison gets it alone (the Boundary attack is not run again).

Run (raise the priority on a shared machine)::

    python benchmarks/bench_attacks.py [--datasets digits pendigits] [--metrics euclidean arml]
        [--n-eval 1000] [--boundary-steps 25000] [--previous COMMIT] [--previous-repeats 5] [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _previous import positive_int

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "attacks.json"
K = 11
SOUND_RTOL = 1e-6


def data_home() -> Path | None:
    env = os.environ.get("RML_DATA", "")
    if env:
        return Path(env).expanduser()
    default = REPO.parent / "shared" / "data"
    return default if default.exists() else None


def eval_points(name: str, n: int, home):
    """Training set and the first ``n`` shuffled test points, or None if the files are missing."""
    from sklearn.utils import shuffle

    from robust_metric_learning.datasets import load_dataset

    try:
        X_tr, y_tr, X_te, y_te = load_dataset(name, data_home=home)
    except FileNotFoundError as exc:
        print(f"[bench_attacks] {name} not available: {exc}", file=sys.stderr)
        return None
    X_ev, y_ev = shuffle(X_te, y_te, random_state=42)
    return X_tr, y_tr, np.ascontiguousarray(X_ev[:n]), y_ev[:n]


def git_head() -> dict:
    def git(*a):
        try:
            return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"git_head": git("rev-parse", "HEAD"),
            "src_modified": bool(git("status", "--porcelain", "--", "src"))}


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def curve(radii: np.ndarray, eps: list[float]) -> list[float]:
    from robust_metric_learning import robust_error_curve

    return robust_error_curve(radii, [0.0, *eps]).tolist()


_PREVIOUS_SCRIPT = """
import sys, time, numpy as np
from robust_metric_learning.attacks import StructuralAttack
from robust_metric_learning.neighbors import MahalanobisKNN
z = np.load(sys.argv[1])
X_tr, y_tr, X_ev, y_ev, L = z["X_tr"], z["y_tr"], z["X_ev"], z["y_ev"], z["L"]
knn = MahalanobisKNN(int(sys.argv[3]), metric=L if L.size else "euclidean").fit(X_tr, y_tr)
attack = StructuralAttack(random_state=0)
attack(knn, X_ev[:2], y_ev[:2])  # the compiled parts loaded outside the timing
w0, c0 = time.perf_counter(), time.process_time()
radii = attack(knn, X_ev, y_ev).radii
np.savez(sys.argv[2], radii=radii, wall=time.perf_counter() - w0, cpu=time.process_time() - c0)
"""


def previous_structural(commit: str, data, components, repeats: int):
    """``StructuralAttack`` as it was at ``commit`` and as it is now, ``repeats`` runs each,
    alternately, each in its own process on the same points under the same metric
    (``components``: this run's fitted ``L``, None for Euclidean; :func:`_previous.alternate_with_commit`):
    ``(the commit's radii, its wall and CPU seconds per run, the current radii, wall and CPU
    seconds per run)``, or None if that fails."""
    from _previous import alternate_with_commit

    X_tr, y_tr, X_ev, y_ev = data
    L = np.zeros((0, 0)) if components is None else np.asarray(components)
    got = alternate_with_commit(commit, _PREVIOUS_SCRIPT, {"X_tr": X_tr, "y_tr": y_tr, "X_ev": X_ev, "y_ev": y_ev,
                                                           "L": L}, [K], repeats=repeats, tag="bench_attacks")
    if got is None:
        return None
    prev, cur = got
    return (prev[0]["radii"], [float(o["wall"]) for o in prev], [float(o["cpu"]) for o in prev],
            cur[0]["radii"], [float(o["wall"]) for o in cur], [float(o["cpu"]) for o in cur])


def previous_record(args, data, knn) -> dict | None:
    """The comparison with ``args.previous`` (alternating runs in their own processes, the radii
    of both sides compared; see :func:`previous_structural`); None if it cannot be run."""
    y_ev = data[3]
    got = previous_structural(args.previous, data, knn.components_ if knn.metric != "euclidean" else None,
                              args.previous_repeats)
    if got is None:
        return None
    p_radii, p_walls, p_cpus, radii, c_walls, c_cpus = got
    pos = radii > 0
    q = p_radii[pos] / radii[pos]
    n = len(y_ev)
    previous = {"commit": args.previous, "repeats": args.previous_repeats, "current_code": git_head(),
                "wall_per_point": float(np.median(p_walls)) / n, "cpu_per_point": float(np.median(p_cpus)) / n,
                "current_wall_per_point": float(np.median(c_walls)) / n,
                "runs_wall_per_point": {"previous": [w / n for w in p_walls], "current": [w / n for w in c_walls]},
                "speedup_wall": float(np.median(p_walls) / np.median(c_walls)),
                "speedup_cpu": float(np.median(p_cpus) / np.median(c_cpus)),
                "previous_over_current_radius": {"min": float(q.min()), "max": float(q.max()),
                                                 "frac_current_longer": float(np.mean(q < 1 - 1e-6)),
                                                 "frac_current_shorter": float(np.mean(q > 1 + 1e-6))}}
    print(f"  structural at {args.previous} / now, {args.previous_repeats} alternating runs each: "
          f"{previous['wall_per_point'] * 1e3:.1f} / {previous['current_wall_per_point'] * 1e3:.1f} "
          "ms/point (medians)", flush=True)
    return previous


def fitted_knn(metric_name: str, data):
    """The K-NN classifier of the run under ``metric_name`` ("euclidean" or "arml", ARML fitted
    here) and the seconds the metric's fit took."""
    from robust_metric_learning.learners import ARML
    from robust_metric_learning.neighbors import MahalanobisKNN

    X_tr, y_tr = data[:2]
    metric, fit_s = "euclidean", 0.0
    if metric_name == "arml":
        metric, fit_s, _ = timed(lambda: ARML(random_state=0).fit(X_tr, y_tr))
    return MahalanobisKNN(K, metric=metric).fit(X_tr, y_tr), fit_s


def _has_comparison(entry: dict, commit: str, repeats: int) -> bool:
    """Whether a cached result holds an alternating comparison with ``commit``, of ``repeats`` runs."""
    prev = entry.get("previous_structural") or {}
    return prev.get("commit") == commit and prev.get("repeats") == repeats and "current_wall_per_point" in prev


def run_one(dataset: str, metric_name: str, data, args) -> dict:
    from robust_metric_learning import certified_radius_knn
    from robust_metric_learning.attacks import BoundaryAttack, StructuralAttack
    from robust_metric_learning.experiments.arml import eps_grid

    X_tr, y_tr, X_ev, y_ev = data
    knn, fit_s = fitted_knn(metric_name, data)
    metric = knn.metric
    cert, cert_s, _ = timed(lambda: certified_radius_knn(X_tr, y_tr, X_ev, y_ev, n_neighbors=K, metric=metric))
    structural = StructuralAttack(random_state=0)
    # load the compiled parts (numba's on-disk cache; compiled on the very first run) outside the timing
    _, warmup_s, _ = timed(lambda: structural(knn, X_ev[:2], y_ev[:2]))
    s_res, s_wall, s_cpu = timed(lambda: structural(knn, X_ev, y_ev))
    print(f"  structural: {s_wall / len(y_ev) * 1e3:.1f} ms/point", flush=True)
    previous = None
    if args.previous:
        previous = previous_record(args, data, knn)
    boundary = BoundaryAttack(steps=args.boundary_steps, chunk_size=args.boundary_chunk, random_state=0)
    b_res, b_wall, b_cpu = timed(lambda: boundary(knn, X_ev, y_ev))
    print(f"  boundary: {b_wall / len(y_ev) * 1e3:.1f} ms/point", flush=True)
    s_r, b_r = s_res.radii, b_res.radii
    for name, r in (("structural", s_r), ("boundary", b_r)):
        bad = cert > r * (1 + SOUND_RTOL) + 1e-12
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise RuntimeError(f"{dataset}/{metric_name}: certified radius above the {name} attack's on "
                               f"{int(bad.sum())} point(s), e.g. point {i}: {cert[i]!r} > {r[i]!r}")
    eps = eps_grid(dataset)
    curves = {"certified": curve(cert, eps), "structural": curve(s_r, eps), "boundary": curve(b_r, eps)}
    pos = (s_r > 0) & np.isfinite(s_r) & np.isfinite(b_r)
    ratio = b_r[pos] / s_r[pos]
    n = len(y_ev)
    return {
        "dataset": dataset, "metric": metric_name, "k": K, "n_eval": n, "eps": [0.0, *eps],
        "robust_error": curves,
        "gap_certified_minus_structural": (np.array(curves["certified"]) - np.array(curves["structural"])).tolist(),
        # the stronger attack finds more adversarial points: a higher empirical robust error
        "structural_at_least_as_strong_every_eps": bool(np.all(np.array(curves["structural"])
                                                               >= np.array(curves["boundary"]))),
        "per_point": {
            "n_attacked": int(pos.sum()),
            "boundary_over_structural_median": float(np.median(ratio)),
            "boundary_over_structural_quartiles": np.quantile(ratio, [0.25, 0.75]).tolist(),
            "frac_boundary_smaller": float(np.mean(ratio < 1 - 1e-9)),
            "frac_boundary_smaller_by_1pct": float(np.mean(ratio < 0.99)),
            "min_ratio": float(ratio.min()),
            "structural_failed": int(np.sum(~np.isfinite(s_r))), "boundary_failed": int(np.sum(~np.isfinite(b_r))),
        },
        "seconds_per_point": {"structural_wall": s_wall / n, "structural_cpu": s_cpu / n,
                              "boundary_wall": b_wall / n, "boundary_cpu": b_cpu / n,
                              "certify_wall": cert_s / n, "structural_warmup_2_points_s": warmup_s},
        "ratio_boundary_over_structural": {"wall": b_wall / s_wall, "cpu": b_cpu / s_cpu},
        "fit_s": fit_s,
        "previous_structural": previous,
        "settings": {"structural": {k: repr(v) for k, v in vars(structural).items()},
                     "boundary": {k: repr(v) for k, v in vars(boundary).items()}},
        "radii": {"certified": cert.tolist(), "structural": s_r.tolist(), "boundary": b_r.tolist()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    **git_head()},
    }


def print_table(r: dict) -> None:
    eps = r["eps"]
    print(f"\n{r['dataset']} / {r['metric']} (K = {r['k']}, {r['n_eval']} points)")
    print("| radius | " + " | ".join(f"ε={e:g}" for e in eps) + " |")
    print("|---|" + "---|" * len(eps))
    for name in ("certified", "structural", "boundary"):
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in r["robust_error"][name]) + " |")
    print("| gap (certified - structural) | " + " | ".join(f"{v:.3f}" for v in r["gap_certified_minus_structural"])
          + " |")
    t, pp = r["seconds_per_point"], r["per_point"]
    print(f"time per point: structural {t['structural_wall'] * 1e3:.1f} ms, Boundary {t['boundary_wall'] * 1e3:.0f} ms "
          f"(ratio {r['ratio_boundary_over_structural']['wall']:.1f}x wall, "
          f"{r['ratio_boundary_over_structural']['cpu']:.1f}x CPU); Boundary/structural radius: median "
          f"{pp['boundary_over_structural_median']:.3f}, smaller on {pp['frac_boundary_smaller']:.1%} of points "
          f"(by > 1%: {pp['frac_boundary_smaller_by_1pct']:.1%}); structural finds at least as many adversarial "
          f"points as Boundary at every ε: {r['structural_at_least_as_strong_every_eps']}")
    prev = r.get("previous_structural")
    if prev:
        now = prev.get("current_wall_per_point")  # (absent from runs before the alternating comparison)
        print(f"structural at {prev['commit']}: {prev['wall_per_point'] * 1e3:.1f} ms/point"
              + (f", now {now * 1e3:.1f} ({prev['repeats']} alternating runs each, medians)" if now else "")
              + f": {prev['speedup_wall']:.2f}x (CPU {prev['speedup_cpu']:.2f}x); radii: "
              f"{prev['previous_over_current_radius']}")


def main() -> int:
    from robust_metric_learning._io import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["digits", "pendigits"])
    ap.add_argument("--metrics", nargs="+", default=["euclidean"], choices=["euclidean", "arml"])
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--boundary-steps", type=int, default=25000, help="foolbox 3's default, the ARML baseline")
    ap.add_argument("--boundary-chunk", type=int, default=64, help="points walking in lockstep (one batched predict)")
    ap.add_argument("--previous", metavar="COMMIT", default=None,
                    help="also time StructuralAttack as it was at this git commit, on the same points")
    ap.add_argument("--previous-repeats", type=positive_int, default=5,
                    help="runs of the old and of the current attack, alternating, each in its own process")
    ap.add_argument("--force", action="store_true", help="recompute cached results")
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args()
    cache = json.loads(args.output.read_text()) if args.output.is_file() else {}
    home = data_home()
    ok = True
    for ds in args.datasets:
        data = eval_points(ds, args.n_eval, home)
        if data is None:
            continue
        for metric in args.metrics:
            key = f"{ds}/{metric}/{len(data[3])}/boundary{args.boundary_steps}"
            if key not in cache or args.force:
                print(f"{key} ...", flush=True)
                cache[key] = run_one(ds, metric, data, args)
                atomic_write_text(args.output, json.dumps(cache, indent=1) + "\n")
            elif args.previous and not _has_comparison(cache[key], args.previous, args.previous_repeats):
                print(f"{key}: comparison with {args.previous} ...", flush=True)
                got = previous_record(args, data, fitted_knn(metric, data)[0])
                if got is not None:  # (a failed comparison keeps the cached one)
                    cache[key]["previous_structural"] = got
                    atomic_write_text(args.output, json.dumps(cache, indent=1) + "\n")
            print_table(cache[key])
            ok &= cache[key]["structural_at_least_as_strong_every_eps"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
