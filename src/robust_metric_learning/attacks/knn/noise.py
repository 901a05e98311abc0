"""Random-noise robustness: accuracy under Gaussian or uniform noise of given l2 norms.

The evaluation of the perturbation-loss paper (Yang et al., TNNLS 2022): add random noise to
every test point and measure accuracy. Each point gets ``n_draws`` seeded draws per norm; a
point counts as broken at a norm when some draw is misclassified, which also gives an
empirical radius (the smallest such norm: an upper bound, usually a loose one).
"""

from __future__ import annotations

from numbers import Integral
from typing import NamedTuple

import numpy as np

from ..._validation import Interval, Options, check_eps
from .base import KNNAttack

__all__ = ["NoiseAttack", "NoiseResult"]


class NoiseResult(NamedTuple):
    """``AttackResult`` plus the accuracy under noise.

    Attributes
    ----------
    raw : ndarray of shape (m, d)
        A misclassified noisy point at the smallest norm where one was found (else the input).
    clipped : ndarray of shape (n_eps, m, d), or (m, d) for a scalar eps
        Per norm, a misclassified draw if any, else the first draw.
    success : ndarray of bool, shape (n_eps, m) or (m,)
        Whether ``clipped`` is misclassified (by ``predict``), or the input already is.
    radii : ndarray of shape (m,)
        0 if already misclassified, else the norm of ``raw``'s noise, +inf if no draw broke it.
    accuracy : ndarray of shape (n_eps,) or float
        Fraction of (point, draw) pairs classified correctly, over all points.
    """

    raw: np.ndarray
    clipped: np.ndarray
    success: np.ndarray
    radii: np.ndarray
    accuracy: np.ndarray


class NoiseAttack(KNNAttack):
    """Random noise of fixed l2 norms (a fixed-eps attack: ``eps`` is required).

    Parameters
    ----------
    kind : {"gaussian", "uniform"}, default="gaussian"
        Isotropic Gaussian draws, or uniform draws in a cube.
    n_draws : int, default=10
        Draws per point and norm.
    exact_norm : bool, default=True
        Rescale every draw to l2 norm exactly eps (Gaussian draws are then uniform on the
        sphere). False keeps the raw distribution with expected squared norm eps**2:
        ``N(0, eps**2 / d)`` per coordinate, or uniform on ``[-a, a]`` with ``a = eps sqrt(3 / d)``.
    n_jobs, chunk_size, random_state, progress : see :class:`KNNAttack`.

    Examples
    --------
    >>> from robust_metric_learning.neighbors import MahalanobisKNN
    >>> knn = MahalanobisKNN().fit([[0.0], [2.0]], [0, 1])
    >>> res = NoiseAttack(random_state=0)(knn, [[0.5]], [0], eps=[0.1, 2.0])
    >>> res.accuracy.tolist(), res.success.tolist()
    ([1.0, 0.6], [[False], [True]])
    """

    name = "noise"

    _parameter_constraints = {
        **KNNAttack._parameter_constraints,
        "kind": [Options("gaussian", "uniform")],
        "n_draws": [Interval(Integral, 1, None)],
        "exact_norm": [bool],
    }

    def __init__(self, *, kind: str = "gaussian", n_draws: int = 10, exact_norm: bool = True,
                 n_jobs: int | None = None, chunk_size: int = 256, random_state: int | None = None,
                 progress: bool | None = None):
        super().__init__(n_jobs=n_jobs, chunk_size=chunk_size, random_state=random_state, progress=progress)
        self.kind = kind
        self.n_draws = n_draws
        self.exact_norm = exact_norm

    def _noise(self, rng: np.random.Generator, shape: tuple, eps: float) -> np.ndarray:
        dim = shape[-1]
        if self.kind == "gaussian":
            z = rng.standard_normal(shape)
            scale = eps / np.sqrt(dim)
        else:
            z = rng.uniform(-1.0, 1.0, shape)
            scale = eps * np.sqrt(3.0 / dim)
        if self.exact_norm:
            return z * (eps / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-300))
        return z * scale

    def _run_chunk(self, target, X, codes, rng, extra):
        eps = extra[1]
        m, dim = X.shape
        n = self.n_draws
        correct = np.zeros((eps.size, m))
        chosen = np.empty((eps.size, m, dim))
        for e, r in enumerate(eps):
            Q = X[:, None, :] + self._noise(rng, (m, n, dim), float(r))
            ok = (target.predict_codes(Q.reshape(-1, dim)) == np.repeat(codes, n)).reshape(m, n)
            correct[e] = ok.sum(1)
            first_bad = np.where(ok.all(1), 0, np.argmin(ok, axis=1))  # the first draw if none is bad
            chosen[e] = Q[np.arange(m), first_bad]
        return correct, chosen

    def __call__(self, model, X, y, *, eps=None) -> NoiseResult:
        """Evaluate ``model`` under noise of each l2 norm in ``eps`` (required).

        Returns
        -------
        NoiseResult
        """
        target, X, y, codes = self._validate(model, X, y)
        if eps is None:
            raise ValueError("eps is required for NoiseAttack: the l2 norms of the noise")
        e = check_eps(eps)
        parts = self._map(target, X, codes, shared=e)
        correct = np.concatenate([p[0] for p in parts], axis=1)
        clipped = np.concatenate([p[1] for p in parts], axis=1)
        accuracy = correct.sum(1) / (len(X) * self.n_draws)
        clean_ok = target.predict(X) == y
        success = np.ones((e.size, len(X)), dtype=bool)
        rows = np.flatnonzero(clean_ok)
        if rows.size:  # the classifier's own predict decides, on the draws kept
            success[:, rows] = self._misclassified(target, clipped[:, rows].reshape(-1, X.shape[1]),
                                                   np.tile(y[rows], e.size)).reshape(e.size, rows.size)
        norms = np.linalg.norm(clipped - X[None], axis=2)
        radii = np.where(success, norms, np.inf).min(0)
        radii[~clean_ok] = 0.0
        raw = X.copy()
        hit = clean_ok & np.isfinite(radii)
        at = np.where(success, norms, np.inf).argmin(0)
        raw[hit] = clipped[at[hit], hit]
        if np.ndim(eps) == 0:
            return NoiseResult(raw, clipped[0], success[0], radii, accuracy[0])
        return NoiseResult(raw, clipped, success, radii, accuracy)
