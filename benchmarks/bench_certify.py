"""Certification speed, measured as ratios within one run.

What it measures (DESIGN §2):

* USPS (7291 x 256), for M = I and for a random full-rank M (``A = N(0,1)^{d x d}/sqrt(d)``,
  ``M = A^T A``, seed ``--metric-seed``):

  1. our exact 1-NN radius, :func:`exact_radius_1nn`, seconds per point over ``--n-eval``
     shuffled test points (whole call, wall clock, per-class precomputation included);
  2. a baseline exact 1-NN: the same screening (negatives visited in ascending order of
     ``max over all positives of margin``), each per-negative projection QP handed to
     Clarabel, point by point; run on the first ``--n-baseline`` points, its radii checked
     against ours (relative difference <= 1e-4, else the run fails);
  3. our K = 11 bound, :func:`certified_radius_knn`, seconds per point;
  4. a baseline K = 11 bound evaluated point by point without shared work (the full
     |P| x |N| margin matrix, pair norms included, rebuilt for every point); its radii must
     equal ours to rtol 1e-9.

  Ours is also timed on the same first ``--n-baseline`` points, so that each ratio
  baseline / ours is reported both on identical points and against our full-run rate.

* MNIST (60000 x 784, M = I, ``--n-eval`` test points): our exact 1-NN and K = 11 bound,
  seconds per point and peak resident memory; each runs in a fresh subprocess (this script
  re-invoked with ``--mnist-part exact|bound``) so that the peak belongs to it alone.

Test points are ``sklearn.utils.shuffle(X_test, y_test, random_state=42)[:n_eval]``.
Data are read from ``$RML_DATA``, else ``<repo>/../shared/data``; if the data are missing
the script says so and exits with status 0 without measuring anything.

Run::

    python benchmarks/bench_certify.py [--n-eval 1000] [--n-baseline 50] [--skip-mnist] [--previous COMMIT]
        [--previous-repeats 5]

With ``--previous COMMIT`` the USPS rows are also timed as the package was at that commit and as
it is now (:mod:`_previous`: a git worktree; ``--previous-repeats`` runs each, alternating, each
in its own process), on the same points and metric; each row then records the median times,
previous / current (at least 1: no slower) and the largest difference of the radii. (The
comparison of issue 17 is kept apart: ``--skip-mnist --previous a1183fd --output
benchmarks/results/certify_vs_a1183fd.json``.)

It prints a Markdown table and writes ``benchmarks/results/certify.json``, with a fingerprint
of the library source measured (git HEAD, uncommitted changes, a hash of the package files; a
warning is printed if that source changed while the script ran). A disagreement
between our radii and a baseline's is printed with the point, the metric and both values, and
the script then exits with status 1 (after writing the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _previous import positive_int

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "certify.json"
K = 11
EXACT_RTOL = 1e-4
BOUND_RTOL = 1e-9
NORM_FLOOR = 1e-12  # same floor on ||M (x_i - x_j)|| as the library's margin formula
MNIST_MARK = "MNIST-RESULT-JSON: "


# ------------------------------------------------------------------------------ helpers


def data_home() -> Path | None:
    env = os.environ.get("RML_DATA", "")
    if env:
        return Path(env).expanduser()
    default = REPO.parent / "shared" / "data"
    return default if default.exists() else None


def load(name: str, home: Path | None):
    """The dataset, or None (with a message) when its files are missing."""
    from robust_metric_learning.datasets import load_dataset

    try:
        return load_dataset(name, data_home=home)
    except FileNotFoundError as exc:
        print(f"[bench_certify] {name} not available: {exc}", file=sys.stderr)
        return None


def test_points(X_test, y_test, n: int):
    from sklearn.utils import shuffle

    Xs, ys = shuffle(X_test, y_test, random_state=42)
    return np.ascontiguousarray(Xs[:n]), ys[:n]


def random_metric(d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d)) / np.sqrt(d)
    return A.T @ A


def rss_now_kib() -> int:
    """Current resident set size (KiB) from /proc, or -1 where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def peak_rss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def source_state() -> dict:
    """Fingerprint of the library source being measured: git HEAD, whether src/ differs from
    it, and a hash of the package's .py files (so that edits made during a run show up)."""
    import hashlib

    pkg = REPO / "src" / "robust_metric_learning"
    h = hashlib.sha256()
    for f in sorted(pkg.glob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())

    def git(*a):
        try:
            return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"git_head": git("rev-parse", "HEAD"), "src_modified": bool(git("status", "--porcelain", "--", "src")),
            "src_sha256": h.hexdigest()[:16]}


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


# --------------------------------------------------------------------------- baselines


class BaselineData:
    """Training set under M, with only the per-metric (not per-point) pieces precomputed:
    ``M x_i`` for every training point and its squared norm."""

    def __init__(self, X: np.ndarray, y: np.ndarray, M: np.ndarray):
        self.X = X
        self.y = y
        self.M = M
        self.MX = X @ M  # M symmetric: row i is (M x_i)^T
        self.MX_sq = np.einsum("ij,ij->i", self.MX, self.MX)
        self.n_classes = int(y.max()) + 1

    def sq_dist(self, x: np.ndarray) -> np.ndarray:
        diff = self.X - x
        return np.einsum("ij,ij->i", diff @ self.M, diff)

    def predict(self, d: np.ndarray, k: int) -> int:
        nn = np.argsort(d, kind="stable")[:k]  # equal distances: smaller training index first
        return int(np.bincount(self.y[nn], minlength=self.n_classes).argmax())  # ties: smaller label

    def margins(self, d: np.ndarray, P: np.ndarray, N: np.ndarray) -> np.ndarray:
        """The full |P| x |N| margin matrix for one point, pair norms computed afresh."""
        sq = self.MX_sq[P, None] + self.MX_sq[None, N] - 2.0 * (self.MX[P] @ self.MX[N].T)
        norms = np.sqrt(np.clip(sq, 0.0, None))
        return (d[None, N] - d[P, None]) / (2.0 * np.maximum(norms, NORM_FLOOR))


def baseline_exact_1nn(data: BaselineData, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, dict]:
    """Exact 1-NN radii: margin screening + one Clarabel QP per visited negative."""
    import clarabel
    from scipy import sparse

    settings = clarabel.DefaultSettings()
    settings.verbose = False
    dim = data.X.shape[1]
    P_obj = sparse.csc_matrix(2.0 * sparse.identity(dim, format="csc"))
    q = np.zeros(dim)
    radii = np.zeros(len(X))
    n_qp = 0
    statuses: dict[str, int] = {}
    for t in range(len(X)):
        x = X[t]
        d = data.sq_dist(x)
        c = data.predict(d, 1)
        if c != y[t]:
            continue
        P = np.flatnonzero(data.y == c)
        N = np.flatnonzero(data.y != c)
        bound = data.margins(d, P, N).max(0)
        best = np.inf
        for col in np.argsort(bound, kind="stable"):
            if bound[col] >= best:
                break
            j = N[col]
            A = 2.0 * (data.MX[P] - data.MX[j])  # rows 2 (M (x_i - x_j))^T
            b = d[P] - d[j]
            solver = clarabel.DefaultSolver(P_obj, q, sparse.csc_matrix(A), b,
                                            [clarabel.NonnegativeConeT(P.size)], settings)
            sol = solver.solve()
            status = str(sol.status)
            statuses[status] = statuses.get(status, 0) + 1
            if "Solved" not in status:  # Solved / AlmostSolved
                raise RuntimeError(f"Clarabel failed on test point {t}, negative {j}: {status}")
            n_qp += 1
            best = min(best, float(np.linalg.norm(np.asarray(sol.x))))
        radii[t] = best
    return radii, {"qp_solves": n_qp, "clarabel_status": statuses}


def baseline_bound_knn(data: BaselineData, X: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """K-NN bound, point by point, no shared work between points."""
    s = (k + 1) // 2
    radii = np.zeros(len(X))
    for t in range(len(X)):
        d = data.sq_dist(X[t])
        c = data.predict(d, k)
        if c != y[t]:
            continue
        P = np.flatnonzero(data.y == c)
        N = np.flatnonzero(data.y != c)
        m = np.clip(data.margins(d, P, N), 0.0, None)
        per_neg = -np.partition(-m, s - 1, axis=0)[s - 1]  # s-th largest over positives
        radii[t] = np.partition(per_neg, s - 1)[s - 1]  # s-th smallest over negatives
    return radii


# ------------------------------------------------------------------------- comparisons


def rel_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    scale = np.maximum(np.abs(a), np.abs(b))
    out = np.abs(a - b) / np.where(scale > 0, scale, 1.0)
    out[(a == 0) != (b == 0)] = np.inf  # one says misclassified, the other not
    return out


def check(label: str, metric: str, ours: np.ndarray, base: np.ndarray, rtol: float,
          failures: list) -> float:
    rd = rel_diff(ours, base)
    for t in np.flatnonzero(~(rd <= rtol)):
        msg = (f"{label} [{metric}] point {int(t)} (shuffled test index): ours={ours[t]!r} "
               f"baseline={base[t]!r} rel diff={rd[t]:.3g} > {rtol:g}")
        failures.append(msg)
        print("MISMATCH " + msg, file=sys.stderr, flush=True)
    return float(rd.max()) if rd.size else 0.0


# -------------------------------------------------------------------------------- USPS


def bench_usps(args, home: Path, failures: list) -> list[dict] | None:
    from robust_metric_learning import certified_radius_knn, exact_radius_1nn

    ds = load("usps", home)
    if ds is None:
        return None
    X_tr, y_tr, X_te, y_te = ds
    X, y = test_points(X_te, y_te, args.n_eval)
    nb = min(args.n_baseline, len(X))
    Xb, yb = X[:nb], y[:nb]
    d = X_tr.shape[1]
    metrics = {"identity": ("euclidean", np.eye(d)),
               f"random full-rank (seed {args.metric_seed})": (None, random_metric(d, args.metric_seed))}
    rows = []
    for mname, (spec, M) in metrics.items():
        metric = spec if spec is not None else M
        print(f"\n== USPS, M = {mname}", flush=True)
        # warm-up: lazy imports (scipy.optimize, tqdm, joblib) outside the timings
        exact_radius_1nn(X_tr, y_tr, X[:4], y[:4], metric=metric, progress=False)
        certified_radius_knn(X_tr, y_tr, X[:4], y[:4], n_neighbors=K, metric=metric, progress=False)

        r_ex, t_ex = timed(exact_radius_1nn, X_tr, y_tr, X, y, metric=metric, progress=False)
        print(f"ours exact 1-NN: {len(X)} pts in {t_ex:.2f} s = {1e3 * t_ex / len(X):.2f} ms/pt", flush=True)
        r_exb, t_exb = timed(exact_radius_1nn, X_tr, y_tr, Xb, yb, metric=metric, progress=False)
        data = BaselineData(X_tr, y_tr, M)
        (b_ex, info), tb_ex = timed(baseline_exact_1nn, data, Xb, yb)
        print(f"baseline exact 1-NN: {nb} pts in {tb_ex:.2f} s = {1e3 * tb_ex / nb:.1f} ms/pt "
              f"({info['qp_solves']} QPs)", flush=True)
        diff_ex = check("exact 1-NN", mname, r_ex[:nb], b_ex, EXACT_RTOL, failures)
        diff_ex_sub = float(rel_diff(r_ex[:nb], r_exb).max())
        print(f"max rel diff ours vs Clarabel: {diff_ex:.3g}", flush=True)

        r_kn, t_kn = timed(certified_radius_knn, X_tr, y_tr, X, y, n_neighbors=K, metric=metric, progress=False)
        print(f"ours K={K} bound: {len(X)} pts in {t_kn:.2f} s = {1e3 * t_kn / len(X):.2f} ms/pt", flush=True)
        r_knb, t_knb = timed(certified_radius_knn, X_tr, y_tr, Xb, yb, n_neighbors=K, metric=metric, progress=False)
        b_kn, tb_kn = timed(baseline_bound_knn, data, Xb, yb, K)
        print(f"baseline K={K} bound: {nb} pts in {tb_kn:.2f} s = {1e3 * tb_kn / nb:.1f} ms/pt", flush=True)
        diff_kn = check(f"K={K} bound", mname, r_kn[:nb], b_kn, BOUND_RTOL, failures)
        print(f"max rel diff ours vs point-by-point: {diff_kn:.3g}", flush=True)

        previous = (previous_certify(args.previous, X_tr, y_tr, X, y, M, args.previous_repeats)
                    if args.previous else None)
        for method, t_full, r_full, t_sub, r_sub, t_base, diff, extra in (
            ("exact 1-NN", t_ex, r_ex, t_exb, r_exb, tb_ex, diff_ex,
             {"baseline": "margin screening + Clarabel QP per visited negative", **info,
              "max_rel_diff_ours_full_vs_subset_call": diff_ex_sub}),
            (f"K={K} bound", t_kn, r_kn, t_knb, r_knb, tb_kn, diff_kn,
             {"baseline": "full |P|x|N| margin matrix per point (numpy)",
              "max_rel_diff_ours_full_vs_subset_call": float(rel_diff(r_kn[:nb], r_knb).max())}),
        ):
            ours = t_full / len(X)
            ours_sub = t_sub / nb
            base = t_base / nb
            rows.append({
                "dataset": "usps", "metric": mname, "method": method,
                "n_train": int(X_tr.shape[0]), "n_features": int(d),
                "ours_s_per_pt": ours, "ours_points": len(X), "ours_total_s": t_full,
                "ours_same_points_s_per_pt": ours_sub,
                "baseline_s_per_pt": base, "baseline_points": nb, "baseline_total_s": t_base,
                "ratio_same_points": base / ours_sub, "ratio_vs_full_run": base / ours,
                "max_rel_diff_vs_baseline": diff,
                **({} if previous is None else {"previous": _previous_row(previous, method, args.previous,
                                                                          r_full)}),
                "clean_error": float((r_full == 0).mean()),
                "median_radius_correct": float(np.median(r_full[r_full > 0])) if (r_full > 0).any() else None,
                **extra,
            })
    return rows


_PREVIOUS_SCRIPT = """
import sys, time, numpy as np
from robust_metric_learning import certified_radius_knn, exact_radius_1nn
z = np.load(sys.argv[1])
X_tr, y_tr, X, y, M, K = z["X_tr"], z["y_tr"], z["X"], z["y"], z["M"], int(sys.argv[3])
exact_radius_1nn(X_tr, y_tr, X[:4], y[:4], metric=M, progress=False)  # warm-up, as for ours
certified_radius_knn(X_tr, y_tr, X[:4], y[:4], n_neighbors=K, metric=M, progress=False)
t = time.perf_counter(); r_ex = exact_radius_1nn(X_tr, y_tr, X, y, metric=M, progress=False)
t_ex = time.perf_counter() - t
t = time.perf_counter(); r_kn = certified_radius_knn(X_tr, y_tr, X, y, n_neighbors=K, metric=M, progress=False)
t_kn = time.perf_counter() - t
np.savez(sys.argv[2], r_ex=r_ex, t_ex=t_ex, r_kn=r_kn, t_kn=t_kn)
"""


def previous_certify(commit: str, X_tr, y_tr, X, y, M, repeats: int) -> tuple[list[dict], list[dict]] | None:
    """Our exact 1-NN radius and K-NN bound as they were at ``commit`` and as they are now, timed on
    the same points under the same metric (given as the matrix M), ``repeats`` runs each,
    alternating, each in its own process (:func:`_previous.alternate_with_commit`)."""
    from _previous import alternate_with_commit

    return alternate_with_commit(commit, _PREVIOUS_SCRIPT, {"X_tr": X_tr, "y_tr": y_tr, "X": X, "y": y, "M": M},
                                 [K], repeats=repeats, tag="bench_certify")


def _previous_row(previous: tuple[list[dict], list[dict]], method: str, commit: str, r_now: np.ndarray) -> dict:
    """The row's comparison with ``commit``: the medians of its and the current package's times per
    point over the alternating runs, previous / current (at least 1 means no slower), and the
    largest relative difference of the radii (the commit's against this run's)."""
    key = "ex" if method == "exact 1-NN" else "kn"
    n = len(r_now)
    t_prev = [float(o[f"t_{key}"]) / n for o in previous[0]]
    t_cur = [float(o[f"t_{key}"]) / n for o in previous[1]]
    ratio = float(np.median(t_prev) / np.median(t_cur))
    print(f"  {method} at {commit} / now ({len(t_prev)} alternating runs each, medians): "
          f"{1e3 * np.median(t_prev):.2f} / {1e3 * np.median(t_cur):.2f} ms/pt, previous / current {ratio:.3f}",
          flush=True)
    return {"commit": commit, "s_per_pt": float(np.median(t_prev)), "current_s_per_pt": float(np.median(t_cur)),
            "runs_s_per_pt": {"previous": t_prev, "current": t_cur}, "previous_over_current_time": ratio,
            "max_rel_diff_radii": float(rel_diff(r_now, previous[0][0][f"r_{key}"]).max())}


# ------------------------------------------------------------------------------- MNIST


def mnist_part(args) -> None:
    """Child process: one MNIST measurement; prints its result as one JSON line."""
    import torch  # noqa: F401  (imported before the 'after load' reading, like the timed code)
    from robust_metric_learning import certified_radius_knn, exact_radius_1nn

    src = source_state()
    ds = load("mnist", data_home())
    if ds is None:
        print(MNIST_MARK + json.dumps({"missing": True}), flush=True)
        return
    X_tr, y_tr, X_te, y_te = ds
    X, y = test_points(X_te, y_te, args.n_eval)
    del X_te, y_te
    rss_load, peak_load = rss_now_kib(), peak_rss_kib()
    if args.mnist_part == "exact":
        radii, secs = timed(exact_radius_1nn, X_tr, y_tr, X, y, progress=False)
    else:
        radii, secs = timed(certified_radius_knn, X_tr, y_tr, X, y, n_neighbors=K, progress=False)
    peak = peak_rss_kib()
    out = {
        "s_per_pt": secs / len(X), "total_s": secs, "points": len(X),
        "rss_after_load_kib": rss_load, "peak_rss_after_load_kib": peak_load,
        "peak_rss_kib": peak, "increment_over_rss_after_load_kib": peak - rss_load,
        "clean_error": float((radii == 0).mean()),
        "median_radius_correct": float(np.median(radii[radii > 0])) if (radii > 0).any() else None,
        "source": src,
    }
    print(MNIST_MARK + json.dumps(out), flush=True)


def bench_mnist(args) -> list[dict] | None:
    rows = []
    for part, method in (("exact", "exact 1-NN"), ("bound", f"K={K} bound")):
        print(f"\n== MNIST, M = identity, {method} (fresh subprocess)", flush=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--mnist-part", part, "--n-eval", str(args.n_eval)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise RuntimeError(f"MNIST subprocess ({part}) failed with status {proc.returncode}")
        sys.stderr.write(proc.stderr)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith(MNIST_MARK)][-1]
        res = json.loads(line[len(MNIST_MARK):])
        if res.get("missing"):
            return None
        print(f"ours {method}: {1e3 * res['s_per_pt']:.2f} ms/pt; peak RSS {res['peak_rss_kib'] / 1024:.0f} MiB "
              f"(after load {res['rss_after_load_kib'] / 1024:.0f} MiB)", flush=True)
        rows.append({"dataset": "mnist", "metric": "identity", "method": method,
                     "n_train": 60000, "n_features": 784,
                     "ours_s_per_pt": res["s_per_pt"], "ours_points": res["points"], "ours_total_s": res["total_s"],
                     "baseline_s_per_pt": None, "baseline_points": 0, "ratio_same_points": None,
                     "ratio_vs_full_run": None, "memory": {k: v for k, v in res.items() if "rss" in k},
                     "clean_error": res["clean_error"], "median_radius_correct": res["median_radius_correct"],
                     "source": res["source"]})
    return rows


# -------------------------------------------------------------------------------- main


def fmt_s(v) -> str:
    if v is None:
        return "—"
    return f"{1e3 * v:.2f} ms" if v < 1 else f"{v:.2f} s"


def table(rows: list[dict]) -> str:
    head = ("| dataset | metric | method | ours s/pt (all) | ours s/pt (baseline's pts) | baseline s/pt "
            "| ratio (same pts) | ratio (vs all) | points timed (ours / baseline) | max rel diff |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        ratio = "—" if r["ratio_same_points"] is None else f"{r['ratio_same_points']:.1f}×"
        ratio_all = "—" if r["ratio_vs_full_run"] is None else f"{r['ratio_vs_full_run']:.1f}×"
        diff = r.get("max_rel_diff_vs_baseline")
        lines.append(f"| {r['dataset']} | {r['metric']} | {r['method']} | {fmt_s(r['ours_s_per_pt'])} "
                     f"| {fmt_s(r.get('ours_same_points_s_per_pt'))} | {fmt_s(r['baseline_s_per_pt'])} "
                     f"| {ratio} | {ratio_all} | {r['ours_points']} / {r['baseline_points']} "
                     f"| {'—' if diff is None else f'{diff:.1e}'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-eval", type=int, default=1000, help="test points timed for our methods")
    ap.add_argument("--n-baseline", type=int, default=50, help="test points timed for the baselines")
    ap.add_argument("--skip-mnist", action="store_true")
    ap.add_argument("--metric-seed", type=int, default=0, help="seed of the random full-rank M")
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument("--mnist-part", choices=("exact", "bound"), help=argparse.SUPPRESS)
    ap.add_argument("--previous", default=None, metavar="COMMIT",
                    help="also time the USPS rows as the package was at COMMIT, on the same points (own process)")
    ap.add_argument("--previous-repeats", type=positive_int, default=5,
                    help="runs of the old and of the current package, alternating, each in its own process")
    args = ap.parse_args(argv)
    if args.n_eval < 1 or args.n_baseline < 1:
        ap.error("--n-eval and --n-baseline must be >= 1")
    if args.mnist_part:
        mnist_part(args)
        return 0

    import torch

    home = data_home()
    if home is None:
        print("[bench_certify] no data: set RML_DATA or provide <repo>/../shared/data; nothing measured.")
        return 0
    import clarabel
    import sklearn

    import robust_metric_learning  # noqa: F401  (the code measured is what is imported now)

    src_start = source_state()
    t_start = time.perf_counter()
    env = {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
           "sklearn": sklearn.__version__, "clarabel": clarabel.__version__,
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "machine": platform.machine(), "processor": platform.processor() or platform.platform()}
    print(f"# bench_certify — torch threads {env['torch_threads']}, os.cpu_count() {env['cpu_count']}, "
          f"torch {env['torch']}, numpy {env['numpy']}, clarabel {env['clarabel']}", flush=True)
    print(f"# data home {home}; n_eval {args.n_eval}, n_baseline {args.n_baseline}", flush=True)

    failures: list[str] = []
    rows = bench_usps(args, home, failures)
    if rows is None:
        print("[bench_certify] USPS missing; nothing measured.")
        return 0
    if not args.skip_mnist:
        mn = bench_mnist(args)
        if mn is None:
            print("[bench_certify] MNIST missing; skipped.", file=sys.stderr)
        else:
            rows += mn
    total = time.perf_counter() - t_start
    src_end = source_state()
    hashes = {src_start["src_sha256"], src_end["src_sha256"]} | {r["source"]["src_sha256"] for r in rows if "source" in r}
    source = {"start": src_start, "end": src_end, "changed_during_run": len(hashes) > 1}

    print(f"\n## Certification speed (torch threads {env['torch_threads']}, os.cpu_count() {env['cpu_count']})\n")
    print(table(rows))
    for r in rows:
        if "memory" in r:
            m = r["memory"]
            print(f"\nMNIST {r['method']}: peak RSS {m['peak_rss_kib'] / 1024:.0f} MiB; RSS after loading "
                  f"{m['rss_after_load_kib'] / 1024:.0f} MiB (peak until then {m['peak_rss_after_load_kib'] / 1024:.0f} MiB); "
                  f"increment {m['increment_over_rss_after_load_kib'] / 1024:.0f} MiB", end="")
    print(f"\n\nTotal run time: {total:.1f} s")
    print(f"Library source: git {src_start['git_head'][:10]}"
          f"{' + uncommitted changes in src/' if src_start['src_modified'] else ''}, src sha256 {src_start['src_sha256']}")
    if source["changed_during_run"]:
        print("WARNING: the library source changed during the run; rows were measured on different code "
              f"(hashes {sorted(hashes)}).", file=sys.stderr)

    result = {"env": env, "args": {"n_eval": args.n_eval, "n_baseline": args.n_baseline,
                                   "skip_mnist": args.skip_mnist, "metric_seed": args.metric_seed,
                                   "test_points": "sklearn.utils.shuffle(X_test, y_test, random_state=42)[:n]",
                                   "K": K, "previous": args.previous},
              "source": source, "rows": rows, "failures": failures, "total_run_s": total}
    from robust_metric_learning._io import atomic_write_text

    atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    if failures:
        print(f"\nFAILED: {len(failures)} radius disagreement(s) between ours and a baseline:", file=sys.stderr)
        for f in failures:
            print("  " + f, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
