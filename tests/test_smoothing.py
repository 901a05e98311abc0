"""Randomized smoothing of embeddings: the Monte Carlo bound, the Lipschitz constant and the
retrieval certificate against smoothed functions known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robust_metric_learning.deep.smoothing import (
    SmoothedEmbedding,
    monte_carlo_error,
    smoothed_certified_retrieval,
    smoothed_lipschitz,
)


class TwoPoint(torch.nn.Module):
    """f(x) = (+-1, 0) on either side of the hyperplane w.x = b: g = (2 Phi((w.x - b) / (sigma |w|)) - 1, 0)."""

    def __init__(self, w, b):
        super().__init__()
        self.w = torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float64), requires_grad=False)
        self.b = b

    def forward(self, x):
        s = torch.where(x.reshape(len(x), -1) @ self.w > self.b, 1.0, -1.0).to(x.dtype)
        return torch.stack([s, torch.zeros_like(s)], 1)

    def smoothed(self, x, sigma):
        t = (x @ self.w.detach() - self.b) / (sigma * self.w.detach().norm())
        return torch.stack([torch.erf(t / math.sqrt(2)), torch.zeros_like(t)], 1)


class Rotation(torch.nn.Module):
    """f(x) = (cos w.x, sin w.x): g = exp(-sigma^2 |w|^2 / 2) f(x)."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float64), requires_grad=False)

    def forward(self, x):
        t = x.reshape(len(x), -1) @ self.w
        return torch.stack([torch.cos(t), torch.sin(t)], 1)

    def smoothed(self, x, sigma):
        return torch.exp(-0.5 * sigma ** 2 * self.w.detach().norm() ** 2) * self.forward(x)


def test_estimates_are_within_the_monte_carlo_bound_of_the_closed_forms():
    X = torch.rand(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for model in (TwoPoint([1.0, -2.0, 0.5], 0.1), Rotation([3.0, 1.0, -2.0])):
        sm = SmoothedEmbedding(model, 0.3, n_samples=4000, batch_size=700, random_state=1)
        est = sm.estimate(X)
        e = monte_carlo_error(4000, 1e-3 / 6)
        err = (est - model.smoothed(X, 0.3)).norm(dim=1)
        assert float(err.max()) <= e
        assert float(err.max()) > 1e-4  # a Monte Carlo estimate, not the closed form
        # the same noise whatever the batching
        assert torch.allclose(est, SmoothedEmbedding(model, 0.3, n_samples=4000, batch_size=4000,
                                                     random_state=1).estimate(X), atol=1e-12)


def test_the_bound_holds_in_at_least_one_minus_alpha_of_repeats():
    model, x = Rotation([2.0, -1.0]), torch.tensor([[0.3, 0.6]], dtype=torch.float64)
    truth = model.smoothed(x, 0.5)[0]
    e = monte_carlo_error(50, 0.2)
    misses = sum(float((SmoothedEmbedding(model, 0.5, n_samples=50, random_state=s).estimate(x)[0] - truth).norm()) > e
                 for s in range(300))
    assert misses <= 0.2 * 300


def test_the_lipschitz_constant_is_attained_by_the_two_point_model_and_never_exceeded():
    sigma = 0.25
    model = TwoPoint([1.0, 0.0], 0.5)
    t = torch.linspace(0.0, 1.0, 2001, dtype=torch.float64)
    g = model.smoothed(torch.stack([t, torch.zeros_like(t)], 1), sigma)[:, 0]
    slopes = (g[1:] - g[:-1]).abs() / (t[1] - t[0])
    L = smoothed_lipschitz(sigma)
    assert float(slopes.max()) <= L * (1 + 1e-9)
    assert float(slopes.max()) == pytest.approx(L, rel=1e-4)


def test_certified_queries_keep_their_smoothed_neighbour_under_perturbations_within_the_radius():
    torch.manual_seed(0)
    w = torch.tensor([4.0, 0.5], dtype=torch.float64)
    model = Rotation(w)
    X = torch.rand(24, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = (X @ w > 2.3).long().numpy()  # labels follow the angle, so most queries are right
    res = smoothed_certified_retrieval(model, X, y, sigma=0.2, radii=[0.0, 0.05, 0.1], n_samples=3000,
                                       alpha=1e-3, normalize=False)
    r = torch.as_tensor(res["radius"])
    assert (r > 0).sum() >= 5 and res["certified_recall_at_1"][0] <= res["recall_at_1"]
    assert res["certified_recall_at_1"] == sorted(res["certified_recall_at_1"], reverse=True)
    G = model.smoothed(X, 0.2)
    for i in torch.nonzero(r > 0).flatten().tolist():
        # perturbations of norm 0.99 r, the exact smoothed 1-NN: along +-w (where g turns fastest,
        # the worst directions of this model) and in 20 random directions
        for v in [w, -w, *torch.randn(20, 2, dtype=torch.float64)]:
            xq = X[i] + 0.99 * r[i] * v / v.norm()
            gq = model.smoothed(xq[None], 0.2)[0]
            d = (G - gq).norm(dim=1)
            d[i] = torch.inf
            assert y[int(d.argmin())] == y[i]


def test_bad_input():
    model = Rotation([1.0, 1.0])
    X, y = torch.rand(4, 2, dtype=torch.float64), np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="sigma"):
        SmoothedEmbedding(model, 0.0)
    with pytest.raises(ValueError, match="sigma"):
        SmoothedEmbedding(model, -1.0)
    for a in (0.0, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            smoothed_certified_retrieval(model, X, y, sigma=0.5, alpha=a)
    with pytest.raises(ValueError, match=r"n_samples=10 is too few for alpha=0.001 over 4 estimates"):
        smoothed_certified_retrieval(model, X, y, sigma=0.5, n_samples=10, normalize=False)

    class Big(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 3).double()

        def forward(self, x):
            return 10 * self.lin(x) + 5

    with pytest.raises(ValueError, match="norm at most 1"):
        SmoothedEmbedding(Big(), 0.5, n_samples=10).estimate(X)
    assert SmoothedEmbedding(Big(), 0.5, n_samples=10, normalize=True).estimate(X).norm(dim=1).max() <= 1 + 1e-12
    with pytest.raises(ValueError, match="radii"):
        smoothed_certified_retrieval(model, X, y, sigma=0.5, radii=[-0.1])


def test_gaussian_augmentation_trains_on_noisy_inputs():
    from pytorch_metric_learning import losses

    from robust_metric_learning.deep import GaussianAugmentation, get_defense, train_embedding

    d = get_defense("noise", sigma=0.3, consistency=0.5)
    assert isinstance(d, GaussianAugmentation) and (d.sigma, d.consistency) == (0.3, 0.5)
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            seen.append(x.detach().clone())
            return torch.nn.functional.normalize(self.lin(x), dim=1)

    x = torch.rand(8, 4)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    model = Spy()
    loss, made = d.step_loss(model, x, y, losses.TripletMarginLoss(margin=0.2), None, torch.Generator().manual_seed(0))
    assert made == 0 and loss.requires_grad and len(seen) == 2  # the noisy batch and the consistency copy
    for s in seen:
        noise = s - x
        assert 0.15 < float(noise.std()) < 0.45 and float(noise.abs().max()) > 0.3  # sigma 0.3, unclipped
    assert not torch.equal(seen[0], seen[1])
    # the consistency term is the mean squared distance of the two copies' embeddings
    with torch.no_grad():
        e1, e2 = (torch.nn.functional.normalize(model.lin(c), dim=1) for c in seen)
        term = float(((e1 - e2) ** 2).sum(1).mean())
    seen.clear()
    l0, _ = GaussianAugmentation(sigma=0.3).step_loss(model, x, y, losses.TripletMarginLoss(margin=0.2), None,
                                                      torch.Generator().manual_seed(0))
    assert term > 0 and float(loss.detach()) == pytest.approx(float(l0.detach()) + 0.5 * term, rel=1e-6)
    rng = np.random.default_rng(0)
    X, labels = rng.random((40, 4)).astype(np.float32), np.repeat(np.arange(4), 10)
    h = train_embedding(torch.nn.Sequential(torch.nn.Linear(4, 3)), X, labels, defense=d, epochs=1, m=2,
                        progress=False)
    assert len(h.loss) == 1 and np.isfinite(h.loss[0])
    for bad in (dict(sigma=0.0), dict(sigma=-1.0), dict(consistency=-0.1), dict(sigma=float("nan"))):
        with pytest.raises(ValueError, match="parameter of GaussianAugmentation must be"):
            GaussianAugmentation(**bad)


def test_top1_certificate_is_below_and_near_the_exact_radius_of_a_half_space_decision():
    from robust_metric_learning.deep.smoothing import smoothed_top1_certificate

    w, b, sigma = torch.tensor([1.0, 1.0], dtype=torch.float64), 0.9, 0.3
    model = TwoPoint(w, b)
    X = torch.rand(30, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    side = (X @ w > b)
    y = np.where(side.numpy(), 0, 1)
    res = smoothed_top1_certificate(model, X, y, sigma=sigma, radii=[0.0, 0.1], n_samples=20000, alpha=1e-3)
    exact = ((X @ w - b).abs() / w.norm()).numpy()  # distance to the decision boundary
    r = res["radius"]
    assert np.all(r <= exact + 1e-9)  # never more than the truth (with prob 1 - alpha per query)
    far = exact > 0.15
    assert far.sum() >= 10 and np.all(r[far] >= 0.75 * exact[far])
    assert res["recall_at_1"] == pytest.approx(float((res["decision"] == np.where(side.numpy(), 0, 1)).mean()))
    assert res["certified_recall_at_1"][0] == pytest.approx(float((r > 0).mean()))
    with pytest.raises(ValueError, match="n_samples=5 is too few for alpha=0.001"):
        smoothed_top1_certificate(model, X, y, sigma=sigma, n_samples=5)
    with pytest.raises(ValueError, match="sigma"):
        smoothed_top1_certificate(model, X, y, sigma=0.0)


class Identity2(torch.nn.Module):
    """f(x) = x on 2-D inputs: the smoothed top-1 decision of two clusters is the side of their bisector."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(2, dtype=torch.float64))

    def forward(self, x):
        return self.lin(x.reshape(len(x), -1).to(torch.float64))


def test_the_attack_never_beats_the_certificate_and_beats_the_decision_beyond_it():
    from robust_metric_learning.deep import attack_smoothed_top1, smoothed_top1_certificate

    gen = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.1, 0.5], [0.9, 0.5]], dtype=torch.float64)
    X = (centers.repeat_interleave(8, 0) + 0.02 * torch.randn(16, 2, generator=gen, dtype=torch.float64))
    y = np.repeat([0, 1], 8)
    model, sigma = Identity2(), 0.2
    cert = smoothed_top1_certificate(model, X, y, sigma=sigma, n_samples=4000, alpha=1e-3)
    assert (cert["radius"] > 0.25).all()  # each point is ~0.4 from the bisector x = 0.5
    res = attack_smoothed_top1(model, X, y, cert, scales=[1.0, 1.5], steps=25, n_grad_samples=32, n_check=1000)
    assert res["n_attacked"] == 16
    assert res["scale_1"]["broken"] == 0  # sound: the decision holds within every certified radius
    assert res["scale_1"]["p_attacked"] < res["scale_1"]["p_clean"]  # the attack did push towards the boundary
    assert res["scale_1.5"]["broken"] == 16  # 1.5 radii cross the bisector: the attack finds every one
    # a certificate that overstates its radii 1.5x is caught at scale 1
    inflated = {**cert, "radius": 1.5 * cert["radius"]}
    assert attack_smoothed_top1(model, X, y, inflated, scales=[1.0], steps=25, n_grad_samples=32,
                                n_check=1000)["scale_1"]["broken"] == 16


def test_the_attack_refuses_what_does_not_fit_its_certificate():
    from robust_metric_learning.deep import attack_smoothed_top1, smoothed_top1_certificate

    X = torch.tensor([[0.1, 0.5], [0.12, 0.5], [0.9, 0.5], [0.88, 0.5]], dtype=torch.float64)
    y = np.array([0, 0, 1, 1])
    model = Identity2()
    cert = smoothed_top1_certificate(model, X, y, sigma=0.2, n_samples=2000, alpha=1e-3)
    assert (cert["radius"] > 0).all()
    kw = dict(scales=[1.0], steps=2, n_grad_samples=4, n_check=200)
    cases = [
        (dict(certificate={"radius": cert["radius"]}), "certificate must be the dict smoothed_top1_certificate"),
        (dict(X=X[:3], y=y[:3]), (r"certificate\['queries'\] must be a non-empty 1-D array of rows of X "
                                  r"\(0..2\), got values in \[0, 3\]")),
        (dict(y=1 - y), "certificate does not fit y: 4 queries with a positive radius have a decision"),
        (dict(certificate={**cert, "radius": np.full(4, np.inf)}),
         r"certificate\['radius'\] must hold finite radii >= 0, got inf for query row 0 \(4 of 4 radii\)"),
        (dict(certificate={**cert, "radius": np.array([0.1, -0.1, 0.1, 0.1])}),
         r"finite radii >= 0, got -0.1 for query row 1 \(1 of 4 radii\)"),
        (dict(certificate={**cert, "radius": cert["radius"][:3]}),
         r"certificate\['radius'\] must hold one radius per query \(4\), got shape \(3,\)"),
        (dict(certificate={**cert, "radius": ["a"] * 4}), r"certificate\['radius'\] must be an array of one radius"),
        (dict(certificate={**cert, "queries": cert["queries"] + 0.5}),
         r"certificate\['queries'\] must be .* rows of X \(0..3\), got dtype torch.float64"),
        (dict(certificate={**cert, "queries": np.array(["a", "b", "c", "d"])}), r"certificate\['queries'\] must be"),
        (dict(certificate={**cert, "queries": np.arange(3)}), r"one radius per query \(3\), got shape \(4,\)"),
        (dict(certificate={**cert, "decision": cert["decision"] + 0.0}),
         r"certificate\['decision'\] must be an integer array of shape \(4,\) .* got torch.float64 of shape"),
        (dict(certificate={**cert, "decision": np.array([0, 0, 1, 2])}),
         r"label codes of y in \[0, 2\) or -1 \(abstained\), got values in \[0, 2\]"),
        (dict(y=np.zeros(4, dtype=int)), "y must hold at least 2 classes for retrieval, got 1"),
        (dict(sigma=0.05), "sigma=0.05 differs from the certificate's 0.2"),
        (dict(normalize=True), "normalize=True differs from the certificate's False"),
        (dict(scales=[2.0, 2.0]), "scales must be distinct positive numbers"),
        (dict(n_check=9), "n_check=9 is too few for alpha=0.001"),
    ]
    for change, message in cases:
        args = {"X": X, "y": y, "certificate": cert, **kw, **change}
        with pytest.raises(ValueError, match=message):
            attack_smoothed_top1(model, args.pop("X"), args.pop("y"), args.pop("certificate"), **args)
    big = attack_smoothed_top1(model, X, y, cert, random_state=2**32 - 1, **kw)  # any seed the package takes
    assert big["n_attacked"] == 4
    # nothing certified, nothing attacked: no mean probabilities (None, not NaN)
    none = attack_smoothed_top1(model, X, y, {**cert, "radius": np.zeros(4), "decision": np.full(4, -1)}, **kw)
    assert none == {"n_attacked": 0, "scales": [1.0],
                    "scale_1": {"broken": 0, "flipped": 0, "p_clean": None, "p_attacked": None}}


def test_a_model_that_cannot_take_the_rows_of_x_gets_a_clear_error():
    from robust_metric_learning.deep import MLP

    torch.manual_seed(0)
    model = MLP(4, hidden=(8,), embedding_dim=3)
    X, y = np.random.default_rng(0).random((12, 4)).astype(np.float32), np.arange(12) % 3
    with pytest.raises(ValueError, match=r"model cannot be applied to X: rows of shape \(9,\) \(RuntimeError"):
        SmoothedEmbedding(model, 0.1, n_samples=10).estimate(np.random.default_rng(0).random((2, 9)))
    with pytest.raises(ValueError, match=r"model cannot be applied to X: rows of shape \(\) \(IndexError"):
        smoothed_certified_retrieval(model, X[:, 0], y, sigma=0.25, n_samples=100, alpha=0.1)
    assert SmoothedEmbedding(model, 0.1, n_samples=10).estimate(X).shape == (12, 3)


def test_one_class_is_refused_as_for_the_other_retrieval_functions():
    from robust_metric_learning.deep.smoothing import smoothed_top1_certificate

    X = torch.tensor([[0.1, 0.5], [0.12, 0.5], [0.9, 0.5], [0.88, 0.5]], dtype=torch.float64)
    for y in (np.zeros(4, dtype=int), np.array(["a"] * 4)):
        with pytest.raises(ValueError, match="y must hold at least 2 classes for retrieval, got 1"):
            smoothed_certified_retrieval(Identity2(), X, y, sigma=0.2, n_samples=2000, normalize=True)
        with pytest.raises(ValueError, match="y must hold at least 2 classes for retrieval, got 1"):
            smoothed_top1_certificate(Identity2(), X, y, sigma=0.2, n_samples=2000)


def test_the_monte_carlo_bound_is_finite_for_tiny_alpha_and_huge_n():
    # about 12.46, not inf (1e-320 is subnormal: stored to about 4 digits)
    assert monte_carlo_error(10, 1e-320) == pytest.approx((1 + math.sqrt(2 * 320 * math.log(10))) / math.sqrt(10),
                                                          rel=1e-6)
    assert monte_carlo_error(10**400, 0.1) == pytest.approx((1 + math.sqrt(2 * math.log(10))) * 1e-200, rel=1e-12)
    assert monte_carlo_error(10000, 0.001) == pytest.approx((1 + math.sqrt(2 * math.log(1000))) / 100, rel=1e-14)
