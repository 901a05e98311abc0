"""Attacks on Mahalanobis K-NN classifiers: empirical robustness radii.

Every attack is an object called like foolbox's::

    raw, clipped, success, radii = StructuralAttack()(knn, X, y, eps=[0.1, 0.2])

``radii`` is 0 where ``knn`` is already wrong, the l2 norm of a perturbation verified by
``knn.predict`` where the attack succeeded, and +inf where it failed: an upper bound on the
minimal adversarial perturbation (a certified radius is a lower bound).

========================  ==========================================================
``ExactAttack``           1-NN: the exact minimal perturbation (certify's), pushed across
``StructuralAttack``      any K: pull other-class points into the neighbourhood (QPs)
``BoundaryAttack``        decision-based baseline (Brendel et al. 2018)
``NoiseAttack``           Gaussian / uniform noise of given norms; accuracy under noise
========================  ==========================================================

Attacks on embedding models (deep metric learning), called as
``raw, clipped, success = PGD(steps=20)(model, images, objective, eps=[0.01, 0.1])``:
``PGD``, ``FGSM``, ``RandomSearch`` (gradient-free baseline), ``APGD`` (adaptive step, Croce &
Hein 2020), the worst-case ensembles ``EnsembleAttack`` and ``RetrievalEnsemble`` (the evaluation
of retrieval), the functional core ``perturb`` (for robust training), norms (``LinfNorm``,
``L2Norm``) and objectives (``EmbeddingShift``, ``RetrievalObjective``,
``RetrievalCrossEntropy``, ``TripletRoleObjective``).
"""

from __future__ import annotations

from typing import Any

from sklearn.utils.multiclass import check_classification_targets

from .._geometry import fit_geometry
from .._validation import check_array_2d, check_n_features, check_positive_int
from ..margin import DEFAULT_MEMORY_BUDGET
from .embedding import (
    APGD,
    FGSM,
    NORMS,
    PGD,
    STEP_SCHEDULES,
    EmbeddingAttack,
    EmbeddingAttackResult,
    EmbeddingShift,
    EnsembleAttack,
    L2Norm,
    LinfNorm,
    Norm,
    Objective,
    RandomSearch,
    RetrievalCrossEntropy,
    RetrievalEnsemble,
    RetrievalObjective,
    TripletRoleObjective,
    apgd_checkpoints,
    get_norm,
    perturb,
)
from .knn import (
    AttackResult,
    BoundaryAttack,
    ExactAttack,
    KNNAttack,
    MinimizationAttack,
    NoiseAttack,
    NoiseResult,
    StructuralAttack,
)
from .knn.base import _Target

__all__ = [
    "APGD",
    "ATTACKS",
    "AttackResult",
    "BoundaryAttack",
    "EmbeddingAttack",
    "EmbeddingAttackResult",
    "EmbeddingShift",
    "EnsembleAttack",
    "FGSM",
    "L2Norm",
    "LinfNorm",
    "NORMS",
    "Norm",
    "Objective",
    "PGD",
    "RandomSearch",
    "RetrievalCrossEntropy",
    "RetrievalEnsemble",
    "RetrievalObjective",
    "STEP_SCHEDULES",
    "TripletRoleObjective",
    "apgd_checkpoints",
    "get_norm",
    "perturb",
    "ExactAttack",
    "KNNAttack",
    "MinimizationAttack",
    "NoiseAttack",
    "NoiseResult",
    "StructuralAttack",
    "attack_knn",
    "get_attack",
]

#: Attack names accepted by :func:`get_attack`, ``MahalanobisKNN.attack`` and ``rml``.
ATTACKS: dict[str, tuple[type, dict]] = {
    "exact": (ExactAttack, {}),
    "structural": (StructuralAttack, {}),
    "boundary": (BoundaryAttack, {}),
    "gaussian": (NoiseAttack, {"kind": "gaussian"}),
    "uniform": (NoiseAttack, {"kind": "uniform"}),
}


def get_attack(method: str | KNNAttack, **params: Any) -> KNNAttack:
    """An attack object by name (see :data:`ATTACKS`), with ``params`` for its constructor;
    an attack object is returned as it is (then ``params`` must be empty)."""
    if isinstance(method, KNNAttack):
        if params:
            raise ValueError(f"params {sorted(params)} cannot be applied to an attack object; set them on it")
        return method
    if not isinstance(method, str) or method not in ATTACKS:
        raise ValueError(f"method must be one of {', '.join(map(repr, ATTACKS))} or an attack object, got {method!r}")
    cls, defaults = ATTACKS[method]
    return cls(**{**defaults, **params})


def attack_knn(X_train, y_train, X, y, *, n_neighbors: int = 1, metric: Any = "euclidean",
               method: str | KNNAttack = "structural", eps=None, n_jobs: int | None = None,
               random_state: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
               progress: bool | None = None):
    """Attack the K-NN classifier of a training set under a metric, like the functions of
    :mod:`robust_metric_learning.certify`.

    Parameters
    ----------
    X_train, y_train : array-like of shape (n, d) and (n,)
    X, y : array-like of shape (m, d) and (m,)
        Points to attack and their true labels.
    n_neighbors : int, default=1
    metric : "euclidean", (d, d) matrix M, (r, d) matrix L, or fitted learner
    method : str or attack object, default="structural"
        See :data:`ATTACKS`; "structural" is exact for K = 1.
    eps : float or sequence of float, optional
        l2 budgets (required by the noise attacks).
    n_jobs, random_state, progress
        Passed to the attack (when ``method`` is a name).

    Returns
    -------
    AttackResult, or NoiseResult for the noise attacks.

    Examples
    --------
    >>> res = attack_knn([[0.0], [2.0]], [0, 1], [[0.5]], [0])
    >>> round(float(res.radii[0]), 6)
    0.5
    """
    k = check_positive_int(n_neighbors, name="n_neighbors")
    budget = check_positive_int(memory_budget, name="memory_budget")
    geo, _ = fit_geometry(X_train, y_train, metric, n_neighbors=k, memory_budget=budget, name="X_train",
                          y_name="y_train", fit_learner=False)
    check_classification_targets(geo.classes)  # continuous labels are no classes
    knn = _Target.from_geometry(geo, k)
    X = check_array_2d(X, name="X")
    check_n_features(X, geo.n_features, name="X", what="X_train has")
    params = {} if isinstance(method, KNNAttack) else {"n_jobs": n_jobs, "random_state": random_state,
                                                       "progress": progress}
    attack = get_attack(method, **params)
    return attack(knn, X, y) if eps is None else attack(knn, X, y, eps=eps)
