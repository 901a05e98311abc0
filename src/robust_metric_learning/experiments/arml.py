"""The ARML experiments (Provably Robust Metric Learning, NeurIPS 2020) as a declarative config.

Six learners per dataset; for the first ``n_eval`` test points after a seeded shuffle: clean
error, exact 1-NN radii and K-NN (K = 11) certified radii, and the robust-error curves on a
per-dataset ε grid.
"""

from __future__ import annotations

from typing import Callable

from sklearn.base import BaseEstimator

__all__ = ["EPS_GRIDS", "METHODS", "eps_grid", "ARML_DATASETS"]

#: ε grids (l2, [0, 1]-scaled features) per dataset; low-dimensional sets use the small grid
EPS_GRIDS: dict[str, list[float]] = {
    "mnist": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
    "fashion-mnist": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
    "usps": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
    "digits": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0],
}
_LOW_DIM_EPS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5]

#: the Mahalanobis datasets of the experiment (digits needs no files)
ARML_DATASETS = ("digits", "pendigits", "usps", "splice", "mnist", "fashion-mnist")


def eps_grid(dataset: str) -> list[float]:
    """The ε grid of ``dataset`` (pendigits, splice and other low-dimensional sets: 0.05 … 0.5)."""
    return list(EPS_GRIDS.get(dataset, _LOW_DIM_EPS))


def _methods() -> dict[str, Callable[[int], BaseEstimator]]:
    from ..learners import ARML, ITML, LFDA, LMNN, NCA, Euclidean

    return {
        "Euclidean": lambda seed: Euclidean(),
        "NCA": lambda seed: NCA(random_state=seed),
        "LMNN": lambda seed: LMNN(random_state=seed),
        "ITML": lambda seed: ITML(random_state=seed),
        "LFDA": lambda seed: LFDA(),
        "ARML": lambda seed: ARML(random_state=seed),
    }


#: method name -> factory(seed) of an unfitted learner (published settings)
METHODS = _methods()
