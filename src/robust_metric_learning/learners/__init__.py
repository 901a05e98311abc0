"""Mahalanobis metric learners (scikit-learn estimators; ``components_`` is L, ``M = L.T @ L``)."""

from .arml import ARML
from .base import MetricLearner
from .euclidean import Euclidean
from .itml import ITML, ITML_Supervised
from .lfda import LFDA
from .lmnn import LMNN
from .lmnn_pl import LMNNPL, make_lmnn_pl
from .nca import NCA
from .triplet import PerturbationLoss, TripletLearner

__all__ = [
    "ARML", "Euclidean", "ITML", "ITML_Supervised", "LFDA", "LMNN", "LMNNPL", "MetricLearner", "NCA", "PerturbationLoss",
    "TripletLearner", "make_lmnn_pl",
]
