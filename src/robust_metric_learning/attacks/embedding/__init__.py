"""Attacks on embedding models: norms (threat models), objectives (what an attack
maximises), the attack base, PGD / FGSM / random search, APGD, and the evaluation ensembles."""

from .apgd import APGD, apgd_checkpoints
from .base import EmbeddingAttack, EmbeddingAttackResult
from .ensemble import EnsembleAttack, RetrievalEnsemble
from .norms import NORMS, L2Norm, LinfNorm, Norm, get_norm
from .objectives import DISTANCES, EmbeddingShift, Objective, TripletRoleObjective
from .pgd import FGSM, PGD, STEP_SCHEDULES, RandomSearch, perturb
from .retrieval import RetrievalCrossEntropy, RetrievalObjective

__all__ = ["APGD", "apgd_checkpoints", "EmbeddingAttack", "EmbeddingAttackResult", "EnsembleAttack",
           "RetrievalEnsemble", "NORMS", "L2Norm", "LinfNorm", "Norm", "get_norm", "DISTANCES", "EmbeddingShift",
           "Objective", "TripletRoleObjective", "FGSM", "PGD", "STEP_SCHEDULES", "RandomSearch", "perturb",
           "RetrievalCrossEntropy", "RetrievalObjective"]
