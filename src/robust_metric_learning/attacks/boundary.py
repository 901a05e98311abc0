"""The Boundary attack (Brendel, Rauber and Bethge, ICLR 2018): a decision-based baseline.

It needs only the classifier's decisions. Start from an adversarial point (the nearest
other-class training point that the classifier does not label as the true class, or uniform
noise), bisect towards the input, then walk along the decision boundary: a random step
orthogonal to the direction of the input, kept on the sphere around it, followed by a step
towards it; both step sizes adapt to their success rates. All points of a chunk move in
lockstep so that each iteration is one batched ``predict``.

foolbox 3.3.4 installs beside our stack, but its attack works in a box (``bounds``) with
float32 models and fails on points that are already misclassified; this one follows the
paper in float64, without a box (DESIGN §3's threat model), seeded per chunk.
"""

from __future__ import annotations

import numpy as np

from .base import MinimizationAttack, _Target

__all__ = ["BoundaryAttack"]


class BoundaryAttack(MinimizationAttack):
    """Decision-based attack on a K-NN classifier (any K, any metric).

    Parameters
    ----------
    steps : int, default=1000
        Iterations of the boundary walk.
    n_candidates : int, default=4
        Random proposals per point and iteration (evaluated in one batch).
    spherical_step : float, default=0.01
        Initial orthogonal step, relative to the current distance.
    source_step : float, default=0.01
        Initial step towards the input, relative to the current distance.
    step_adaptation : float, default=1.5
        Factor by which step sizes grow or shrink every 10 iterations.
    source_step_convergence : float, default=1e-7
        A point stops once its source step falls below this.
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

    def __init__(self, *, steps: int = 1000, n_candidates: int = 4, spherical_step: float = 0.01,
                 source_step: float = 0.01, step_adaptation: float = 1.5, source_step_convergence: float = 1e-7,
                 n_init: int = 32, init_attack: MinimizationAttack | None = None, n_jobs: int | None = None, chunk_size: int = 64,
                 random_state: int | None = None, progress: bool | None = None):
        super().__init__(n_jobs=n_jobs, chunk_size=chunk_size, random_state=random_state, progress=progress)
        self.steps = steps
        self.n_candidates = n_candidates
        self.spherical_step = spherical_step
        self.source_step = source_step
        self.step_adaptation = step_adaptation
        self.source_step_convergence = source_step_convergence
        self.n_init = n_init
        self.init_attack = init_attack

    def _check_params(self, target: _Target) -> None:
        for name in ("steps", "n_candidates", "n_init"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if name == "steps" else 1):
                raise ValueError(f"{name} must be a {'non-negative' if name == 'steps' else 'positive'} "
                                 f"integer, got {v!r}")
        for name, lo, hi in (("spherical_step", 0, 1), ("source_step", 0, 1), ("source_step_convergence", 0, 1),
                             ("step_adaptation", 1, np.inf)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not lo < v < hi:
                raise ValueError(f"{name} must be a number in ({lo}, {hi}), got {v!r}")
        if self.init_attack is not None:
            if not isinstance(self.init_attack, MinimizationAttack):
                raise ValueError(f"init_attack must be a MinimizationAttack or None, got {self.init_attack!r}")
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
        c = self.n_candidates
        sph = np.full(m, float(self.spherical_step))
        src = np.full(m, float(self.source_step))
        sph_hits = np.zeros(m)
        src_hits = np.zeros(m)
        tries = np.zeros(m)
        active = np.ones(m, dtype=bool)
        for it in range(self.steps):
            a = np.flatnonzero(active)
            if a.size == 0:
                break
            xa, za = x[a], z[a]
            diff = xa - za
            dist = np.linalg.norm(diff, axis=1)
            unit = diff / dist[:, None]
            eta = rng.standard_normal((a.size, c, dim))
            eta -= np.einsum("acd,ad->ac", eta, unit)[:, :, None] * unit[:, None, :]
            en = np.linalg.norm(eta, axis=2, keepdims=True)  # 0 only in 1-D: no orthogonal step
            eta *= (sph[a] * dist)[:, None, None] / np.where(en > 0, en, 1.0)
            c1 = za[:, None, :] + eta
            off = c1 - xa[:, None, :]
            c1 = xa[:, None, :] + off * (dist[:, None] / np.linalg.norm(off, axis=2))[:, :, None]
            c2 = c1 + src[a][:, None, None] * (xa[:, None, :] - c1)
            both = np.concatenate([c1, c2], axis=1).reshape(-1, dim)
            adv = (target.predict_codes(both) != np.repeat(y[a], 2 * c)).reshape(a.size, 2, c)
            adv1, adv2 = adv[:, 0], adv[:, 1]
            ok = adv2.any(1)
            z[a[ok]] = c2[ok, adv2[ok].argmax(1)]
            sph_hits[a] += adv1.sum(1)
            src_hits[a] += (adv1 & adv2).sum(1)
            tries[a] += c
            if (it + 1) % 10 == 0:
                self._adapt(a, sph, src, sph_hits, src_hits, tries)
                active &= src >= self.source_step_convergence
        out[idx] = z
        return out

    def _adapt(self, a, sph, src, sph_hits, src_hits, tries) -> None:
        """Brendel et al.: keep about half of the orthogonal steps adversarial, and a fair share of
        the full steps; shrink both when the walk fails."""
        f = self.step_adaptation
        p_sph = sph_hits[a] / tries[a]
        p_src = np.divide(src_hits[a], sph_hits[a], out=np.zeros(a.size), where=sph_hits[a] > 0)
        up, down = p_sph > 0.5, p_sph < 0.2
        sph[a[up]] *= f
        src[a[up]] *= f
        sph[a[down]] /= f
        src[a[down]] /= f
        src[a[p_src > 0.5]] *= f
        src[a[p_src < 0.2]] /= f
        np.clip(sph, 0, 0.5, out=sph)
        np.clip(src, 0, 0.5, out=src)
        sph_hits[a] = src_hits[a] = tries[a] = 0.0
