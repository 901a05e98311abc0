"""scikit-learn's estimator checks on every public estimator (fast settings table)."""

import inspect

from sklearn.base import BaseEstimator
from sklearn.utils.estimator_checks import parametrize_with_checks

import robust_metric_learning
from robust_metric_learning import neighbors

#: one instance per public estimator, with settings that keep the checks fast
FAST_ESTIMATORS = [
    neighbors.MahalanobisKNN(),
    neighbors.MahalanobisKNN(n_neighbors=3),
]


def _public_estimator_classes():
    found = set()
    for module in (robust_metric_learning, neighbors):
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseEstimator) and not name.startswith("_") \
                    and obj.__module__.startswith("robust_metric_learning"):
                found.add(obj)
    return found


def test_every_public_estimator_is_checked():
    assert _public_estimator_classes() <= {type(e) for e in FAST_ESTIMATORS}
    assert _public_estimator_classes()


@parametrize_with_checks(FAST_ESTIMATORS)
def test_sklearn_compatible(estimator, check):
    check(estimator)
