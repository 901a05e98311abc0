"""Fit time and 3-NN accuracy of our learners against metric-learn 0.7.0, as ratios in one run.

What it measures:

* Data: scikit-learn's digits through ``load_dataset("digits")`` (stratified 70/30 split,
  seed 0, min-max scaling fitted on the training part). The very same arrays are handed to
  metric-learn (written to an ``.npz``; the worker's SHA-256 of them is checked against ours).
* Methods: LMNN, ITML, LFDA, NCA.

  - metric-learn 0.7.0, its defaults except the seeds: ``LMNN(n_neighbors=3, random_state=0)``,
    ``ITML_Supervised(random_state=0)``, ``LFDA(k=7)``, ``NCA(random_state=0)``.
  - ours: ``robust_metric_learning.learners.{lmnn,itml,lfda,nca}``, their defaults, with
    ``random_state=0`` where the learner takes one.

* Per method and library: fit time (wall clock around ``fit`` only; if the first fit takes
  under ``--repeat-below`` = 10 s it is run twice more and the median of the 3 is reported,
  else the single run), 3-NN accuracy on the test part (``KNeighborsClassifier(3)`` on
  ``transform(X)``, computed in each library's own environment), and whether the learned
  components and the transformed data are finite and real. Failures (NaN, complex output,
  exceptions) are caught and recorded, never fatal.
* Speed ratio = metric-learn fit time / our fit time (> 1: ours is faster). Both halves of a
  method run back to back (metric-learn first), so that they see about the same machine load;
  the load average is recorded around each timing, and the process CPU time of each fit too.
* Threads: BLAS/OpenMP/torch thread counts are inherited from the environment unless
  ``--threads N`` is given. On a loaded 2-core machine (load 3-6), 2 threads made metric-learn's
  LMNN 6-9x slower (wall and CPU) than 1 thread, and ours (torch) up to ~20x slower, so the
  ratios swing widely with load; there ``--threads 1`` gives steadier numbers. State the
  setting with any ratio.

metric-learn 0.7.0 fails with scikit-learn >= 1.8, so it runs in its own virtual environment,
``benchmarks/.venv-metric-learn`` (created on first use with
``pip install "metric-learn==0.7.0" "scikit-learn<1.8" numpy scipy`` and then reused), through
``benchmarks/_metric_learn_worker.py``, one fresh process per method. If that environment
cannot be built the script says so and exits with status 2. Our learners run in the current
interpreter; one that cannot be imported is reported as missing (the metric-learn half is
still measured) and the script exits with status 3 after writing the results.

Run::

    python benchmarks/bench_vs_metric_learn.py [--methods LMNN ITML LFDA NCA] [--skip-ours] [--threads N]

It prints the versions, a Markdown table and the aims (LMNN >= 20x and ITML >= 5x faster than
metric-learn at 3-NN accuracy no lower than metric-learn's minus 0.3 points; LFDA usable where
metric-learn's is not), and writes ``benchmarks/results/vs_metric_learn.json`` atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import _metric_learn_worker as worker  # its helpers serve both sides (same directory)
from _metric_learn_worker import _data_hash, _err, _knn_acc, fit_timed

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
VENV = BENCH / ".venv-metric-learn"
WORKER = BENCH / "_metric_learn_worker.py"
RESULTS = BENCH / "results" / "vs_metric_learn.json"
PIP_REQUIREMENTS = ("metric-learn==0.7.0", "scikit-learn<1.8", "numpy", "scipy")
METHODS = ("LMNN", "ITML", "LFDA", "NCA")
OUR_MODULES = {
    "LMNN": "robust_metric_learning.learners.lmnn",
    "ITML": "robust_metric_learning.learners.itml",
    "LFDA": "robust_metric_learning.learners.lfda",
    "NCA": "robust_metric_learning.learners.nca",
}
ML_CALLS = {
    "LMNN": "LMNN(n_neighbors=3, random_state=0)",
    "ITML": "ITML_Supervised(random_state=0)",
    "LFDA": "LFDA(k=7)",
    "NCA": "NCA(random_state=0)",
}
# Aims: minimum speed ratio (metric-learn / ours) and allowed accuracy drop (fraction).
AIMS = {"LMNN": 20.0, "ITML": 5.0}
ACC_SLACK = 0.003  # 0.3 percentage points
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TORCH_NUM_THREADS")


# ------------------------------------------------------------------------------ helpers



def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"loadavg {_loadavg()}"



def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _source_fingerprint() -> dict:
    """Git HEAD, dirty files under src/, and a hash of each learner file we measure."""
    files = {}
    for method, mod in OUR_MODULES.items():
        path = REPO / "src" / Path(*mod.split(".")).with_suffix(".py")
        files[method] = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None
    pkg = REPO / "src" / "robust_metric_learning"
    h = hashlib.sha256()
    for p in sorted(pkg.rglob("*.py")):
        h.update(str(p.relative_to(pkg)).encode())
        h.update(p.read_bytes())
    dirty = _git("status", "--porcelain", "--", "src")
    return {
        "git_head": _git("rev-parse", "HEAD"),
        "dirty_src": dirty.splitlines() if dirty else [],
        "package_sha256": h.hexdigest()[:16],
        "learner_files_sha256": files,
    }


def _clean(obj):
    """JSON-safe copy: NaN/inf become None (the results file is strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj




def _summarise_warnings(messages: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    for w in messages:
        key = w[:300]
        seen[key] = seen.get(key, 0) + 1
    return [f"{w} (x{n})" if n > 1 else w for w, n in seen.items()]


# ------------------------------------------------------------------- metric-learn venv


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


_PROBE = (
    "import json, sys, metric_learn, sklearn, numpy, scipy; "
    "print(json.dumps({'python': sys.version.split()[0], 'metric_learn': metric_learn.__version__, "
    "'sklearn': sklearn.__version__, 'numpy': numpy.__version__, 'scipy': scipy.__version__}))"
)


def _probe(py: Path) -> dict | None:
    try:
        out = subprocess.run([str(py), "-c", _PROBE], capture_output=True, text=True, check=False, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    try:
        v = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    ok = v.get("metric_learn") == "0.7.0" and _version_tuple(v.get("sklearn", "99")) < (1, 8)
    return v if ok else None


def _version_tuple(s: str) -> tuple[int, ...]:
    parts = []
    for tok in s.split(".")[:2]:
        digits = "".join(ch for ch in tok if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock so that two runs do not build the environment at once (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_metric_learn_env(venv: Path) -> tuple[Path, dict]:
    """Create (once) and check the metric-learn environment; exit(2) if that fails."""
    py = _venv_python(venv)
    marker = venv / ".bench-ready"
    with _lock(venv.parent / f"{venv.name}.lock"):
        if marker.is_file() and py.exists():
            v = _probe(py)
            if v is not None:
                return py, v
            print(f"[setup] {venv} exists but fails its check; rebuilding it", flush=True)
        if venv.exists():
            shutil.rmtree(venv)
        print(f"[setup] creating {venv} and installing {' '.join(PIP_REQUIREMENTS)} ...", flush=True)
        t0 = time.perf_counter()
        steps = (
            [sys.executable, "-m", "venv", str(venv)],
            [str(py), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *PIP_REQUIREMENTS],
        )
        for cmd in steps:
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1800)
                failed = out.returncode != 0
                log = (out.stdout + out.stderr)[-4000:]
            except (OSError, subprocess.SubprocessError) as exc:
                failed, log = True, _err(exc)
            if failed:
                print(f"ERROR: could not build the metric-learn environment; command failed:\n  {' '.join(cmd)}\n"
                      f"--- output (tail) ---\n{log}", file=sys.stderr)
                shutil.rmtree(venv, ignore_errors=True)
                sys.exit(2)
        v = _probe(py)
        if v is None:
            print(f"ERROR: {venv} was built but metric-learn 0.7.0 with scikit-learn < 1.8 does not import there",
                  file=sys.stderr)
            sys.exit(2)
        marker.write_text(json.dumps(v) + "\n")
        print(f"[setup] done in {time.perf_counter() - t0:.0f} s", flush=True)
        return py, v


def run_metric_learn(py: Path, data: Path, method: str, workdir: Path, repeat_below: float,
                     timeout: float) -> dict:
    out = workdir / f"ml_{method}.json"
    cmd = [str(py), str(WORKER), str(data), method, str(out), "--repeat-below", str(repeat_below)]
    load_before = _loadavg()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout:.0f} s", "load_before": load_before}
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out.is_file():
        return {"error": f"worker exited with status {proc.returncode}",
                "stderr_tail": (proc.stderr or "")[-3000:], "load_before": load_before}
    res = json.loads(out.read_text())
    res["worker_wall_s"] = wall
    res["load_before"] = load_before
    res["load_after"] = _loadavg()
    if proc.stderr.strip():
        res["stderr_tail"] = proc.stderr[-2000:]
    return res


# ------------------------------------------------------------------------------ ours


def run_ours(method: str, X_tr, y_tr, X_te, y_te, repeat_below: float, n_repeat: int = 3) -> dict:
    res: dict = {"method": method, "module": OUR_MODULES[method]}
    try:
        mod = importlib.import_module(OUR_MODULES[method])
        cls = getattr(mod, method)
        res["module_sha256_at_import"] = hashlib.sha256(Path(mod.__file__).read_bytes()).hexdigest()[:16]
    except Exception as exc:
        res["missing"] = True
        res["import_error"] = _err(exc)
        return res

    def make():
        est = cls()
        if "random_state" in est.get_params():
            est.set_params(random_state=0)
        return est

    res["load_before"] = _loadavg()
    stats, model, caught = fit_timed(make, X_tr, y_tr, repeat_below, n_repeat)
    res.update(stats)
    res["load_after"] = _loadavg()
    if model is not None:
        res["n_iter"] = getattr(model, "n_iter_", None)
        L = np.asarray(model.components_)
        res.update(worker._matrix_report("components", L, np))
        with warnings.catch_warnings(record=True) as wlist:
            warnings.simplefilter("always")
            try:
                Z_tr, Z_te = model.transform(X_tr), model.transform(X_te)
                res.update(worker._matrix_report("transform", np.concatenate([Z_tr, Z_te]), np))
                try:
                    res["knn3_acc"] = _knn_acc(Z_tr, y_tr, Z_te, y_te)
                except Exception as exc:
                    res["knn3_error"] = _err(exc)
            except Exception as exc:
                res["transform_error"] = _err(exc)
            caught += [f"{w.category.__name__}: {w.message}" for w in wlist]
    res["warnings"] = _summarise_warnings(caught)
    return res


def ml_acc_here(ml: dict, X_tr, y_tr, X_te, y_te) -> float | None:
    """Cross-check: metric-learn's components applied here (X @ L.T), 3-NN accuracy."""
    if ml.get("components_real") is None or ml.get("components_complex") or not ml.get("components_finite"):
        return None
    L = np.asarray(ml["components_real"], dtype=np.float64)
    try:
        return _knn_acc(X_tr @ L.T, y_tr, X_te @ L.T, y_te)
    except Exception:
        return None


# ------------------------------------------------------------------------------ report


def _usable(r: dict) -> bool:
    return r.get("knn3_acc") is not None and bool(r.get("components_finite")) and not r.get("components_complex")


def _notes(label: str, r: dict) -> list[str]:
    if r.get("missing"):
        return [f"{label}: not available ({r.get('import_error')})"]
    out = []
    for key in ("error", "fit_error", "transform_error", "knn3_error"):
        if r.get(key):
            out.append(f"{label} {key.replace('_error', '').replace('error', 'worker')} failed: {r[key][:160]}")
    if "components_finite" in r:
        if not r["components_finite"]:
            rows = r.get("components_n_nonfinite_rows")
            shape = r.get("components_shape") or ["?"]
            out.append(f"{label}: L has NaN/inf ({rows} of {shape[0]} rows)" if rows is not None
                       else f"{label}: {r['components_n_nonfinite']} non-finite entries in L")
        if r.get("components_complex"):
            out.append(f"{label}: complex L (max |imag| {r['components_max_abs_imag']:.3g})")
    if r.get("knn3_acc_real_part") is not None:
        out.append(f"{label}: real part alone gives acc {r['knn3_acc_real_part']:.4f}")
    if r.get("fit_runs") == 1:
        out.append(f"{label}: 1 run")
    n_conv = sum(1 for w in r.get("warnings", []) if "Convergence" in w or "converge" in w)
    if n_conv:
        out.append(f"{label}: convergence warning")
    return out


def _first_error(r: dict) -> str | None:
    return next((r[k] for k in ("error", "fit_error", "transform_error", "knn3_error") if r.get(k)), None)


def _progress(r: dict) -> str:
    err = _first_error(r)
    return (f"fit {_fmt(r.get('fit_time_s'), '.3f')} s over {r.get('fit_runs', 0)} run(s), "
            f"acc {_fmt(r.get('knn3_acc'), '.4f')}" + (f", error: {err}" if err else ""))


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def build_rows(results: dict) -> list[dict]:
    rows = []
    for method, r in results.items():
        ml, ours = r["metric_learn"], r.get("ours") or {"missing": True, "import_error": "skipped"}
        t_ml, t_ours = ml.get("fit_time_s"), ours.get("fit_time_s")
        ratio = t_ml / t_ours if t_ml and t_ours else None
        rows.append({
            "method": method,
            "ml_fit_s": t_ml, "ours_fit_s": t_ours, "speed_ratio": ratio,
            "ml_acc": ml.get("knn3_acc"), "ours_acc": ours.get("knn3_acc"),
            "ml_usable": _usable(ml), "ours_usable": _usable(ours),
            "notes": _notes("ml", ml) + _notes("ours", ours),
        })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| method | metric-learn fit s | ours fit s | speed ratio (ml/ours) "
        "| metric-learn 3-NN acc | ours 3-NN acc | notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {_fmt(r['ml_fit_s'], '.3f')} | {_fmt(r['ours_fit_s'], '.3f')} | "
            f"{_fmt(r['speed_ratio'], '.1f')}{'x' if r['speed_ratio'] is not None else ''} | "
            f"{_fmt(r['ml_acc'], '.4f')} | {_fmt(r['ours_acc'], '.4f')} | {'; '.join(r['notes']) or '-'} |"
        )
    return "\n".join(lines)


def check_aims(rows: list[dict]) -> list[dict]:
    aims = []
    by = {r["method"]: r for r in rows}
    for method, need in AIMS.items():
        r = by.get(method)
        if r is None:
            continue
        ok = None
        detail = "not measured"
        if r["speed_ratio"] is not None and r["ml_acc"] is not None and r["ours_acc"] is not None:
            fast = r["speed_ratio"] >= need
            acc = r["ours_acc"] >= r["ml_acc"] - ACC_SLACK - 1e-12
            ok = fast and acc
            detail = (f"ratio {r['speed_ratio']:.1f}x (need >= {need:g}x: {'yes' if fast else 'NO'}); "
                      f"acc {r['ours_acc']:.4f} vs {r['ml_acc']:.4f} - 0.003 "
                      f"(delta {100 * (r['ours_acc'] - r['ml_acc']):+.2f} pts: {'yes' if acc else 'NO'})")
        aims.append({"aim": f"{method} >= {need:g}x faster, acc >= metric-learn - 0.3 pts",
                     "met": ok, "detail": detail})
    r = by.get("LFDA")
    if r is not None:
        if any(n.startswith("ours: not available") for n in r["notes"]):
            ok, detail = None, "ours missing"
        else:
            ok = r["ours_usable"]
            detail = (f"metric-learn usable: {r['ml_usable']}; ours usable: {r['ours_usable']} "
                      f"(acc {_fmt(r['ours_acc'], '.4f')})")
        aims.append({"aim": "LFDA usable (finite, real, classifies) where metric-learn's is not",
                     "met": ok, "detail": detail})
    return aims


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--skip-ours", action="store_true", help="measure the metric-learn half only")
    p.add_argument("--repeat-below", type=float, default=10.0,
                   help="fits faster than this are run 3 times and the median kept (default 10 s)")
    p.add_argument("--timeout", type=float, default=3600.0, help="per-method limit for the metric-learn worker")
    p.add_argument("--venv", type=Path, default=VENV)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--threads", type=int, default=None,
                   help="set OMP/OPENBLAS/MKL threads (both environments, torch too) to this number; by default "
                        "they are inherited. On a shared, loaded machine --threads 1 gives steadier timings")
    args = p.parse_args(argv)
    if args.threads is not None and any(os.environ.get(k) != str(args.threads) for k in THREAD_VARS):
        # Thread pools are sized when numpy/torch load: restart with the variables set.
        for k in THREAD_VARS:
            os.environ[k] = str(args.threads)
        os.execv(sys.executable, [sys.executable, str(Path(__file__).resolve()),
                                  *(sys.argv[1:] if argv is None else argv)])

    t_start = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    uptime_start = _uptime()
    print(f"[start] {started}  uptime: {uptime_start}  cpus: {os.cpu_count()}", flush=True)
    fp_start = _source_fingerprint()

    py, ml_versions = ensure_metric_learn_env(args.venv)

    import sklearn

    import robust_metric_learning as rml
    from robust_metric_learning._io import atomic_write_text
    from robust_metric_learning.datasets import load_dataset

    versions = {
        "metric_learn_env": ml_versions,
        "ours": {
            "robust_metric_learning": getattr(rml, "__version__", "?"),
            "python": platform.python_version(),
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
        },
    }
    try:
        import torch

        versions["ours"]["torch"] = torch.__version__
        versions["ours"]["torch_threads"] = torch.get_num_threads()
    except Exception:
        pass
    print(f"metric-learn {ml_versions['metric_learn']} (its scikit-learn {ml_versions['sklearn']}, "
          f"numpy {ml_versions['numpy']}, scipy {ml_versions['scipy']}, python {ml_versions['python']})")
    print(f"ours: robust_metric_learning {versions['ours']['robust_metric_learning']} "
          f"(scikit-learn {sklearn.__version__}, numpy {np.__version__}"
          + (f", torch {versions['ours']['torch']}" if "torch" in versions["ours"] else "")
          + f", python {platform.python_version()}); git HEAD {str(fp_start['git_head'])[:10]}, "
          f"{len(fp_start['dirty_src'])} uncommitted file(s) under src/", flush=True)

    X_tr, y_tr, X_te, y_te = load_dataset("digits")
    data_sha = _data_hash((X_tr, y_tr, X_te, y_te))
    print(f"digits: train {X_tr.shape}, test {X_te.shape}, data sha256 {data_sha[:12]}", flush=True)

    results: dict = {}
    missing: list[str] = []
    mismatched: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_vs_ml_") as tmp_name:
        tmp = Path(tmp_name)
        data_path = tmp / "digits.npz"
        np.savez(data_path, X_tr=X_tr, y_tr=y_tr, X_te=X_te, y_te=y_te)
        for method in args.methods:
            print(f"[{method}] metric-learn {ML_CALLS[method]} ... (load {_loadavg()})", flush=True)
            ml = run_metric_learn(py, data_path, method, tmp, args.repeat_below, args.timeout)
            if ml.get("data_sha256") not in (None, data_sha):
                mismatched.append(method)
            ml["knn3_acc_recomputed_here"] = ml_acc_here(ml, X_tr, y_tr, X_te, y_te)
            print(f"[{method}]   {_progress(ml)}", flush=True)
            entry = {"metric_learn": ml}
            if not args.skip_ours:
                print(f"[{method}] ours {OUR_MODULES[method]}.{method}() ... (load {_loadavg()})", flush=True)
                ours = run_ours(method, X_tr, y_tr, X_te, y_te, args.repeat_below)
                if ours.get("missing"):
                    missing.append(method)
                    print(f"[{method}]   not available: {ours['import_error']}", flush=True)
                else:
                    print(f"[{method}]   {_progress(ours)}", flush=True)
                entry["ours"] = ours
            results[method] = entry

    rows = build_rows(results)
    aims = [] if args.skip_ours else check_aims(rows)
    fp_end = _source_fingerprint()
    elapsed = time.perf_counter() - t_start
    uptime_end = _uptime()

    print()
    print(markdown(rows))
    print("\nCPU seconds per fit (process time, all threads; less sensitive to machine load):")
    for method, e in results.items():
        c_ml = e["metric_learn"].get("fit_cpu_median_s")
        c_ours = e.get("ours", {}).get("fit_cpu_median_s")
        ratio = f"{c_ml / c_ours:.1f}x" if c_ml and c_ours else "n/a"
        print(f"  {method}: metric-learn {_fmt(c_ml, '.2f')}, ours {_fmt(c_ours, '.2f')}, ratio {ratio}")
    print()
    for a in aims:
        flag = {True: "MET", False: "NOT MET", None: "n/a"}[a["met"]]
        print(f"- aim: {a['aim']}: {flag} -- {a['detail']}")
    print(f"\nrun time {elapsed:.0f} s; uptime at start: {uptime_start}; at end: {uptime_end}")
    # What was measured is the code as imported; warn if a learner file differs from it now.
    stale = [m for m, e in results.items() if e.get("ours", {}).get("module_sha256_at_import")
             not in (None, fp_end["learner_files_sha256"][m])]
    if stale:
        print(f"WARNING: learner file(s) of {', '.join(stale)} changed after being imported and measured; "
              "the numbers are those of the imported version (hash in the JSON)", file=sys.stderr)
    elif fp_end != fp_start and not args.skip_ours:
        print("note: the library source changed while the script ran, but every measured learner was "
              "imported in its final form (hashes in the JSON)", file=sys.stderr)
    if mismatched:
        print(f"WARNING: the metric-learn worker saw different data for {mismatched}", file=sys.stderr)

    # Components are large and already summarised; keep them out of the results file.
    for entry in results.values():
        for key in ("components_real", "components_imag"):
            entry["metric_learn"].pop(key, None)
    payload = {
        "benchmark": "vs_metric_learn",
        "started_utc": started,
        "run_time_s": elapsed,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "uptime_start": uptime_start, "uptime_end": uptime_end,
                    "thread_env": {k: os.environ.get(k) for k in THREAD_VARS}},
        "versions": versions,
        "source": {"start": fp_start, "end": fp_end, "changed_during_run": fp_end != fp_start,
                   "measured_learner_changed_after_import": stale},
        "data": {"name": "digits", "train_shape": list(X_tr.shape), "test_shape": list(X_te.shape),
                 "sha256": data_sha, "worker_saw_same_data": not mismatched},
        "protocol": {"repeat_below_s": args.repeat_below, "n_repeat": 3, "timing": "wall clock around fit only",
                     "accuracy": "KNeighborsClassifier(3) on transform(X), test part, in each environment",
                     "metric_learn_calls": {m: ML_CALLS[m] for m in args.methods},
                     "speed_ratio": "metric-learn fit s / ours fit s"},
        "table": rows,
        "aims": aims,
        "missing_ours": missing,
        "results": results,
    }
    atomic_write_text(args.out, json.dumps(_clean(payload), indent=2, allow_nan=False) + "\n")
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")
    if mismatched:
        return 1
    if missing:
        print(f"our learner(s) not available: {', '.join(missing)}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
