"""Worker for ``bench_vs_metric_learn.py``: fits one metric-learn 0.7.0 learner.

Runs inside the benchmark's own virtual environment (metric-learn 0.7.0 with
scikit-learn < 1.8), never in the project's interpreter: it imports nothing from
``robust_metric_learning``.

Usage::

    python _metric_learn_worker.py DATA.npz METHOD OUT.json [--repeat-below SECONDS]

``DATA.npz`` holds ``X_tr, y_tr, X_te, y_te``. METHOD is one of LMNN, ITML, LFDA,
NCA. The fit is timed (wall clock, ``fit`` only); if the first fit takes less than
``--repeat-below`` seconds (default 10) it is repeated twice more and the median
is reported. The first fit's model gives the components and the 3-NN test
accuracy (``KNeighborsClassifier(3)`` on ``transform(X)``). Any failure (in fit,
transform or the classifier, e.g. NaN or complex output) is caught and recorded.
The JSON written to OUT.json holds the components (real and imaginary parts,
NaN/inf written as the JSON extensions Python reads back), the fit times, the
accuracy, finiteness/realness checks, warnings and the environment's versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
import warnings


def _versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in ("metric_learn", "sklearn", "numpy", "scipy"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception as exc:  # pragma: no cover - reported, not raised
            out[name] = f"import failed: {exc!r}"
    return out


def _make(method: str):
    import metric_learn as ml

    # metric-learn 0.7.0 defaults, seeds fixed where a seed is taken.
    if method == "LMNN":
        return ml.LMNN(n_neighbors=3, random_state=0)
    if method == "ITML":
        return ml.ITML_Supervised(random_state=0)
    if method == "LFDA":
        return ml.LFDA(k=7)
    if method == "NCA":
        return ml.NCA(random_state=0)
    raise ValueError(f"unknown method {method!r}")


def _data_hash(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _matrix_report(name: str, A, np) -> dict:
    A = np.asarray(A)
    rep = {f"{name}_shape": list(A.shape), f"{name}_dtype": str(A.dtype)}
    rep[f"{name}_complex"] = bool(np.iscomplexobj(A))
    fin = np.isfinite(A)
    rep[f"{name}_max_abs_imag"] = float(np.max(np.abs(A.imag[fin]))) if np.iscomplexobj(A) and fin.any() else 0.0
    rep[f"{name}_finite"] = bool(fin.all())
    rep[f"{name}_n_nonfinite"] = int((~fin).sum())
    if A.ndim == 2:
        rep[f"{name}_n_nonfinite_rows"] = int((~fin.all(axis=1)).sum())
        rep[f"{name}_n_nonfinite_cols"] = int((~fin.all(axis=0)).sum())
    return rep


def _knn_acc(Z_tr, y_tr, Z_te, y_te) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(3).fit(Z_tr, y_tr)
    return float((clf.predict(Z_te) == y_te).mean())


def _err(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines() or [""]
    msg = lines[0] + (" [...]" if len(lines) > 1 else "")  # some messages embed whole arrays
    return f"{type(exc).__name__}: {msg}"[:300]


def fit_timed(make, X_tr, y_tr, repeat_below: float, n_repeat: int):
    """Fit ``make()`` on the data, again up to ``n_repeat`` times in all when the first fit
    took under ``repeat_below`` seconds. Shared with bench_vs_metric_learn.py, so both sides
    are timed the same way. Returns ``(stats, first fitted model or None, warnings)``."""
    import warnings as _w

    import numpy as np

    stats: dict = {}
    times: list[float] = []
    cpu: list[float] = []  # process CPU seconds (all threads) of each fit
    model = None
    with _w.catch_warnings(record=True) as wlist:
        _w.simplefilter("always")
        try:
            est = make()
            stats["params"] = {k: repr(v) for k, v in est.get_params().items()}
            for run in range(n_repeat):
                if run and times[0] >= repeat_below:
                    break
                e = est if run == 0 else make()
                t0, c0 = time.perf_counter(), time.process_time()
                e.fit(X_tr, y_tr)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                if run == 0:
                    model = est
        except Exception as exc:
            stats["fit_error"] = _err(exc)
            stats["fit_traceback"] = traceback.format_exc()[-3000:]
        caught = [f"{w.category.__name__}: {w.message}" for w in wlist]
    stats["fit_times_s"] = times
    stats["fit_time_s"] = float(np.median(times)) if times else None
    stats["fit_runs"] = len(times)
    stats["fit_cpu_s"] = cpu
    stats["fit_cpu_median_s"] = float(np.median(cpu)) if cpu else None
    return stats, model, caught


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("method")
    p.add_argument("out")
    p.add_argument("--repeat-below", type=float, default=10.0)
    p.add_argument("--n-repeat", type=int, default=3)
    args = p.parse_args(argv)

    import numpy as np

    res: dict = {"method": args.method, "versions": _versions(), "pid": os.getpid()}
    with np.load(args.data, allow_pickle=False) as d:
        X_tr, y_tr, X_te, y_te = (d[k] for k in ("X_tr", "y_tr", "X_te", "y_te"))
    res["data_sha256"] = _data_hash((X_tr, y_tr, X_te, y_te))
    res["shapes"] = {"X_tr": list(X_tr.shape), "X_te": list(X_te.shape)}

    stats, model, caught = fit_timed(lambda: _make(args.method), X_tr, y_tr, args.repeat_below, args.n_repeat)
    res.update(stats)

    if model is not None:
        L = np.asarray(model.components_)
        res.update(_matrix_report("components", L, np))
        res["components_real"] = L.real.tolist()
        res["components_imag"] = L.imag.tolist() if np.iscomplexobj(L) else None
        with warnings.catch_warnings(record=True) as wlist:
            warnings.simplefilter("always")
            try:
                Z_tr = model.transform(X_tr)
                Z_te = model.transform(X_te)
                res.update(_matrix_report("transform", np.concatenate([Z_tr, Z_te]), np))
                try:
                    res["knn3_acc"] = _knn_acc(Z_tr, y_tr, Z_te, y_te)
                except Exception as exc:
                    res["knn3_error"] = _err(exc)
                    # Informative only: what the real part alone would give, where it is finite.
                    if np.iscomplexobj(Z_tr) and np.isfinite(Z_tr).all() and np.isfinite(Z_te).all():
                        try:
                            res["knn3_acc_real_part"] = _knn_acc(Z_tr.real, y_tr, Z_te.real, y_te)
                        except Exception as exc2:
                            res["knn3_real_part_error"] = _err(exc2)
            except Exception as exc:
                res["transform_error"] = _err(exc)
            caught += [f"{w.category.__name__}: {w.message}" for w in wlist]
    # Unique warnings, in order, shortened.
    seen: dict[str, int] = {}
    for w in caught:
        key = w[:300]
        seen[key] = seen.get(key, 0) + 1
    res["warnings"] = [f"{w} (x{n})" if n > 1 else w for w, n in seen.items()]

    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(res, f)  # NaN/inf allowed: read back by Python's json
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
