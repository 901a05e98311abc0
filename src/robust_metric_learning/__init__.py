"""robust-metric-learning: learn, certify and attack robust distance metrics.

The public API::

    from robust_metric_learning import MahalanobisKNN, LMNN, NCA, ITML, LFDA, ARML, PerturbationLoss
    from robust_metric_learning import exact_radius_1nn, certified_radius_knn, attack_knn

Deep metric learning lives in :mod:`robust_metric_learning.deep`, the attacks in
:mod:`robust_metric_learning.attacks`, the datasets in :mod:`robust_metric_learning.datasets`.
"""

from ._io import load_metric, save_metric
from .attacks import attack_knn
from .certify import (
    certified_radius_knn,
    exact_radius_1nn,
    plot_robust_error,
    robust_error_curve,
)
from .learners import (
    ARML,
    ITML,
    ITML_Supervised,
    LFDA,
    LMNN,
    LMNNPL,
    NCA,
    Euclidean,
    MetricLearner,
    PerturbationLoss,
    make_lmnn_pl,
)
from .neighbors import MahalanobisKNN

__version__ = "0.1.0"

__all__ = [
    "MahalanobisKNN",
    "ARML", "Euclidean", "ITML", "ITML_Supervised", "LFDA", "LMNN", "LMNNPL", "MetricLearner", "NCA",
    "PerturbationLoss", "make_lmnn_pl",
    "certified_radius_knn",
    "exact_radius_1nn",
    "attack_knn",
    "plot_robust_error",
    "robust_error_curve",
    "save_metric",
    "load_metric",
    "__version__",
]
