"""The ``rml`` command line: ``rml certify``, ``rml reproduce`` and ``rml datasets``."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from .datasets import DATASET_NAMES
    from .experiments import EXPERIMENTS

    p = argparse.ArgumentParser(prog="rml", description="Robust metric learning: certify K-NN classifiers, reproduce experiments.")
    p.add_argument("--version", action="version", version=f"rml (robust-metric-learning) {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("certify", help="robustness radii and robust error of Mahalanobis K-NN")
    c.add_argument("--dataset", default="digits", choices=DATASET_NAMES, help="dataset name (default: digits)")
    c.add_argument("--metric", default="euclidean",
                   help="'euclidean' or a metric file (.npz with 'components' or 'mahalanobis', or .npy)")
    c.add_argument("--k", type=int, nargs="+", default=[1, 11], help="odd K values (default: 1 11)")
    c.add_argument("--method", choices=["auto", "exact", "bound"], default="auto",
                   help="auto: exact radius for K=1, certified bound otherwise")
    c.add_argument("--eps", type=float, nargs="+", default=None, help="l2 budgets (default: per dataset)")
    c.add_argument("--n-eval", type=int, default=1000, help="test points evaluated (default: 1000)")
    c.add_argument("--seed", type=int, default=42, help="seed of the test-set shuffle (default: 42)")
    c.add_argument("--n-jobs", type=int, default=None, help="joblib workers")
    c.add_argument("--data-home", default=None, help="data folder (default: $RML_DATA, then a user cache)")
    c.add_argument("--out", default=None, help="folder for certify.json and robust_error.png")
    c.add_argument("--quiet", action="store_true", help="no progress bar")

    r = sub.add_parser("reproduce", help="rerun a published experiment (cached, resumable)")
    r.add_argument("name", choices=list(EXPERIMENTS),
                   help="arml: the ARML experiments; lmnn-pl: the perturbation-loss protocol (LMNN vs LMNN-PL); "
                        "dml: robust deep metric learning (natural, naive, EST, ours) on MNIST/Fashion-MNIST; "
                        "robrank: RobRank's ranking-attack protocol (natural, EST, ACT; HM on request); "
                        "smoothing: certified retrieval by randomized smoothing (noise-trained nets, sigma 0.12, "
                        "0.25, 0.5)")
    r.add_argument("--datasets", nargs="+", default=None, choices=DATASET_NAMES,
                   help="default: arml, every Mahalanobis dataset whose files are present (digits always); "
                        "lmnn-pl, wine, breast_cancer, iris and splice if present; dml, mnist and fashion-mnist "
                        "if present, else digits")
    r.add_argument("--methods", nargs="+", default=None,
                   help="default: all of the experiment's methods (dml: the defences natural naive est ours; "
                        "on request: ours-sn, a spectrally normalised model; ours-positive, ours-negative, ours "
                        "perturbing that role instead of the anchor; act, hm, the anti-collapse and hardness-manipulation "
                        "defences; robrank: natural est act, hm on request; smoothing: sigma0.12 sigma0.25 sigma0.5)")
    r.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="arml: learner seeds (default: 0); lmnn-pl: split seeds (default: 0 ... 19); dml, "
                        "robrank, smoothing: training and data seeds (default: 0)")
    r.add_argument("--n-eval", type=int, default=None, help="arml: test points evaluated (default: each dataset's, 1000 unless experiments/arml.py "
                        "states otherwise); robrank: test images used, as queries and as the gallery "
                        "(default: all, as published); smoothing: queries certified (default: all)")
    r.add_argument("--n-jobs", type=int, default=None,
                   help="joblib workers (arml, lmnn-pl; the torch experiments run in one process)")
    r.add_argument("--profile", default=None,
                   help="robrank only: full, cpu (default), cpu+images, cpu+epochs, cpu+steps (training budget)")
    r.add_argument("--data-home", default=None)
    r.add_argument("--out", default=None, help="output folder (default: results/NAME)")

    d = sub.add_parser("datasets", help="list datasets and whether their files are present")
    d.add_argument("--data-home", default=None)
    d.add_argument("--download", nargs="+", default=None, metavar="NAME", help="download these datasets")
    d.add_argument("--base-url", default=None, help="mirror with the data-home layout")
    return p


def _read_metric_arg(value: str):
    """``--metric`` read as stored (format checked): ``(array or "euclidean", entry, metadata)``."""
    if value == "euclidean":
        return "euclidean", None, {}
    from ._io import read_metric

    return read_metric(value)


def _check_out(value: str | None, *, name: str = "--out") -> Path | None:
    """Make sure ``value`` is a folder we can write into (created if missing) before any computing.

    A probe file is written and removed; any failure is a ValueError naming ``name``.
    """
    import tempfile

    if value is None:
        return None
    if not str(value).strip():
        raise ValueError(f"{name} must be a folder path, got an empty string")
    out = Path(value)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{name} {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".rml-write-probe-", delete=True) as f:
            f.write(b"probe")
            f.flush()
    except OSError as exc:
        raise ValueError(f"{name} {out} cannot be written: {exc.strerror or exc} "
                         f"({type(exc).__name__})") from None
    return out


def _markdown_table(rows: list[dict], eps: np.ndarray) -> str:
    head = "| K | method | clean error | " + " | ".join(f"ε={e:g}" for e in eps) + " | s/point |"
    sep = "|---|---|---|" + "---|" * len(eps) + "---|"
    lines = [head, sep]
    for r in rows:
        errs = " | ".join(f"{v:.3f}" for v in r["robust_error"])
        lines.append(f"| {r['k']} | {r['method']} | {r['clean_error']:.3f} | {errs} | {r['seconds_per_point']:.4f} |")
    return "\n".join(lines)


def cmd_certify(args: argparse.Namespace) -> int:
    from sklearn.utils import shuffle

    from ._io import atomic_write_text
    from ._validation import check_eps, check_metric_array, check_odd_k, check_seed
    from .certify import plot_robust_error, robust_error_curve
    from .datasets import load_dataset
    from .experiments.arml import eps_grid
    from .neighbors import MahalanobisKNN

    ks = [check_odd_k(k, name="--k") for k in args.k]
    if args.n_eval < 1:
        raise ValueError(f"--n-eval must be >= 1, got {args.n_eval}")
    check_seed(args.seed, name="--seed")
    if args.n_jobs == 0:
        raise ValueError("--n-jobs must be a non-zero integer (-1: all cores), got 0")
    eps = check_eps(args.eps if args.eps is not None else eps_grid(args.dataset), name="--eps")
    eps = np.unique(np.concatenate([[0.0], eps]))
    for k in ks:
        if args.method == "exact" and k != 1:
            raise ValueError(f"--method exact is for K=1 only; got --k {k}")
    out = _check_out(args.out)  # before any computing: a bad --out fails now, not after the work
    raw, entry, meta = _read_metric_arg(args.metric)
    X_train, y_train, X_test, y_test = load_dataset(args.dataset, data_home=args.data_home)
    metric = raw if entry is None else check_metric_array(raw, entry=entry, source=args.metric,
                                                          n_features=X_train.shape[1])
    X_eval, y_eval = shuffle(X_test, y_test, random_state=args.seed)
    X_eval, y_eval = X_eval[: args.n_eval], y_eval[: args.n_eval]
    progress = False if args.quiet else None

    rows, curves = [], {}
    for k in ks:
        method = ("exact" if k == 1 else "bound") if args.method == "auto" else args.method
        knn = MahalanobisKNN(k, metric=metric, n_jobs=args.n_jobs).fit(X_train, y_train)
        t0 = time.perf_counter()
        radii = knn.certify(X_eval, y_eval, method=method, progress=progress)
        seconds = time.perf_counter() - t0
        errors = robust_error_curve(radii, eps)
        label = f"K={k} ({method})"
        curves[label] = errors
        rows.append({"k": k, "method": method, "clean_error": float(errors[0]),
                     "robust_error": errors[1:].tolist(), "seconds": seconds,
                     "seconds_per_point": seconds / len(radii), "radii": radii.tolist()})

    print(f"rml certify: {args.dataset}, metric {args.metric}, {len(y_eval)} test points (seed {args.seed})")
    print(_markdown_table(rows, eps[1:]))
    if out is not None:
        settings = {"dataset": args.dataset, "metric": args.metric, "metric_metadata": meta, "k": ks,
                    "method": args.method, "eps": eps.tolist(), "n_eval": len(y_eval), "seed": args.seed,
                    "n_train": len(y_train), "n_features": X_train.shape[1], "n_jobs": args.n_jobs}
        result = {"settings": settings, "results": rows}
        atomic_write_text(out / "certify.json", json.dumps(result, indent=1) + "\n")
        plot_robust_error(curves, eps, path=out / "robust_error.png",
                          title=f"{args.dataset}, metric {Path(args.metric).name}")
        print(f"\nwrote {out / 'certify.json'} and {out / 'robust_error.png'}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .experiments import reproduce

    out = _check_out(str(args.out if args.out is not None else Path("results") / args.name))
    t0 = time.perf_counter()
    reproduce(args.name, out, datasets=args.datasets, methods=args.methods, seeds=args.seeds,
              n_eval=args.n_eval, n_jobs=args.n_jobs, data_home=args.data_home, profile=args.profile)
    print((out / "report.md").read_text())
    print(f"wrote {out / 'report.md'}, {out / 'results.json'} and the plots in "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from urllib.parse import urlparse

    from .datasets import dataset_status, download_dataset, get_data_home

    if args.data_home is not None and Path(args.data_home).exists() and not Path(args.data_home).is_dir():
        raise ValueError(f"--data-home {args.data_home} exists and is not a folder")
    if args.base_url is not None and urlparse(args.base_url).scheme.lower() not in ("http", "https", "ftp", "file"):
        raise ValueError(f"--base-url must be a URL (http://, https://, ftp:// or file://), got {args.base_url!r}")
    if args.download:
        for name in args.download:
            got = download_dataset(name, data_home=args.data_home, base_url=args.base_url)
            print(f"{name}: downloaded {len(got)} file(s)")
    status = dataset_status(data_home=args.data_home)
    print(f"data home: {get_data_home(args.data_home)}")
    print("| dataset | files | available |")
    print("|---|---|---|")
    for name, st in status.items():
        if st["bundled"]:
            print(f"| {name} | bundled with scikit-learn | yes |")
            continue
        files = ", ".join(sorted({str(Path(p).parent.name) + "/" + Path(p).name for p in st["files"]}))
        avail = "yes" if st["available"] else f"no, {len(st['missing'])} missing (rml datasets --download {name})"
        print(f"| {name} | {files} | {avail} |")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rml``."""
    args = _parser().parse_args(argv)
    try:
        commands = {"certify": cmd_certify, "reproduce": cmd_reproduce, "datasets": cmd_datasets}
        with warnings.catch_warnings():
            # joblib's loky restarts a worker whose memory grew past its leak threshold (ours hold
            # the training set) and reports it with this generic warning; results are unaffected
            warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given to the executor",
                                    category=UserWarning)
            return commands[args.command](args)
    except BrokenPipeError:  # output piped into a reader that stopped early (e.g. `| head`)
        sys.stderr.close()
        return 0
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"rml {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
