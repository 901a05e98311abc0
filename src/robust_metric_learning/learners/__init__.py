"""Mahalanobis metric learners (scikit-learn estimators; ``components_`` is L, ``M = L.T @ L``)."""

from .arml import ARML
from .base import MetricLearner
from .euclidean import Euclidean
from .itml import ITML
from .lfda import LFDA
from .nca import NCA
from .triplet import PerturbationLoss, TripletLearner

__all__ = ["ARML", "Euclidean", "ITML", "LFDA", "MetricLearner", "NCA", "PerturbationLoss", "TripletLearner"]
