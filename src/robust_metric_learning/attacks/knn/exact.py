"""The exact attack on a 1-NN classifier under a Mahalanobis metric.

:class:`ExactAttack` takes the exact minimal perturbation of
:func:`~robust_metric_learning.certify.exact_radius_1nn` and pushes it a tiny step past the
decision boundary so that ``predict`` really flips.
"""

from __future__ import annotations

from numbers import Real

import numpy as np

from ..._validation import Interval
from ...certify import geometry_radii
from .base import MinimizationAttack, _Target

__all__ = ["ExactAttack"]

#: Relative steps tried, in order, when pushing a boundary point towards its target.
_PUSH_STEPS = (1e-9, 1e-7, 1e-5, 1e-3)


class ExactAttack(MinimizationAttack):
    """The optimal attack on a 1-NN classifier: the exact minimal l2 perturbation.

    Wraps ``exact_radius_1nn(..., return_adversarial=True)``; the boundary point it returns
    is moved a relative step of at most ``1e-3`` (first ``1e-9``) towards its nearest
    other-class training point, which makes that point strictly the nearest, and kept once
    ``predict`` flips. The radius reported is the norm of the perturbation actually used.

    Parameters
    ----------
    tol : float, default=1e-10
        Tolerance of the exact QP (see :func:`exact_radius_1nn`).
    n_jobs, chunk_size, random_state, progress : see :class:`KNNAttack`.

    Examples
    --------
    >>> from robust_metric_learning.neighbors import MahalanobisKNN
    >>> knn = MahalanobisKNN().fit([[0.0], [2.0]], [0, 1])
    >>> res = ExactAttack()(knn, [[0.5]], [0])
    >>> bool(res.success[0]), round(float(res.radii[0]), 6)
    (True, 0.5)
    """

    name = "exact"

    _parameter_constraints = {**MinimizationAttack._parameter_constraints,
                              "tol": [Interval(Real, 0, 1, closed="neither")]}

    def __init__(self, *, tol: float = 1e-10, n_jobs: int | None = None, chunk_size: int = 64,
                 random_state: int | None = None, progress: bool | None = None):
        super().__init__(n_jobs=n_jobs, chunk_size=chunk_size, random_state=random_state, progress=progress)
        self.tol = tol

    def _check_params(self, target: _Target) -> None:
        if target.k != 1:
            raise ValueError(f"ExactAttack is for 1-NN only; the model has n_neighbors={target.k} "
                             "(use StructuralAttack)")

    def _run(self, target: _Target, X: np.ndarray, codes: np.ndarray) -> np.ndarray:
        _, Z = geometry_radii(target.geo, X, target.classes[codes], method="exact", return_adversarial=True,
                              n_jobs=self.n_jobs, progress=self.progress, tol=self.tol, chunk_size=self.chunk_size)
        return _push_1nn(target, X, Z, codes)


def _push_1nn(target: _Target, X: np.ndarray, Z: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Move each boundary point ``Z[i]`` towards its nearest other-class training point, by the
    smallest step of ``_PUSH_STEPS`` that flips the prediction (``X[i]`` where none does)."""
    geo = target.geo
    D = np.where(geo.codes[None, :] == codes[:, None], np.inf, geo.sq_dist(Z))
    j = D.argmin(1)  # first minimum: the smaller training index at ties
    toward = geo.X[j] + geo.mean - Z
    out = X.copy()
    todo = np.ones(len(Z), dtype=bool)
    for eta in _PUSH_STEPS:
        idx = np.flatnonzero(todo)
        if idx.size == 0:
            break
        cand = Z[idx] + eta * toward[idx]
        flipped = target.predict_codes(cand) != codes[idx]
        out[idx[flipped]] = cand[flipped]
        todo[idx[flipped]] = False
    return out
