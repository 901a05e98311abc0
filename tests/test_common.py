"""scikit-learn's estimator checks on every public estimator (fast settings table)."""

import inspect

from sklearn.base import BaseEstimator
from sklearn.utils.estimator_checks import parametrize_with_checks

import robust_metric_learning
from robust_metric_learning import learners, neighbors

#: one instance per public estimator, with settings that keep the checks fast
FAST_ESTIMATORS = [
    neighbors.MahalanobisKNN(),
    neighbors.MahalanobisKNN(n_neighbors=3),
    learners.Euclidean(),
    learners.NCA(max_iter=10),
    learners.TripletLearner(k_same=1, k_other=2, max_iter=5),
    learners.TripletLearner(k_same=1, k_other=2, max_iter=5, perturbation=learners.PerturbationLoss(0.5, 1.0)),
    learners.ARML(max_iter=5),
    learners.ITML(max_iter=100),
    learners.ITML_Supervised(max_iter=100),
    learners.LFDA(),
    learners.LMNN(n_neighbors=1, max_iter=5),
    learners.LMNNPL(n_neighbors=1, n_impostors=1, max_iter=5),
]


def _public_estimator_classes():
    found = set()
    for module in (robust_metric_learning, neighbors, learners):
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseEstimator) and hasattr(obj, "fit") \
                    and not inspect.isabstract(obj) and obj is not learners.MetricLearner \
                    and obj.__module__.startswith("robust_metric_learning"):
                found.add(obj)
    return found


def test_every_public_estimator_is_checked():
    assert _public_estimator_classes() <= {type(e) for e in FAST_ESTIMATORS}
    assert _public_estimator_classes()


@parametrize_with_checks(FAST_ESTIMATORS)
def test_sklearn_compatible(estimator, check):
    check(estimator)
