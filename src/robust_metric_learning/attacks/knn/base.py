"""The shape every K-NN attack shares (foolbox-like).

An attack is an object called on a fitted :class:`~robust_metric_learning.MahalanobisKNN`,
inputs and labels: ``raw, clipped, success, radii = attack(knn, X, y, eps=[...])``.
The base ``__call__`` validates, runs the subclass's ``_run_chunk`` on the correctly classified
points (in joblib chunks), re-checks every returned point with the classifier's own
``predict``, and sweeps ``eps`` by clipping. Radii are 0 where the classifier
is already wrong, the l2 norm of the verified perturbation, +inf where the attack failed.
"""

from __future__ import annotations

import warnings
from numbers import Integral
from typing import Any, NamedTuple

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.utils.validation import check_is_fitted

from ..._geometry import KNNGeometry
from ..._parallel import progress_bar, threads_per_worker
from ..._validation import (
    Interval,
    check_array_2d,
    check_eps,
    check_labels,
    check_n_features,
    validate_params,
)

__all__ = ["AttackResult", "KNNAttack", "MinimizationAttack"]


class AttackResult(NamedTuple):
    """What an attack returns (unpacks like foolbox's ``raw, clipped, success``, plus radii).

    Attributes
    ----------
    raw : ndarray of shape (m, d)
        The adversarial points found (the input itself where the attack failed or the point
        is already misclassified).
    clipped : ndarray of shape (m, d), or (n_eps, m, d) for a list of eps
        ``raw`` projected onto the l2 ball of radius eps around the input; ``raw`` if eps is None.
    success : ndarray of bool, shape (m,) or (n_eps, m)
        Whether ``clipped`` is misclassified, by the classifier's own ``predict``.
    radii : ndarray of shape (m,)
        Empirical radius: 0 if already misclassified, ``||raw - x||_2`` where the attack
        succeeded, +inf where it failed.
    """

    raw: np.ndarray
    clipped: np.ndarray
    success: np.ndarray
    radii: np.ndarray


class _Target:
    """A fitted K-NN classifier as the attacks see it: its geometry (``geometry_``, built once by
    ``MahalanobisKNN.fit``), ``K``, and the one K-NN predict with the package's tie rule."""

    def __init__(self, knn: Any):
        if hasattr(knn, "get_params"):
            check_is_fitted(knn)
        geo = getattr(knn, "geometry_", None)
        if not isinstance(geo, KNNGeometry) or not hasattr(knn, "n_neighbors"):
            raise TypeError(f"model must be a fitted MahalanobisKNN, got {type(knn).__name__}")
        self._set(geo, knn.n_neighbors)

    @classmethod
    def from_geometry(cls, geo: KNNGeometry, k: int) -> "_Target":
        """The K-NN classifier of a built geometry (with its ``classes``) and ``K = k``."""
        target = cls.__new__(cls)
        target._set(geo, k)
        return target

    def _set(self, geo: KNNGeometry, k: int) -> None:
        self.geo = geo
        self.k = int(k)
        self.classes = geo.classes
        self.n_classes = geo.n_classes
        self.memory_budget = geo.memory_budget
        self.class_index = [np.flatnonzero(geo.codes == c) for c in range(self.n_classes)]
        self.other_index = [np.flatnonzero(geo.codes != c) for c in range(self.n_classes)]

    @property
    def n_features(self) -> int:
        return self.geo.n_features

    def predict_codes(self, Q: np.ndarray) -> np.ndarray:
        """Class codes predicted for rows of ``Q`` (ties: smaller training index, smaller code)."""
        return self.geo.predict_codes(Q, self.k)

    def predict(self, Q: np.ndarray) -> np.ndarray:
        """Labels predicted for rows of ``Q`` (the classifier's own ``predict``)."""
        return self.classes[self.predict_codes(Q)]

    def codes_of(self, y: np.ndarray) -> np.ndarray:
        """Class codes of labels ``y``; -1 for labels the classifier does not know."""
        return self.geo.codes_of(y)


def _chunk_worker(attack: "KNNAttack", target: _Target, X: np.ndarray, codes: np.ndarray, seed, threads: int, extra):
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    return attack._run_chunk(target, X, codes, rng, extra)


class KNNAttack:
    """Base of the K-NN attacks. Subclasses write ``_run_chunk`` (and ``_check_params``);
    every attack takes the parameters below.

    Parameters
    ----------
    n_jobs : int, default=None
        joblib workers over chunks of points (any backend, Dask included).
    chunk_size : int, default=32
        Points per parallel task.
    random_state : int or None, default=None
        Seed; chunk ``i`` draws from the ``i``-th child of ``SeedSequence(random_state)``, so
        results do not depend on ``n_jobs``.
    progress : bool or None, default=None
        Progress bar; None shows it on a terminal only.
    """

    name = "attack"
    _parameter_constraints: dict = {
        "n_jobs": [None, Integral],
        "chunk_size": [Interval(Integral, 1, None)],
        "random_state": [None, Interval(Integral, 0, 2**63 - 1)],
        "progress": [None, bool],
    }

    def __init__(self, *, n_jobs: int | None = None, chunk_size: int = 32, random_state: int | None = None,
                 progress: bool | None = None):
        self.n_jobs = n_jobs
        self.chunk_size = chunk_size
        self.random_state = random_state
        self.progress = progress

    # ---------------------------------------------------------------- for subclasses
    def _check_params(self, target: _Target) -> None:
        """Check hyper-parameters against the model (the declared ``_parameter_constraints`` are
        checked before, by ``validate_params``); raise ValueError naming the parameter."""

    def _run_chunk(self, target: _Target, X: np.ndarray, codes: np.ndarray, rng: np.random.Generator, extra):
        raise NotImplementedError

    # ---------------------------------------------------------------- shared steps
    def _validate(self, model, X, y):
        validate_params(self)
        target = model if isinstance(model, _Target) else _Target(model)
        self._check_params(target)
        X = check_array_2d(X, name="X")
        check_n_features(X, target.n_features, name="X", what="the model was fitted on")
        y = check_labels(y, n_samples=X.shape[0], name="y")
        return target, X, y, target.codes_of(y)

    def _map(self, target: _Target, X: np.ndarray, codes: np.ndarray, *, per_row: np.ndarray | None = None,
             shared=None, desc: str | None = None) -> list:
        """Run ``_run_chunk(target, X, codes, rng, (per_row, shared))`` over chunks of rows, in order;
        ``per_row`` (one row per point, or None) is sliced like ``X``, ``shared`` goes to all."""
        target.geo.prepare()  # the lazy attributes, computed once before the workers get the geometry
        starts = list(range(0, len(X), self.chunk_size))
        seeds = np.random.SeedSequence(self.random_state).spawn(len(starts))
        threads = threads_per_worker(self.n_jobs)
        step = self.chunk_size
        jobs = (delayed(_chunk_worker)(self, target, X[s:s + step], codes[s:s + step], seed, threads,
                                       (None if per_row is None else per_row[s:s + step], shared))
                for s, seed in zip(starts, seeds))
        prev = torch.get_num_threads()
        out = []
        try:
            with progress_bar(self.progress, len(X), desc or self.name) as bar:
                for s, res in zip(starts, Parallel(n_jobs=self.n_jobs, return_as="generator")(jobs)):
                    out.append(res)
                    bar.update(min(step, len(X) - s))
        finally:
            torch.set_num_threads(prev)
        return out

    @staticmethod
    def _misclassified(target: _Target, Q: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The final check, by the classifier's own ``predict`` (in label space)."""
        if len(Q) == 0:
            return np.zeros(0, dtype=bool)
        return target.predict(Q) != y


class MinimizationAttack(KNNAttack):
    """An attack that looks for the smallest adversarial perturbation (no eps needed to run).

    ``eps`` only selects the outputs: ``clipped`` is ``raw`` scaled into each l2 ball.
    """

    def __call__(self, model, X, y, *, eps=None) -> AttackResult:
        """Attack ``model`` at inputs ``X`` with true labels ``y``.

        Parameters
        ----------
        model : fitted MahalanobisKNN
        X : array-like of shape (m, d)
        y : array-like of shape (m,)
        eps : float, sequence of float or None, default=None
            l2 budgets (input space). A sequence gives ``clipped`` and ``success`` one leading
            axis per budget.

        Returns
        -------
        AttackResult
        """
        target, X, y, codes = self._validate(model, X, y)
        eps_arr = None if eps is None else check_eps(eps)
        correct = target.predict(X) == y
        raw = X.copy()
        idx = np.flatnonzero(correct)
        if idx.size:
            raw[idx] = self._run(target, X[idx], codes[idx])
        return _finish(target, X, y, raw, correct, eps, eps_arr, self.name)

    def _run(self, target: _Target, X: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Adversarial points for correctly classified ``X`` (rows equal to ``X`` = failure)."""
        return np.concatenate(self._map(target, X, codes), axis=0)


def _finish(target: _Target, X, y, raw, correct, eps, eps_arr, name: str) -> AttackResult:
    """Verify ``raw`` with the classifier's predict, compute radii and the eps sweep."""
    delta = raw - X
    norms = np.linalg.norm(delta, axis=1)
    moved = correct & (norms > 0)
    wrong = np.zeros(len(X), dtype=bool)
    wrong[moved] = KNNAttack._misclassified(target, raw[moved], y[moved])
    bad = moved & ~wrong
    if bad.any():
        warnings.warn(f"{name}: {int(bad.sum())} point(s) returned by the attack are not misclassified by "
                      "predict; counted as failures", RuntimeWarning, stacklevel=3)
        raw[bad] = X[bad]
        delta[bad] = 0.0
        norms[bad] = 0.0
    radii = np.where(correct, np.where(wrong, norms, np.inf), 0.0)
    success_raw = ~correct | wrong
    if eps_arr is None:
        return AttackResult(raw, raw.copy(), success_raw, radii)
    clipped = np.empty((eps_arr.size,) + X.shape)
    success = np.empty((eps_arr.size, len(X)), dtype=bool)
    for e, r in enumerate(eps_arr):
        scale = np.ones(len(X))
        over = norms > r
        scale[over] = r / norms[over]
        clipped[e] = X + scale[:, None] * delta
        success[e] = success_raw
        shrunk = over & wrong  # scaled-down perturbations: ask predict again
        if r > 0 and shrunk.any():
            success[e, shrunk] = KNNAttack._misclassified(target, clipped[e, shrunk], y[shrunk])
        elif shrunk.any():
            success[e, shrunk] = False  # eps = 0: the input itself, which is classified correctly
    if np.ndim(eps) == 0:
        return AttackResult(raw, clipped[0], success[0], radii)
    return AttackResult(raw, clipped, success, radii)
