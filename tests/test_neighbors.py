"""MahalanobisKNN against scikit-learn's KNeighborsClassifier and its own contract."""

import numpy as np
import pytest
from sklearn.base import BaseEstimator
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from robust_metric_learning._geometry import KNNGeometry
from robust_metric_learning.margin import pairwise_mahalanobis
from robust_metric_learning.neighbors import MahalanobisKNN


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 6)), rng.integers(0, 4, 300)
    return X, y, rng.normal(size=(150, 6)), rng


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 11])
@pytest.mark.parametrize("form", ["euclidean", "L", "M"])
def test_predictions_equal_sklearn_on_transformed_data(data, k, form):
    X, y, Q, rng = data
    L = rng.normal(size=(4, 6))
    metric = {"euclidean": "euclidean", "L": L, "M": L.T @ L}[form]
    T = np.eye(6) if form == "euclidean" else L
    ours = MahalanobisKNN(k, metric=metric).fit(X, y)
    ref = KNeighborsClassifier(k).fit(X @ T.T, y)
    np.testing.assert_array_equal(ours.predict(Q), ref.predict(Q @ T.T))
    np.testing.assert_allclose(ours.predict_proba(Q), ref.predict_proba(Q @ T.T))
    d_ours, i_ours = ours.kneighbors(Q)
    d_ref, i_ref = ref.kneighbors(Q @ T.T)
    np.testing.assert_array_equal(i_ours, i_ref)
    np.testing.assert_allclose(d_ours, d_ref, rtol=1e-9, atol=1e-12)


def test_tie_rules():
    # two training points at the same distance: the smaller index is the nearer
    X = np.array([[1.0], [-1.0], [5.0], [6.0]])
    y = np.array([1, 0, 0, 1])
    knn = MahalanobisKNN(1).fit(X, y)
    assert knn.kneighbors([[0.0]], return_distance=False)[0, 0] == 0
    assert knn.predict([[0.0]])[0] == 1
    # a tied vote goes to the class sorting first in classes_
    knn2 = MahalanobisKNN(2).fit(X, y)
    assert knn2.predict([[0.0]])[0] == 0


def test_blockwise_neighbors_equal_full_computation(data):
    X, y, Q, rng = data
    L = rng.normal(size=(6, 6))
    D = pairwise_mahalanobis(Q, X, L).numpy()
    geo = KNNGeometry(X, np.zeros(len(X), dtype=int), 1, L, memory_budget=1024)
    dist, ind = geo.kneighbors(Q, 7)  # the budget forces one query row per block
    ref = np.argsort(D, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(ind, ref)
    np.testing.assert_allclose(dist, np.take_along_axis(D, ref, 1))
    loop = np.array([[(q - x) @ L.T @ L @ (q - x) for x in X] for q in Q[:5]])
    np.testing.assert_allclose(D[:5], loop, rtol=1e-10, atol=1e-10)


def test_unfitted_learner_is_fitted_on_the_training_data(data):
    X, y, Q, _ = data

    class Scale(BaseEstimator):
        def fit(self, X, y):
            self.components_ = np.diag(1.0 / X.std(0))
            return self

    knn = MahalanobisKNN(3, metric=Scale()).fit(X, y)
    assert knn.metric_ is not None and not hasattr(knn.metric, "components_")
    np.testing.assert_allclose(knn.components_, np.diag(1.0 / X.std(0)))
    assert cross_val_score(MahalanobisKNN(3, metric=Scale()), X, y, cv=3).shape == (3,)


def test_string_labels_and_certify(data):
    X, y, Q, _ = data
    names = np.array(["ant", "bee", "cat", "dog"])
    knn = MahalanobisKNN(1).fit(X, names[y])
    pred = knn.predict(Q)
    assert set(pred) <= set(names)
    radii = knn.certify(Q[:20], pred[:20])
    assert (radii > 0).all()


@pytest.mark.parametrize(
    "est, fit_args, match",
    [
        (MahalanobisKNN(0), None, "'n_neighbors' parameter of MahalanobisKNN must be an int in \\[1, inf\\)"),
        (MahalanobisKNN(400), None, "n_neighbors=400 is larger than the 300 training samples"),
        (MahalanobisKNN(memory_budget=-1), None, "'memory_budget' parameter"),
        (MahalanobisKNN(metric=np.eye(5)), None, "metric has 5 columns, X has 6 features"),
        (MahalanobisKNN(), "one_class", "one class only"),
        (MahalanobisKNN(), "nan", "NaN"),
    ],
)
def test_fit_errors(data, est, fit_args, match):
    X, y, _, _ = data
    if fit_args == "one_class":
        y = np.zeros_like(y)
    if fit_args == "nan":
        X = X.copy()
        X[3, 2] = np.nan
    with pytest.raises(ValueError, match=match):
        est.fit(X, y)


def test_post_fit_errors(data):
    X, y, Q, _ = data
    knn = MahalanobisKNN(3).fit(X, y)
    with pytest.raises(ValueError, match="X has 2 features, but MahalanobisKNN is expecting 6 features"):
        knn.predict(Q[:, :2])
    with pytest.raises(ValueError, match="method='exact' is for 1-NN only"):
        knn.certify(Q, y[:150])
    with pytest.raises(ValueError, match="method must be 'exact' or 'bound'"):
        MahalanobisKNN().fit(X, y).certify(Q, y[:150], method="magic")
    with pytest.raises(ValueError, match="n_neighbors must be odd"):
        MahalanobisKNN(4).fit(X, y).certify(Q, y[:150], method="bound")
    with pytest.raises(ValueError, match="y has 3 labels, X has 150 samples"):
        knn.certify(Q, y[:3], method="bound")


@pytest.mark.parametrize("call", ["fit", "predict", "exact", "bound", "attack", "learner", "metric"])
def test_values_near_the_float_range_are_refused(call):
    """X scaled by 1e200 (squared distances overflow) gets an error naming the argument, not a
    wrong prediction; 1e90 still works and gives the scaled radii."""
    from robust_metric_learning import certified_radius_knn, exact_radius_1nn
    from robust_metric_learning.learners import NCA

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 3)), np.arange(20) % 2
    big = X * 1e200
    calls = {
        "fit": lambda: MahalanobisKNN(1).fit(big, y),
        "predict": lambda: MahalanobisKNN(1).fit(X, y).predict(big),
        "exact": lambda: exact_radius_1nn(big, y, X, y),
        "bound": lambda: certified_radius_knn(X, y, big, y),
        "attack": lambda: MahalanobisKNN(1).fit(X, y).attack(big, y),
        "learner": lambda: NCA().fit(big, y),
        "metric": lambda: exact_radius_1nn(X * 1e90, y, X * 1e90, y, metric=np.eye(3) * 1e60),
    }
    with pytest.raises(ValueError, match=r"(X|X_train)\b.*magnitude up to .*rescale"):
        calls[call]()
    if call == "exact":
        from robust_metric_learning import exact_radius_1nn as exact
        np.testing.assert_allclose(exact(X * 1e90, y, X[:5] * 1e90, y[:5]) / 1e90, exact(X, y, X[:5], y[:5]),
                                   rtol=1e-9)
