"""metric-learn's conventions on the learners both libraries have (issue 17, item 5)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_iris

from robust_metric_learning import ITML, ITML_Supervised, LFDA, LMNN, NCA
from robust_metric_learning.learners.lfda import _local_scatter


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return X / X.max(axis=0), y


def test_random_state_accepts_a_random_state(iris):
    X, y = iris
    a = LMNN(init="random", random_state=np.random.RandomState(3), max_iter=1).fit(X, y).components_
    b = LMNN(init="random", random_state=np.random.RandomState(3), max_iter=1).fit(X, y).components_
    c = LMNN(init="random", random_state=np.random.RandomState(4), max_iter=1).fit(X, y).components_
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    d = ITML_Supervised(prior="random", random_state=np.random.RandomState(0), max_iter=5).fit(X, y)
    e = ITML_Supervised(prior="random", random_state=np.random.RandomState(0), max_iter=5).fit(X, y)
    np.testing.assert_array_equal(d.components_, e.components_)


@pytest.mark.parametrize("make", [lambda p: LMNN(preprocessor=p, max_iter=3), lambda p: NCA(preprocessor=p, max_iter=3),
                                  lambda p: LFDA(preprocessor=p), lambda p: ITML_Supervised(preprocessor=p, max_iter=3,
                                                                                           random_state=0)],
                         ids=["LMNN", "NCA", "LFDA", "ITML_Supervised"])
def test_preprocessor_array_and_callable(iris, make):
    X, y = iris
    idx = np.random.default_rng(0).permutation(len(X))
    plain = make(None).fit(X[idx], y[idx])
    by_array = make(X).fit(idx, y[idx])
    names = np.array([f"p{i}" for i in range(len(X))])
    by_callable = make(lambda ids: X[[int(s[1:]) for s in ids]]).fit(names[idx], y[idx])
    np.testing.assert_allclose(by_array.components_, plain.components_)
    np.testing.assert_allclose(by_callable.components_, plain.components_)
    np.testing.assert_allclose(by_array.transform(idx[:5]), plain.transform(X[idx[:5]]))
    np.testing.assert_allclose(by_array.transform(X[:5]), plain.transform(X[:5]))  # formed points pass as they are
    pairs = np.array([[0, 1], [2, 3]])
    np.testing.assert_allclose(by_array.pair_distance(pairs), plain.pair_distance(X[pairs]))
    np.testing.assert_allclose(by_array.pair_score(pairs), -plain.pair_distance(X[pairs]))
    with pytest.raises(ValueError, match="outside"):
        by_array.transform(np.array([len(X)]))


@pytest.mark.parametrize("cls", [LMNN, NCA])
def test_array_init_and_n_components(iris, cls):
    X, y = iris
    L0 = np.random.default_rng(1).standard_normal((2, 4))
    est = cls(init=L0, max_iter=1)
    if cls is LMNN:
        est.set_params(learn_rate=1e-12, convergence_tol=0)
    L = est.fit(X, y).components_
    assert L.shape == (2, 4)
    if cls is LMNN:  # a step of 1e-12 leaves L at L0
        np.testing.assert_allclose(L, L0, atol=1e-6)
    with pytest.raises(ValueError, match=r"'init' parameter of .* has 2 rows but n_components is 3"):
        cls(init=L0, n_components=3).fit(X, y)
    with pytest.raises(ValueError, match=r"'init' parameter of .* shape \(n_components, 4\)"):
        cls(init=np.ones((2, 5))).fit(X, y)
    for init in ("identity", "pca", "lda", "random", "auto"):
        assert cls(init=init, n_components=2, max_iter=1, random_state=0).fit(X, y).components_.shape == (2, 4)
    with pytest.raises(ValueError, match=r"'n_components' parameter of .* number of features of X \(4\); got 5"):
        cls(n_components=5).fit(X, y)


def test_auto_init_rule(iris):
    X, y = iris
    for r, expected in ((2, "lda"), (3, "pca"), (4, "identity")):  # 3 classes, 4 features
        a = NCA(init="auto", n_components=r, max_iter=1).fit(X, y).components_
        b = NCA(init=expected, n_components=r, max_iter=1).fit(X, y).components_
        np.testing.assert_allclose(a, b)


def test_itml_supervised_fit_bounds(iris):
    X, y = iris
    est = ITML_Supervised(random_state=0, max_iter=20)
    assert "bounds" not in est.get_params()
    for bounds in [(1.0, 4.0), [1.0, 4.0], np.array([[1.0, 4.0]]), np.array([[1.0], [4.0]])]:
        np.testing.assert_array_equal(est.fit(X, y, bounds=bounds).bounds_, [1.0, 4.0])
    default = est.fit(X, y).bounds_
    np.testing.assert_allclose(ITML(random_state=0, max_iter=20).fit(X, y).components_, est.components_)
    assert default[0] < default[1]
    for bad in ["weird", ["a", "b"], np.array([1.0, 2.0, 3.0])]:
        with pytest.raises(ValueError, match="bounds"):
            est.fit(X, y, bounds=bad)
    with pytest.raises(ValueError, match=r"'bounds' parameter of ITML_Supervised.fit"):
        est.fit(X, y, bounds=3)


@pytest.mark.parametrize("w0", [0.0, 1e-20, -1e-20])
def test_singular_prior_is_refused(iris, w0):
    X, y = iris
    P = np.linalg.qr(np.random.default_rng(0).standard_normal((4, 4)))[0]
    M = (P * np.array([w0, 1.0, 2.0, 3.0])) @ P.T
    with pytest.raises(np.linalg.LinAlgError, match=r"'prior' parameter of ITML_Supervised must be positive definite"):
        ITML_Supervised(prior=M).fit(X, y)


def test_lmnn_class_of_n_neighbors_points():
    X = np.array([[0.0], [0.1], [1.0], [1.1], [2.0]])
    y = np.array([0, 0, 1, 1, 2])  # class 2 has 1 point: enough for n_neighbors=1, as metric-learn
    assert LMNN(n_neighbors=1, max_iter=3).fit(X, y).components_.shape == (1, 1)
    with pytest.raises(ValueError, match=r"n_neighbors=2 target neighbours need at least 2 points .* class 2 has 1"):
        LMNN(n_neighbors=2).fit(X, y)


def test_lfda_k_none_rule(iris):
    X, y = iris  # 4 features: k = min(7, 3) = 3
    codes = np.unique(y, return_inverse=True)[1]
    default = LFDA().fit(X, y).components_
    np.testing.assert_allclose(default, LFDA(k=3).fit(X, y).components_)
    assert not np.allclose(default, LFDA(k=7).fit(X, y).components_)
    wide = np.c_[X, X ** 2, np.sqrt(X)]  # 12 features: k = 7
    np.testing.assert_allclose(LFDA().fit(wide, y).components_, LFDA(k=7).fit(wide, y).components_)
    assert np.isfinite(_local_scatter(X, codes, 3)[0]).all()


def test_get_metric_squared_and_vectors(iris):
    X, y = iris
    est = LFDA().fit(X, y)
    metric = est.get_metric()
    d = metric(X[0], X[1])
    assert metric(X[0], X[1], squared=True) == pytest.approx(d**2)
    assert est.get_metric(squared=True)(X[0][None], X[1][None]) == pytest.approx(d**2)
    np.testing.assert_allclose(d, est.pair_distance([[X[0], X[1]]])[0])
    with pytest.raises(ValueError, match="two vectors of 4 values"):
        metric(X[0:2], X[1:3])
    with pytest.warns(FutureWarning, match="score_pairs is deprecated"):
        np.testing.assert_allclose(est.score_pairs([[X[0], X[1]]]), [d])


@pytest.mark.parametrize("est, name", [
    (LMNN(n_neighbors=0), "'n_neighbors' parameter of LMNN"),
    (LMNN(regularization=2.0), "'regularization' parameter of LMNN"),
    (LMNN(learn_rate=-1.0), "'learn_rate' parameter of LMNN"),
    (LMNN(convergence_tol=-1.0), "'convergence_tol' parameter of LMNN"),
    (LMNN(min_iter=-1), "'min_iter' parameter of LMNN"),
    (LMNN(n_components=0), "'n_components' parameter of LMNN"),
    (LMNN(init=1), "'init' parameter of LMNN"),
    (LMNN(random_state="seed"), "'random_state' parameter of LMNN"),
    (LMNN(preprocessor=3), "'preprocessor' parameter of LMNN"),
    (NCA(init="bogus"), "'init' parameter of NCA"),
    (NCA(preprocessor="x"), "'preprocessor' parameter of NCA"),
    (LFDA(k=0), "'k' parameter of LFDA"),
    (ITML_Supervised(gamma=0.0), "'gamma' parameter of ITML_Supervised"),
    (ITML_Supervised(prior="bogus"), "'prior' parameter of ITML_Supervised"),
    (ITML_Supervised(random_state=-1), "'random_state' parameter of ITML_Supervised"),
])
def test_bad_arguments_name_the_argument(iris, est, name):
    X, y = iris
    with pytest.raises(ValueError, match=name):
        est.fit(X, y)
