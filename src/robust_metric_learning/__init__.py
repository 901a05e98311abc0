"""robust-metric-learning: learn, certify and attack robust distance metrics."""

from .certify import (
    certified_radius_knn,
    exact_radius_1nn,
    plot_robust_error,
    robust_error_curve,
)

__version__ = "0.1.0"

__all__ = [
    "certified_radius_knn",
    "exact_radius_1nn",
    "plot_robust_error",
    "robust_error_curve",
    "__version__",
]
