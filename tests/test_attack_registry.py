"""Every attack of each family through the same checks, as foolbox's tests do: result type,
threat model (eps ball, box), success recomputed by the model itself, radii consistent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from robust_metric_learning import MahalanobisKNN
from robust_metric_learning.attacks import (
    APGD,
    ATTACKS,
    FGSM,
    PGD,
    AttackResult,
    EmbeddingAttackResult,
    EmbeddingShift,
    EnsembleAttack,
    NoiseResult,
    RandomSearch,
    RetrievalEnsemble,
    RetrievalObjective,
    get_attack,
)

EPS = [0.3, 1.0]


@pytest.fixture(scope="module")
def knn_case():
    X, y = load_digits(return_X_y=True)
    X = X[:300] / 16.0
    y = y[:300]
    knn = MahalanobisKNN(3).fit(X[:250], y[:250])
    return knn, X[250:262], y[250:262]


def _knn_params(name: str) -> dict:
    return {"boundary": {"steps": 200, "random_state": 0}, "gaussian": {"random_state": 0, "n_draws": 3},
            "uniform": {"random_state": 0, "n_draws": 3}, "structural": {"random_state": 0}}.get(name, {})


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_knn_attack_family_contract(knn_case, name):
    knn, X, y = knn_case
    if name == "exact":
        knn = MahalanobisKNN(1).fit(knn.geometry_.X_fit, knn.classes_[knn.geometry_.codes])
    res = get_attack(name, **_knn_params(name))(knn, X, y, eps=EPS)
    assert isinstance(res, NoiseResult if name in ("gaussian", "uniform") else AttackResult)
    raw, clipped, success = res[:3]
    assert clipped.shape == (len(EPS), *X.shape) and success.shape == (len(EPS), len(X))
    norms = np.linalg.norm(clipped - X[None], axis=2)
    assert np.all(norms <= np.asarray(EPS)[:, None] * (1 + 1e-9) + 1e-12)  # the l2 ball
    wrong = knn.predict(X) != y
    for i in range(len(EPS)):  # success is the model's own verdict on the clipped point
        np.testing.assert_array_equal(success[i], wrong | (knn.predict(clipped[i]) != y))
    assert np.all(res.radii[wrong] == 0)
    finite = np.isfinite(res.radii) & ~wrong
    if name not in ("gaussian", "uniform"):  # a finite radius is the norm of a point that flips
        assert np.all(knn.predict(raw[finite]) != y[finite])
        np.testing.assert_allclose(np.linalg.norm(raw[finite] - X[finite], axis=1), res.radii[finite], rtol=1e-9)
    for i, e in enumerate(EPS):  # success at eps exactly where the radius is within it (minimisation)
        if name not in ("gaussian", "uniform", "boundary"):
            np.testing.assert_array_equal(success[i], res.radii <= e * (1 + 1e-9))


@pytest.fixture(scope="module")
def embedding_case():
    X, y = load_digits(return_X_y=True)
    X = (X[:60] / 16.0).astype(np.float32)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8)).eval()
    with torch.no_grad():
        emb = net(torch.as_tensor(X))
    return net, torch.as_tensor(X), y[:60], emb


def _embedding_attacks(norm: str):
    return [PGD(norm=norm, steps=5, random_state=0), FGSM(norm=norm), APGD(norm=norm, steps=5, random_state=0),
            RandomSearch(norm=norm, n_queries=20, random_state=0),
            EnsembleAttack(members=[PGD(norm=norm, steps=3, random_state=0), APGD(norm=norm, steps=3, random_state=1)]),
            RetrievalEnsemble(norm=norm, steps=5, pgd_steps=3, focus=((0.3, 1),), random_state=0)]


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("which", range(6))
def test_embedding_attack_family_contract(embedding_case, norm, which):
    net, X, y, emb = embedding_case
    attack = _embedding_attacks(norm)[which]
    objective = (RetrievalObjective(emb, y, y, query_in_gallery=np.arange(len(y)))
                 if isinstance(attack, RetrievalEnsemble) else EmbeddingShift(emb))
    eps = [0.05, 0.2] if norm == "linf" else [0.5, 1.5]
    res = attack(net, X, objective, eps=eps)
    assert isinstance(res, EmbeddingAttackResult)
    raw, clipped, success = res
    assert clipped.shape == (len(eps), *X.shape) and success.shape == (len(eps), len(X))
    assert float(clipped.min()) >= 0.0 and float(clipped.max()) <= 1.0  # the box
    delta = (clipped - X[None]).reshape(len(eps), len(X), -1)
    size = delta.abs().amax(2) if norm == "linf" else delta.norm(dim=2)
    assert torch.all(size <= torch.tensor(eps)[:, None] * (1 + 1e-5) + 1e-6)  # the eps ball
    with torch.no_grad():
        for i in range(len(eps)):  # success and scores recomputed on the clipped points
            e = net(clipped[i])
            idx = torch.arange(len(X))
            torch.testing.assert_close(success[i], objective.success(e, idx))
            torch.testing.assert_close(res.scores[i].double(), objective(e, idx).double(), rtol=1e-4, atol=1e-5)
