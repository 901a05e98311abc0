"""A model whose output stops being finite part-way (on perturbed or noisy inputs, or beyond
float32) is reported, never scored: every forward pass of the evaluations and certificates goes
through one check (``_validation.check_model_output``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robust_metric_learning.deep.ranking import ranking_attack
from robust_metric_learning.deep import (
    MLP,
    SmoothedEmbedding,
    attack_smoothed_top1,
    embed,
    ranking_robustness,
    smoothed_certified_retrieval,
    smoothed_top1_certificate,
)


def _data():
    rng = np.random.default_rng(0)
    return rng.random((12, 4)).astype(np.float32), np.arange(12) % 3


class _NaNAfter(torch.nn.Module):
    """An MLP whose output is NaN from its ``n + 1``-th call on."""

    def __init__(self, n: int = 1):
        super().__init__()
        torch.manual_seed(0)
        self.net, self.n, self.calls = MLP(4, hidden=(8,), embedding_dim=3), n, 0

    def forward(self, x):
        self.calls += 1
        out = self.net(x)
        return out * float("nan") if self.calls > self.n else out


class _NaNOutsideBox(torch.nn.Module):
    """Finite on inputs in [0, 1], NaN on any row with a value outside (noisy copies)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = MLP(4, hidden=(8,), embedding_dim=3)

    def forward(self, x):
        out = self.net(x)
        outside = ((x < 0) | (x > 1)).flatten(1).any(1, keepdim=True)
        return torch.where(outside, torch.full_like(out, float("nan")), out)


class _Huge(torch.nn.Module):
    """Finite float64 embeddings of size 1e200: beyond float32 (and a norm that overflows)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4, 3, dtype=torch.float64))

    def forward(self, x):
        return (x.double() @ self.w) * 1e200


@pytest.mark.parametrize("attacks", [["CA+", "QA+", "LTM", "GTT", "GTM"], ["TMA"]])
def test_ranking_suite_refuses_embeddings_that_turn_nan_under_attack(attacks):
    X, y = _data()
    with pytest.raises(FloatingPointError, match="NaN or infinite embeddings"):
        ranking_robustness(_NaNAfter(), X, y, attack=ranking_attack(steps=2), attacks=attacks)


@pytest.mark.parametrize("normalize", [True, False])
def test_embeddings_beyond_float32_are_refused_not_rounded_to_inf_or_zero(normalize):
    X, y = _data()
    with pytest.raises(FloatingPointError, match="overflows float32"):
        embed(_Huge(), X)
    with pytest.raises(FloatingPointError, match="NaN or infinite embeddings"):
        ranking_robustness(_Huge(), X, y, attack=ranking_attack(steps=1), attacks=["TMA"], normalize=normalize)


def test_smoothed_top1_certificate_refuses_nan_noisy_copies():
    X, y = _data()
    with pytest.raises(FloatingPointError, match="noisy copies of a query"):
        smoothed_top1_certificate(_NaNOutsideBox(), X, y, sigma=0.25, n_samples=50, n_select=10, alpha=0.1)


def test_smoothing_attack_refuses_nan_noisy_copies():
    rng = np.random.default_rng(0)  # three tight clusters: the smoothed decision certifies some queries
    y = np.arange(30) % 3
    X = (np.eye(3, 4)[y] * 0.8 + 0.1 + 0.01 * rng.standard_normal((30, 4))).astype(np.float32)
    model = _NaNOutsideBox()
    cert = smoothed_top1_certificate(model.net, X, y, sigma=0.05, n_samples=200, n_select=20, alpha=0.1)
    assert (np.asarray(cert["radius"]) > 0).any()
    with pytest.raises(FloatingPointError, match="noisy copies of an attacked query"):
        attack_smoothed_top1(model, X, y, cert, steps=2, n_grad_samples=4, n_check=50)


@pytest.mark.parametrize("normalize", [True, False])
def test_smoothed_embedding_refuses_nan_outputs(normalize):
    X, y = _data()
    with pytest.raises(FloatingPointError, match="NaN or infinite embeddings"):
        SmoothedEmbedding(_NaNAfter(0), 0.1, n_samples=10, normalize=normalize).estimate(X[:2])
    with pytest.raises(FloatingPointError, match="NaN or infinite embeddings"):
        smoothed_certified_retrieval(_NaNOutsideBox(), X, y, sigma=0.25, n_samples=100, alpha=0.1,
                                     normalize=normalize)


def test_ranking_suite_checks_its_own_embedding_of_the_attacks_inputs():
    """An attack that never calls the model (it returns the inputs unchanged): the suite's own
    embedding of the returned inputs is where the NaN shows."""
    X, y = _data()

    def still(model, x, objective, *, eps):
        return x, x.clone(), torch.zeros(len(x), dtype=torch.bool)

    with pytest.raises(FloatingPointError, match="NaN or infinite embeddings"):
        ranking_robustness(_NaNAfter(1), X, y, attack=still, attacks=["TMA"])
    assert ranking_robustness(_NaNAfter(10), X, y, attack=still, attacks=["TMA"])["n_queries"] == 12
