"""The Boundary attack (Brendel, Rauber and Bethge, ICLR 2018): a decision-based baseline.

It needs only the classifier's decisions. Start from an adversarial point (the nearest
other-class training point that the classifier does not label as the true class, or uniform
noise), bisect towards the input, then walk along the decision boundary: a random step
orthogonal to the direction of the input, kept on the sphere around it, followed by a step
towards it; a proposal is kept when it is adversarial and closer. Both step sizes adapt to
success rates. All points of a chunk move in lockstep, so each step is one batched ``predict``.

The schedule and defaults are foolbox 3's ``BoundaryAttack`` (the baseline of the ARML
experiments, which called ``BoundaryAttack()`` with its defaults: 25000 steps, spherical and
source steps 0.01, adaptation factor 1.5, convergence at a source step of 1e-7, statistics
every 10 steps over the last 100 spherical and 30 full proposals). Differences: float64, no
box (the Mahalanobis threat model is unbounded l2; the ARML code clipped to [0, 1]), an independent Gaussian
direction per point (foolbox 3 shares one per batch), points already misclassified are
skipped (foolbox fails on them), and the start is the nearest adversarial training point
(foolbox blends in uniform noise), seeded per chunk.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np

from ..._validation import Interval, validate_params
from .base import MinimizationAttack, _Target

__all__ = ["BoundaryAttack"]


class BoundaryAttack(MinimizationAttack):
    """Decision-based attack on a K-NN classifier (any K, any metric), foolbox 3's schedule.

    Parameters
    ----------
    steps : int, default=25000
        Most steps of the boundary walk (one proposal per point and step).
    spherical_step : float, default=0.01
        Initial orthogonal step, relative to the current distance.
    source_step : float, default=0.01
        Initial step towards the input, relative to the current distance.
    source_step_convergence : float, default=1e-7
        A point stops once its source step falls below this.
    step_adaptation : float, default=1.5
        Factor by which step sizes grow or shrink.
    update_stats_every_k : int, default=10
        Every k steps the orthogonal proposal is also checked and the success statistics
        updated: both steps grow when more than half of the last 100 orthogonal proposals were
        adversarial and shrink below 20%; the source step grows when more than 25% of the last
        30 full proposals were adversarial and shrinks below 10%.
    n_init : int, default=32
        Nearest other-class training points tried as starting points.
    init_attack : MinimizationAttack or None, default=None
        Another attack whose adversarial points are the starting points (then refined here);
        points it fails on start as above.
    n_jobs, chunk_size, random_state, progress : see :class:`KNNAttack`.

    Examples
    --------
    >>> import numpy as np
    >>> from robust_metric_learning.neighbors import MahalanobisKNN
    >>> knn = MahalanobisKNN().fit([[0.0], [2.0]], [0, 1])
    >>> res = BoundaryAttack(steps=50, random_state=0)(knn, [[0.5]], [0])
    >>> bool(res.success[0]), bool(0.5 <= res.radii[0] < 0.51)
    (True, True)
    """

    name = "boundary"

    _parameter_constraints = {
        **MinimizationAttack._parameter_constraints,
        "steps": [Interval(Integral, 0, None)],
        "update_stats_every_k": [Interval(Integral, 1, None)],
        "n_init": [Interval(Integral, 1, None)],
        **{name: [Interval(Real, 0, 1, closed="neither")] for name in ("spherical_step", "source_step",
                                                                        "source_step_convergence")},
        "step_adaptation": [Interval(Real, 1, None, closed="neither")],
        "init_attack": [None, MinimizationAttack],
    }

    def __init__(self, *, steps: int = 25000, spherical_step: float = 0.01, source_step: float = 0.01,
                 source_step_convergence: float = 1e-7, step_adaptation: float = 1.5,
                 update_stats_every_k: int = 10, n_init: int = 32, init_attack: MinimizationAttack | None = None,
                 n_jobs: int | None = None, chunk_size: int = 64, random_state: int | None = None,
                 progress: bool | None = None):
        super().__init__(n_jobs=n_jobs, chunk_size=chunk_size, random_state=random_state, progress=progress)
        self.steps = steps
        self.spherical_step = spherical_step
        self.source_step = source_step
        self.source_step_convergence = source_step_convergence
        self.step_adaptation = step_adaptation
        self.update_stats_every_k = update_stats_every_k
        self.n_init = n_init
        self.init_attack = init_attack

    def _check_params(self, target: _Target) -> None:
        if self.init_attack is not None:
            validate_params(self.init_attack)
            self.init_attack._check_params(target)

    def _run(self, target: _Target, X: np.ndarray, codes: np.ndarray) -> np.ndarray:
        starts = None
        if self.init_attack is not None:
            starts = self.init_attack._run(target, X, codes)
            starts[(starts == X).all(1)] = np.nan  # failures: find a start here
        return np.concatenate(self._map(target, X, codes, per_row=starts), axis=0)

    # ------------------------------------------------------------------ starting points
    def _starts(self, target: _Target, X: np.ndarray, codes: np.ndarray, rng: np.random.Generator, given=None):
        """An adversarial point per row (NaN where none was found); ``given`` rows are kept where
        they are finite and adversarial."""
        geo = target.geo
        m = len(X)
        start = np.full_like(X, np.nan)
        if given is not None:
            ok = np.isfinite(given).all(1)
            ok[ok] = target.predict_codes(given[ok]) != codes[ok]
            start[ok] = given[ok]
        D = np.where(geo.codes[None, :] == codes[:, None], np.inf, geo.sq_dist(X))
        n_try = min(self.n_init, int(np.isfinite(D).sum(1).min()))
        near = np.argsort(D, axis=1, kind="stable")[:, :n_try]  # (m, n_try) training indices
        cand = geo.X[near] + geo.mean
        adv = (target.predict_codes(cand.reshape(-1, X.shape[1])) != np.repeat(codes, n_try)).reshape(m, n_try)
        found = adv.any(1) & ~np.isfinite(start).all(1)
        start[found] = cand[found, adv[found].argmax(1)]
        found |= np.isfinite(start).all(1)
        lo, hi = geo.X.min(0) + geo.mean, geo.X.max(0) + geo.mean
        span = hi - lo
        for _ in range(10):  # uniform noise in (twice) the data's bounding box
            todo = np.flatnonzero(~found)
            if todo.size == 0:
                break
            noise = rng.uniform(lo - span / 2, hi + span / 2, size=(todo.size, 20, X.shape[1]))
            adv = (target.predict_codes(noise.reshape(-1, X.shape[1])) != np.repeat(codes[todo], 20)).reshape(-1, 20)
            ok = adv.any(1)
            start[todo[ok]] = noise[ok, adv[ok].argmax(1)]
            found[todo[ok]] = True
        return start, found

    def _bisect(self, target: _Target, X: np.ndarray, Z: np.ndarray, codes: np.ndarray, n_iter: int = 25):
        """Move each adversarial ``Z`` along the segment towards ``X`` as far as it stays adversarial."""
        lo = np.zeros(len(X))
        hi = np.ones(len(X))
        for _ in range(n_iter):
            mid = (lo + hi) / 2
            adv = target.predict_codes(X + mid[:, None] * (Z - X)) != codes
            hi = np.where(adv, mid, hi)
            lo = np.where(adv, lo, mid)
        return X + hi[:, None] * (Z - X)

    # ------------------------------------------------------------------ the walk
    def _run_chunk(self, target, X, codes, rng, extra):
        out = X.copy()
        start, found = self._starts(target, X, codes, rng, given=extra[0])
        if not found.any():
            return out
        idx = np.flatnonzero(found)
        x, y = X[idx], codes[idx]
        z = self._bisect(target, x, start[idx], y)
        m, dim = x.shape
        f, every = float(self.step_adaptation), int(self.update_stats_every_k)
        sph = np.full(m, float(self.spherical_step))
        src = np.full(m, float(self.source_step))
        stats_sph = _Window(100, m)  # was the orthogonal proposal adversarial
        stats_src = _Window(30, m)  # was the full proposal adversarial
        for step in range(1, self.steps + 1):
            a = np.flatnonzero(src >= self.source_step_convergence)
            if a.size == 0:
                break
            xa, za, sa = x[a], z[a], sph[a]
            diff = xa - za  # towards the input
            dist = np.linalg.norm(diff, axis=1)
            unit = diff / dist[:, None]
            eta = rng.standard_normal((a.size, dim))
            eta -= (eta * unit).sum(1, keepdims=True) * unit
            en = np.linalg.norm(eta, axis=1)  # 0 only in 1-D: no orthogonal step
            eta *= (sa * dist / np.where(en > 0, en, 1.0))[:, None]
            spherical = xa + (eta - diff) / np.sqrt(sa * sa + 1.0)[:, None]  # on the sphere (Pythagoras)
            toward = xa - spherical
            tn = np.linalg.norm(toward, axis=1)
            length = np.maximum(src[a] * dist + tn - dist, 0.0)  # corrected for rounding off the sphere
            cand = spherical + (length / tn)[:, None] * toward
            check = step % every == 0
            batch = np.concatenate([cand, spherical]) if check else cand
            adv = target.predict_codes(batch) != np.tile(y[a], 2 if check else 1)
            adv_c = adv[:a.size]
            better = adv_c & (np.linalg.norm(xa - cand, axis=1) < dist)
            z[a[better]] = cand[better]
            if check:
                stats_sph.push(a, adv[a.size:])
                stats_src.push(a, adv_c)
                full = stats_sph.full(a)
                p = stats_sph.mean(a)
                up, down = full & (p > 0.5), full & (p < 0.2)
                sph[a[up]] *= f
                src[a[up]] *= f
                sph[a[down]] /= f
                src[a[down]] /= f
                stats_sph.clear(a[up | down])
                full = stats_src.full(a)
                p = stats_src.mean(a)
                up, down = full & (p > 0.25), full & (p < 0.1)
                src[a[up]] *= f
                src[a[down]] /= f
                stats_src.clear(a[up | down])
        out[idx] = z
        return out


class _Window:
    """The last ``size`` outcomes (0/1) of each point; NaN = no record (foolbox's ArrayQueue)."""

    def __init__(self, size: int, n: int):
        self.data = np.full((size, n), np.nan)
        self.next = np.zeros(n, dtype=np.int64)

    def push(self, rows: np.ndarray, values: np.ndarray) -> None:
        self.data[self.next[rows], rows] = values
        self.next[rows] = (self.next[rows] + 1) % self.data.shape[0]

    def full(self, rows: np.ndarray) -> np.ndarray:
        return ~np.isnan(self.data[:, rows]).any(0)

    def mean(self, rows: np.ndarray) -> np.ndarray:
        block = self.data[:, rows]
        seen = ~np.isnan(block)
        return np.where(seen, block, 0.0).sum(0) / np.maximum(seen.sum(0), 1)

    def clear(self, rows: np.ndarray) -> None:
        self.data[:, rows] = np.nan
