"""Attacks on Mahalanobis K-NN classifiers (empirical robustness radii).

Minimisation attacks (:class:`MinimizationAttack`: the smallest l2 perturbation that flips the
prediction, radii as results): :class:`ExactAttack` (1-NN, optimal), :class:`StructuralAttack`
(any K, the template search over least-distance QPs), :class:`BoundaryAttack` (decision-based).
Noise attack (:class:`NoiseAttack`): random perturbations at fixed budgets. All take a fitted
:class:`~robust_metric_learning.neighbors.MahalanobisKNN`.
"""

from .base import AttackResult, KNNAttack, MinimizationAttack
from .boundary import BoundaryAttack
from .exact import ExactAttack
from .noise import NoiseAttack, NoiseResult
from .structural import StructuralAttack

__all__ = ["AttackResult", "KNNAttack", "MinimizationAttack", "BoundaryAttack", "ExactAttack", "NoiseAttack",
           "NoiseResult", "StructuralAttack"]
