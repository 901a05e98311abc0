"""Deep metric learning: embedding nets, robust training for mini-batch metric losses,
retrieval metrics (clean, adversarial, certified)."""

from .checkpoints import CheckpointError, load_checkpoint
from .lipschitz import certified_input_radius, layer_bounds, lipschitz_bound
from .metrics import (
    adversarial_retrieval,
    certified_retrieval,
    embedding_radius_bound,
    retrieval_metrics,
)
from .miners import PairedRandomTripletMiner, PairedSoftHardTripletMiner
from .models import MLP, RC2F2, EmbeddingNet, L2Normalize, SmallCNN
from .robust import (
    GaussianAugmentation,
    DEFENSES,
    AntiCollapseTriplets,
    EmbeddingShiftTriplets,
    HardnessManipulation,
    NaiveAdversarial,
    Natural,
    RobustTriplets,
    get_defense,
)
from .ranking import ERS_COLUMNS, RANKING_ATTACKS, empirical_robustness_score, ranking_robustness
from .sampler import BalancedBatchSampler, PairBatchSampler
from .smoothing import SmoothedEmbedding, monte_carlo_error, smoothed_certified_retrieval, smoothed_top1_certificate
from .smoothing_attack import attack_smoothed_top1
from .training import TrainHistory, embed, hyperparameters, train_embedding

__all__ = [
    "MLP", "EmbeddingNet", "L2Normalize", "SmallCNN", "RC2F2", "BalancedBatchSampler", "PairBatchSampler",
    "PairedRandomTripletMiner", "PairedSoftHardTripletMiner",
    "ranking_robustness", "empirical_robustness_score", "RANKING_ATTACKS", "ERS_COLUMNS",
    "SmoothedEmbedding", "monte_carlo_error", "smoothed_certified_retrieval", "smoothed_top1_certificate",
    "attack_smoothed_top1",
    "Natural", "RobustTriplets", "NaiveAdversarial", "EmbeddingShiftTriplets", "AntiCollapseTriplets",
    "HardnessManipulation", "GaussianAugmentation", "DEFENSES", "get_defense",
    "TrainHistory", "train_embedding", "embed", "hyperparameters", "load_checkpoint", "CheckpointError",
    "lipschitz_bound", "layer_bounds", "certified_input_radius",
    "retrieval_metrics", "adversarial_retrieval", "certified_retrieval", "embedding_radius_bound",
]
