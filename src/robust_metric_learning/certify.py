"""Robustness radii of Mahalanobis K-NN classifiers.

A test point's **radius** is 0 where the classifier is already wrong on it; otherwise the exact
minimal l2 perturbation that changes its prediction (1-NN), a lower bound on it (certified,
K-NN), or the norm of a perturbation an attack found (empirical; +inf where the attack failed).
The **robust error** at ``eps`` is the fraction of points whose radius is at most ``eps``: at
``eps = 0`` the clean error (a certified bound can add correct points whose bound is 0), and
certified >= true >= empirical at every ``eps``. The margin formula behind every
radius lives in :mod:`robust_metric_learning.margin`.

- :func:`exact_radius_1nn`: the exact minimal l2 perturbation that changes a 1-NN prediction.
  For each other-class training point ``x_j`` it is the projection of ``x`` onto the
  polyhedron where ``x_j`` beats every same-class point; negatives are screened by the
  margin bound and each projection is solved by constraint generation over a small
  dual non-negative QP (only a few constraints are active at the optimum).
- :func:`certified_radius_knn`: the K-NN lower bound
  ``s-th smallest over negatives of (s-th largest over positives of [margin]_+)``,
  ``s = (K+1)//2``, computed exactly with pruning and per-class shared pair norms.
- :func:`robust_error_curve`, :func:`plot_robust_error`.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from joblib import Parallel, delayed

from ._geometry import (
    ClassSplit,
    KNNGeometry,
    class_split,
    clear_split_cache,
    fit_geometry,
    tied_margins,
)
from ._parallel import progress_bar, threads_per_worker
from ._solver import dual_active_set, least_distance
from ._validation import (
    Interval,
    check_array_2d,
    check_eps,
    check_labels,
    check_metric_scale,
    check_n_features,
    check_odd_k,
    check_params,
)
from .margin import DEFAULT_MEMORY_BUDGET

__all__ = [
    "exact_radius_1nn",
    "certified_radius_knn",
    "robust_error_curve",
    "plot_robust_error",
]

#: Relative safety factor applied to screening bounds (guards pruning against rounding).
_SCREEN_SAFETY = 1.0 - 1e-9


# ------------------------------------------------------------------- exact 1-NN radius


def _project_negative(split: ClassSplit, j: int, dP: np.ndarray, d_j: float, unit_norm: np.ndarray,
                      scale: float, tol: float, start: np.ndarray) -> np.ndarray:
    """Minimal ``delta`` with ``x + delta`` at least as close to negative ``j`` as to every positive.

    Constraints ``a_i^T delta <= b_i`` with ``a_i = 2 M (x_i - x_j) / ||.||`` (unit rows) and
    ``b_i = (d_M(x, x_i) - d_M(x, x_j)) / ||2 M (x_i - x_j)||`` (= minus the margin).
    Constraint generation: solve on a working set, add the most violated, repeat.
    """
    geo = split.geo
    mx_j = geo.MX[j]
    anorm = 2.0 * unit_norm
    safe = np.where(anorm > 0, anorm, 1.0)
    bhat = (dP - d_j) / safe
    zero = anorm <= 0  # tied under M with a later positive: the index rule gives x_j the tie
    bhat[zero] = np.inf
    # start from the few constraints with the largest margin (most binding in isolation)
    W = list(np.argsort(bhat)[: min(3, bhat.size)])
    lam = np.zeros(len(W))
    thresh = tol * scale
    for _ in range(200):
        Wi = np.asarray(W)
        AW = 2.0 * (split.MXP[Wi] - mx_j) / safe[Wi, None]
        G = AW @ AW.T
        lam, ok = dual_active_set(G, bhat[Wi], lam, thresh)
        delta = -(AW.T @ lam)
        slack = bhat - 2.0 * (split.MXP @ delta - mx_j @ delta) / safe
        slack[zero] = np.inf
        if not ok or slack[Wi].min() < -thresh:
            # x_j itself (delta = x_j - x) meets every constraint: the region is never empty
            got = least_distance(AW, bhat[Wi], tol=thresh, start=start)
            if got is None:  # x_j meets every constraint, so this is a numerical failure
                raise RuntimeError(f"exact 1-NN projection onto negative {j}: the least-distance solver "
                                   f"found no point although x_j itself is one ({Wi.size} constraints)")
            delta, lam = got
            slack = bhat - 2.0 * (split.MXP @ delta - mx_j @ delta) / safe
            slack[zero] = np.inf
        slack[Wi] = np.inf
        worst = np.argsort(slack)[:5]
        worst = worst[slack[worst] < -thresh]
        if worst.size == 0:
            return delta
        W.extend(int(w) for w in worst)
        lam = np.concatenate([lam, np.zeros(worst.size)])
    raise RuntimeError("exact 1-NN projection did not converge in 200 constraint-generation rounds")


def _exact_point(split: ClassSplit, d: np.ndarray, x: np.ndarray, n_screen: int, tol: float,
                 batch: int = 16) -> tuple[float, np.ndarray]:
    """Exact 1-NN radius of one correctly classified point, and its minimal perturbation."""
    P, N, geo = split.P, split.N, split.geo
    dP, dN = d[P], d[N]
    m = min(n_screen, P.size)
    S = np.argpartition(dP, m - 1)[:m]
    lb = tied_margins(dP[S], dN, split.norm_rows(S), P[S], N).clip(min=0.0).max(0)
    order = np.argsort(lb, kind="stable")
    best, best_delta = np.inf, None
    xc = x - geo.mean
    for start in range(0, N.size, batch):
        cols = order[start:start + batch]
        if lb[cols[0]] * _SCREEN_SAFETY >= best:
            break
        norms = split.norm_cols(cols)
        full = tied_margins(dP, dN[cols], norms, P, N[cols]).max(0)
        for t, col in enumerate(cols):
            if lb[col] * _SCREEN_SAFETY >= best:
                break
            if full[t] * _SCREEN_SAFETY >= best:
                continue  # (inf: tied with an earlier positive, x_j can never be the nearest)
            j = N[col]
            scale = float(np.linalg.norm(geo.X[j] - xc))
            delta = _project_negative(split, j, dP, dN[col], norms[:, t], scale, tol, geo.X[j] - xc)
            r = float(np.linalg.norm(delta))
            if r < best:
                best, best_delta = r, delta
    return best, best_delta


# ------------------------------------------------------------------------ K-NN bound


def _bound_point(split: ClassSplit, d: np.ndarray, s: int, n_screen: int, batch: int = 64) -> float:
    """``s``-th smallest over negatives of the ``s``-th largest positive margin (clamped at 0)."""
    P, N = split.P, split.N
    dP, dN = d[P], d[N]
    m = min(P.size, max(n_screen, 4 * s))
    S = np.argpartition(dP, m - 1)[:m]
    mS = tied_margins(dP[S], dN, split.norm_rows(S), P[S], N).clip(min=0.0)
    # s-th largest over a subset of positives <= s-th largest over all: a lower bound per negative
    lb = -np.partition(-mS, s - 1, axis=0)[s - 1]
    order = np.argsort(lb, kind="stable")
    found = np.empty(0)
    for start in range(0, N.size, batch):
        cols = order[start:start + batch]
        if found.size >= s and np.partition(found, s - 1)[s - 1] <= lb[cols[0]]:
            break
        mP = tied_margins(dP, dN[cols], split.norm_cols(cols), P, N[cols]).clip(min=0.0)
        found = np.concatenate([found, -np.partition(-mP, s - 1, axis=0)[s - 1]])
    return float(np.partition(found, s - 1)[s - 1])


# ------------------------------------------------------------------------- driver


def _run_chunk(geo: KNNGeometry, c: int, Xq: np.ndarray, task: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """Radii (and perturbations) of test points ``Xq``, all predicted correctly as class ``c``."""
    torch.set_num_threads(max(1, task["threads"]))
    split = class_split(geo, c)
    D = geo.sq_dist(Xq)
    radii = np.empty(len(Xq))
    deltas = np.zeros_like(Xq) if task["return_adversarial"] else None
    for r in range(len(Xq)):
        if task["method"] == "exact":
            radii[r], delta = _exact_point(split, D[r], Xq[r], task["n_screen"], task["tol"])
            if deltas is not None and delta is not None:
                deltas[r] = delta
        else:
            radii[r] = _bound_point(split, D[r], task["s"], task["n_screen"])
    return radii, deltas


def _training(X_train, y_train, metric, memory_budget) -> KNNGeometry:
    check_params("the certify functions", {"memory_budget": memory_budget},
                 {"memory_budget": [Interval(Integral, 1, None)]})  # bytes
    geo, _ = fit_geometry(X_train, y_train, metric, n_neighbors=1, memory_budget=int(memory_budget),
                          name="X_train", y_name="y_train", what="certification", fit_learner=False)
    return geo


_RADII_CONSTRAINTS = {
    "n_jobs": [None, Integral],
    "progress": [None, bool],
    "return_adversarial": [bool],
    "tol": [None, Interval(Real, 0, 1, closed="left")],
    "n_screen": [None, Interval(Integral, 1, None)],
    "chunk_size": [Interval(Integral, 1, None)],
}


def geometry_radii(geo: KNNGeometry, X, y, *, method: str, k: int = 1, n_jobs: int | None = None,
                   progress: bool | None = None, return_adversarial: bool = False, tol: float | None = None,
                   n_screen: int | None = None, chunk_size: int = 64, owner: str = "geometry_radii"):
    """Radii of the points ``X`` (true labels ``y``) against a built geometry: ``method``
    "exact" (1-NN; ``tol`` 1e-10 and ``n_screen`` 16 by default) or "bound" (odd ``k``;
    ``n_screen`` 32). With ``return_adversarial`` (exact only), also ``X + delta``. The one
    path of :func:`exact_radius_1nn`, :func:`certified_radius_knn` and ``MahalanobisKNN.certify``."""
    if method not in ("exact", "bound"):
        raise ValueError(f"method must be 'exact' or 'bound', got {method!r}")
    check_params(owner, {"n_jobs": n_jobs, "progress": progress, "return_adversarial": return_adversarial, "tol": tol,
                         "n_screen": n_screen, "chunk_size": chunk_size}, _RADII_CONSTRAINTS)
    if return_adversarial and method != "exact":
        raise ValueError("return_adversarial=True needs method='exact'")
    X, y_codes = check_queries(geo, X, y, k)
    exact = method == "exact"
    radii, deltas = certify_geometry(
        geo, X, y_codes, k=k, method=method, n_jobs=n_jobs, progress=progress, return_adversarial=return_adversarial,
        n_screen=(16 if exact else 32) if n_screen is None else n_screen,
        tol=(1e-10 if exact else 0.0) if tol is None else tol, chunk_size=chunk_size)
    return (radii, X + deltas) if return_adversarial else radii


def check_queries(geo: KNNGeometry, X, y, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated query rows and their class codes (-1: a label the training set lacks)."""
    X = check_array_2d(X, name="X")
    check_n_features(X, geo.n_features, name="X", what="X_train has")
    y_codes = geo.codes_of(check_labels(y, n_samples=X.shape[0], name="y"), against="y_train has")
    if n_neighbors > geo.counts.min():
        small = geo.classes[geo.counts.argmin()].tolist()
        raise ValueError(
            f"n_neighbors={n_neighbors} is larger than the smallest class of y_train "
            f"(label {small!r} has {geo.counts.min()} points)"
        )
    check_metric_scale(X, geo.L, name="X")
    return X, y_codes


def certify_geometry(geo: KNNGeometry, X: np.ndarray, y_codes: np.ndarray, *, k: int, method: str, n_jobs,
                     progress, return_adversarial: bool, n_screen: int, tol: float, chunk_size: int):
    """Radii (and with ``return_adversarial`` the perturbations) of validated query rows ``X``
    with class codes ``y_codes`` against a built geometry: ``method`` "exact" (``k = 1``) or
    "bound" (odd ``k``). The engine of :func:`exact_radius_1nn`, :func:`certified_radius_knn`,
    ``MahalanobisKNN.certify`` and ``ExactAttack``."""
    pred = geo.predict_codes(X, k)
    geo.prepare()
    radii = np.zeros(len(X))
    deltas = np.zeros_like(X) if return_adversarial else None
    correct = pred == y_codes
    tasks = []
    for c in range(geo.n_classes):
        idx = np.flatnonzero(correct & (pred == c))
        for start in range(0, idx.size, chunk_size):
            tasks.append((c, idx[start:start + chunk_size]))
    threads = threads_per_worker(n_jobs)
    task = {"method": method, "s": (k + 1) // 2, "n_screen": n_screen, "tol": tol,
            "return_adversarial": return_adversarial, "threads": threads}
    jobs = (delayed(_run_chunk)(geo, c, X[idx], task) for c, idx in tasks)
    prev_threads = torch.get_num_threads()
    try:
        with progress_bar(progress, int(correct.sum()), f"certify ({method}, K={k})") as bar:
            results = Parallel(n_jobs=n_jobs, return_as="generator")(jobs)
            for (_, idx), (r, dl) in zip(tasks, results):
                radii[idx] = r
                if deltas is not None:
                    deltas[idx] = dl
                bar.update(idx.size)
    finally:
        torch.set_num_threads(prev_threads)
        clear_split_cache()  # free the last class's cached pair norms
    return radii, deltas


def exact_radius_1nn(X_train, y_train, X, y, *, metric: Any = "euclidean", return_adversarial: bool = False,
                     n_jobs: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                     progress: bool | None = None, tol: float = 1e-10, n_screen: int = 16,
                     chunk_size: int = 64):
    """Exact minimal l2 perturbation that changes the 1-NN prediction under ``M``.

    Parameters
    ----------
    X_train, y_train : array-like of shape (n, d) and (n,)
        The 1-NN classifier's training set (any labels).
    X, y : array-like of shape (m, d) and (m,)
        Points to certify and their true labels.
    metric : "euclidean", array of shape (d, d) (M), array of shape (r, d) (L), or fitted learner
    return_adversarial : bool, default=False
        Also return ``X + delta``: points on the decision boundary (for a radius of 0, the
        point itself).
    n_jobs : int, default=None
        Parallel workers through joblib (any backend, Dask included).
    memory_budget : int, default=512 MiB
        Bytes allowed for one cached block (pair norms of one class, a distance block).
    progress : bool, default=None
        Show a progress bar; None shows it on a terminal only.
    tol : float, default=1e-10
        Constraint violation allowed at the optimum, relative to ``||x - x_j||``; the radius
        returned is the exact optimum of the working-set QP, so it never exceeds the true radius
        by more than this relative amount.
    n_screen : int, default=16
        Nearest positives used by the cheap screening bound.
    chunk_size : int, default=64
        Test points per parallel task.

    Returns
    -------
    radii : ndarray of shape (m,)
        l2 norm of the minimal perturbation (0 where 1-NN is already wrong; inf where no
        perturbation changes the prediction: every other-class point is tied under ``M`` with an
        earlier same-class point, as with ``M = 0``).
    X_adv : ndarray of shape (m, d), only when ``return_adversarial``.

    Examples
    --------
    >>> import numpy as np
    >>> exact_radius_1nn([[0.], [2.]], [0, 1], [[0.5]], [0])
    array([0.5])
    """
    return geometry_radii(_training(X_train, y_train, metric, memory_budget), X, y,
                          method="exact", n_jobs=n_jobs, progress=progress, return_adversarial=return_adversarial,
                          tol=tol, n_screen=n_screen, chunk_size=chunk_size, owner="exact_radius_1nn")


def certified_radius_knn(X_train, y_train, X, y, *, n_neighbors: int = 1, metric: Any = "euclidean",
                         n_jobs: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                         progress: bool | None = None, n_screen: int = 32, chunk_size: int = 64) -> np.ndarray:
    """Certified lower bound on the l2 robustness radius of a K-NN classifier (odd K).

    With ``s = (K+1)//2``, positives = training points of the predicted label and negatives =
    all others: ``radius >= s-th smallest_j ( s-th largest_i [margin(x; x_i, x_j)]_+ )``.
    Any perturbation of l2 norm below the radius keeps a strict majority of the K nearest
    neighbours in the predicted class. Parameters as in :func:`exact_radius_1nn`.

    Returns
    -------
    radii : ndarray of shape (m,), 0 where the classifier is already wrong.

    Examples
    --------
    >>> certified_radius_knn([[0.], [1.], [3.], [4.]], [0, 0, 1, 1], [[0.5]], [0], n_neighbors=1)
    array([1.5])
    """
    k = check_odd_k(n_neighbors)
    return geometry_radii(_training(X_train, y_train, metric, memory_budget), X, y,
                          method="bound", k=k, n_jobs=n_jobs, progress=progress, n_screen=n_screen,
                          chunk_size=chunk_size, owner="certified_radius_knn")


# ----------------------------------------------------------------- robust error curves


def robust_error_curve(radii, eps) -> np.ndarray:
    """Robust error at each ``eps``: the fraction of points with ``radius <= eps``.

    At ``eps = 0`` this is the clean error (radius 0 = misclassified).

    Examples
    --------
    >>> robust_error_curve([0.0, 0.5, 2.0], [0.0, 1.0])
    array([0.33333333, 0.66666667])
    """
    r = np.asarray(radii, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"radii must be a non-empty 1-D array, got shape {r.shape}")
    if np.isnan(r).any() or (r < 0).any():
        raise ValueError("radii must be >= 0 (inf allowed) and not NaN")
    e = check_eps(eps)
    return (r[None, :] <= e[:, None]).mean(1)


def plot_robust_error(curves: Mapping[str, Sequence[float]], eps, *, ax=None, path=None,
                      title: str | None = None, xlabel: str = "ε (ℓ2)"):
    """Plot robust error against ε, one line per model.

    Parameters
    ----------
    curves : mapping name -> robust errors (one per ε), e.g. from :func:`robust_error_curve`
    eps : sequence of float
    ax : matplotlib Axes, optional
    path : str or Path, optional
        Write a PNG there (atomically).
    """
    from matplotlib.figure import Figure

    e = check_eps(eps)
    fig = None
    if ax is None:
        fig = Figure(figsize=(5, 3.5), dpi=120)
        ax = fig.subplots()
    for name, errs in curves.items():
        errs = np.asarray(errs, dtype=float)
        if errs.shape != e.shape:
            raise ValueError(f"curve {name!r} has {errs.size} values, eps has {e.size}")
        ax.plot(e, errs, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("robust error")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    if path is not None:
        import io

        from ._io import atomic_write_bytes

        buf = io.BytesIO()
        (fig or ax.figure).savefig(buf, format="png", bbox_inches="tight")
        atomic_write_bytes(path, buf.getvalue())
    return ax
