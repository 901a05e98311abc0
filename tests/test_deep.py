"""deep/: models, Lipschitz bounds, the batch sampler and the retrieval metrics."""

import math
import os
import re

import numpy as np
import pytest
import torch
from torch import nn

from robust_metric_learning.certify import exact_radius_1nn
from robust_metric_learning.deep import (
    MLP, RC2F2, BalancedBatchSampler, L2Normalize, PairBatchSampler, PairedRandomTripletMiner,
    PairedSoftHardTripletMiner, SmallCNN, certified_input_radius, embedding_radius_bound, layer_bounds,
    lipschitz_bound, retrieval_metrics,
)


def _power_norm(f, shape, iters=200, seed=0):
    """Largest singular value of the linear map f (power iteration, a lower estimate)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    for _ in range(iters):
        y = f(x)
        (grad,) = torch.autograd.grad((y * y).sum() / 2, x)
        x = (grad / grad.norm()).detach().requires_grad_()
    with torch.no_grad():
        return float(f(x.detach()).norm())


@pytest.mark.parametrize("stride,padding,size", [(1, 1, 9), (2, 1, 10), (1, 0, 8), (2, 0, 7), (3, 2, 11)])
def test_conv_bound_is_an_upper_bound_and_tight_for_stride_one(stride, padding, size):
    torch.manual_seed(stride * 10 + padding)
    conv = nn.Conv2d(3, 4, 3, stride=stride, padding=padding, bias=False).double()
    (_, bound), = [b for b in layer_bounds(nn.Sequential(conv), input_shape=(3, size, size))]
    true = _power_norm(conv, (1, 3, size, size))
    assert bound >= true * (1 - 1e-9)
    if stride == 1:
        assert bound <= 1.25 * true


def test_linear_bound_is_exact():
    torch.manual_seed(0)
    lin = nn.Linear(7, 5)
    (_, bound), = layer_bounds(nn.Sequential(lin))
    assert bound == pytest.approx(float(torch.linalg.svdvals(lin.weight.detach().double())[0]), rel=1e-8)


@pytest.mark.parametrize("make", [
    lambda: SmallCNN(8),
    lambda: SmallCNN(8, spectral_norm=True),
    lambda: MLP(784, hidden=(32, 16), embedding_dim=8),
    lambda: nn.Sequential(nn.Unflatten(1, (1, 28, 28)), nn.Conv2d(1, 4, 5, stride=2), nn.BatchNorm2d(4),
                          nn.LeakyReLU(0.1), nn.AvgPool2d(2), nn.MaxPool2d(3, stride=1), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 6), nn.Tanh(), nn.Linear(6, 3), L2Normalize()),
])
def test_lipschitz_bound_never_beaten_by_gradient_ascent(make):
    torch.manual_seed(1)
    model = make()
    for module in model.modules():  # non-trivial batch-norm statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.2, 3.0)
            module.weight.data.uniform_(-2, 2)
    model.eval()
    bound = lipschitz_bound(model, input_shape=(784,))
    body = model.body if hasattr(model, "body") else model[:-1]
    # the local gain along the steepest direction: power iteration on the Jacobian at x
    x0 = torch.rand(4, 784)
    for i in range(len(x0)):
        jac = torch.autograd.functional.jacobian(lambda v: body(v[None].float())[0], x0[i])
        assert float(torch.linalg.matrix_norm(jac.double(), ord=2)) <= bound * (1 + 1e-6)
    with torch.no_grad():
        d = 0.05 * torch.randn(64, 784)
        ratio = (body(x0[:1] + d) - body(x0[:1])).norm(dim=1) / d.norm(dim=1)
    assert float(ratio.max()) <= bound


def test_unsupported_layer_is_named():
    with pytest.raises(TypeError, match="GELU"):
        lipschitz_bound(nn.Sequential(nn.Linear(3, 3), nn.GELU()))


def test_certified_input_radius_accounts_for_normalisation():
    rng = np.random.default_rng(0)
    for _ in range(200):
        u = rng.normal(size=5)
        R = rng.uniform(0.01, 1.5)
        (rho,) = certified_input_radius([R], [np.linalg.norm(u)], lipschitz=1.0, n_features=1, norm="l2")
        v = u + rho * (d := rng.normal(size=5)) / np.linalg.norm(d)
        moved = np.linalg.norm(u / np.linalg.norm(u) - v / np.linalg.norm(v))
        assert moved <= R + 1e-12
    r = certified_input_radius([0.2, 0.0, np.inf], [2.0, 2.0, 2.0], lipschitz=4.0, n_features=784)
    assert r[0] == pytest.approx(0.2 * 2 / 1.2 / (4 * 28)) and r[1] == 0 and np.isinf(r[2])


def test_sampler_is_balanced_deterministic_and_checks_input():
    y = np.repeat(np.arange(5), [10, 12, 3, 8, 20])
    s = BalancedBatchSampler(y, m=3, classes_per_batch=4, n_batches=20, seed=3)
    batches = list(s)
    assert len(batches) == 20
    for b in batches:
        labels, counts = np.unique(y[b], return_counts=True)
        assert len(labels) == 4 and set(counts) == {3}
    assert batches == list(s)
    s.set_epoch(1)
    assert list(s) != batches
    with pytest.raises(ValueError, match="at least 2 classes"):
        BalancedBatchSampler(np.zeros(10), m=2)
    with pytest.raises(ValueError, match="m must be >= 2"):
        BalancedBatchSampler(y, m=1)
    with pytest.raises(ValueError, match="classes_per_batch"):
        BalancedBatchSampler(y, classes_per_batch=6)


def _brute_metrics(E, y):
    """Leave-one-out R@1 and MAP@R from the definitions."""
    n = len(E)
    D = ((E[:, None] - E[None]) ** 2).sum(-1)
    np.fill_diagonal(D, np.inf)
    r1, maps = [], []
    for i in range(n):
        order = np.argsort(D[i], kind="stable")[: n - 1]
        rel = y[order] == y[i]
        R = int((y == y[i]).sum()) - 1
        r1.append(rel[0])
        hits = np.cumsum(rel[:R])
        maps.append(np.sum(hits / np.arange(1, R + 1) * rel[:R]) / R)
    return np.mean(r1), np.mean(maps)


def test_retrieval_metrics_match_definitions_and_exclude_self():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 60)
    E = rng.normal(size=(60, 3)) + y[:, None]
    got = retrieval_metrics(E, y, E, y, self_index=np.arange(60), nmi=True)
    r1, map_r = _brute_metrics(E, y)
    assert got["precision_at_1"] == pytest.approx(r1)
    assert got["mean_average_precision_at_r"] == pytest.approx(map_r)
    assert 0 <= got["NMI"] <= 1
    # a query is never its own neighbour, even with an exact duplicate of another class
    E2 = np.vstack([E, E[:1]])
    y2 = np.append(y, (y[0] + 1) % 4)
    got2 = retrieval_metrics(E2[:1], y2[:1], E2, y2, self_index=[0])
    assert got2["precision_at_1"] == 0.0


def test_embedding_radius_bound_is_sound_against_the_exact_radius():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 40)
    E = rng.normal(size=(40, 4)) + 0.8 * y[:, None]
    bound = embedding_radius_bound(torch.as_tensor(E), torch.as_tensor(y), n_positives=3).numpy()
    for i in range(len(E)):
        rest = np.delete(np.arange(len(E)), i)
        exact = exact_radius_1nn(E[rest], y[rest], E[i:i + 1], y[i:i + 1])[0]
        assert bound[i] <= exact + 1e-9
    # with all positives the bound is the K=1 bound; it is 0 exactly where 1-NN is wrong
    D = ((E[:, None] - E[None]) ** 2).sum(-1)
    np.fill_diagonal(D, np.inf)
    wrong = y[D.argmin(1)] != y
    assert np.all(bound[wrong] == 0) and np.all(bound[~wrong] > 0)


def test_models_shapes_and_normalisation():
    x = torch.rand(3, 784)
    for model in (SmallCNN(16), MLP(784, embedding_dim=16)):
        z = model(x)
        assert z.shape == (3, 16)
        assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-6)
    assert SmallCNN(16)(x.reshape(3, 1, 28, 28)).shape == (3, 16)
    with pytest.raises(ValueError, match="embedding_dim"):
        SmallCNN(0)
    assert math.isfinite(lipschitz_bound(SmallCNN(4)))


def _retrieval_problem():
    """A small untrained embedding MLP and 60 points of 3 classes in [0, 1]."""
    torch.manual_seed(0)
    model = MLP(16, hidden=(16,), embedding_dim=4).eval()
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    X = np.clip(rng.normal(0.5, 0.15, size=(60, 16)) + 0.1 * y[:, None], 0, 1).astype(np.float32)
    return model, X, y


def test_adversarial_retrieval_on_a_query_subset_matches_the_full_run():
    from robust_metric_learning.attacks import PGD
    from robust_metric_learning.deep import adversarial_retrieval

    model, X, y = _retrieval_problem()
    full = adversarial_retrieval(model, X, y, eps=[0.0, 0.05], attack=PGD(steps=3, random_state=0))
    part = adversarial_retrieval(model, X, y, eps=[0.0, 0.05], attack=PGD(steps=3, random_state=0),
                                 queries=np.arange(0, 60, 2))
    assert full["precision_at_1"][0] == pytest.approx(full["clean"]["precision_at_1"])
    assert part["clean"]["precision_at_1"] == pytest.approx(np.mean(full["attacked"][::2]))
    assert part["precision_at_1"][1] <= part["precision_at_1"][0]
    # nothing is flipped without a budget, something is with one
    assert full["flipped"][1].sum() > 0 and not full["flipped"][0].any()
    with pytest.raises(ValueError, match="queries"):
        adversarial_retrieval(model, X, y, eps=0.1, queries=[60])


def test_adversarial_retrieval_is_monotone_in_eps_even_when_the_attack_is_not():
    from robust_metric_learning.attacks import PGD
    from robust_metric_learning.deep import adversarial_retrieval

    model, X, y = _retrieval_problem()
    pgd = PGD(steps=5, random_state=0)

    def masked(model, x, objective, *, eps):
        """PGD at 0.05; at any larger budget a (masked) attack that changes nothing."""
        if eps <= 0.05:
            return pgd(model, x, objective, eps=eps)
        return x, x.clone(), torch.zeros(len(x), dtype=torch.bool)

    res = adversarial_retrieval(model, X, y, eps=[0.2, 0.05, 0.0], attack=masked)
    ref = adversarial_retrieval(model, X, y, eps=[0.05], attack=pgd)
    assert res["eps"] == [0.2, 0.05, 0.0]  # reported in the order given
    assert ref["flipped"][0].sum() > 0
    np.testing.assert_array_equal(res["flipped"][1], ref["flipped"][0])
    np.testing.assert_array_equal(res["flipped"][0], ref["flipped"][0])  # 0.05's breaks count at 0.2
    assert res["precision_at_1"][0] == pytest.approx(ref["precision_at_1"][0])
    assert res["precision_at_1"][0] <= res["precision_at_1"][1] < res["precision_at_1"][2]


def test_adversarial_retrieval_resumes_from_its_checkpoint_with_the_uninterrupted_result(tmp_path):
    from robust_metric_learning.attacks import PGD
    from robust_metric_learning.deep import CheckpointError, adversarial_retrieval

    model, X, y = _retrieval_problem()
    pgd = PGD(steps=4, random_state=0)
    eps = [0.08, 0.0, 0.03]
    ref = adversarial_retrieval(model, X, y, eps=eps, attack=pgd)
    calls, stop = [], [True]

    class Stopping(PGD):
        """Stops (as a killed run would) when asked for the largest budget, while ``stop``."""

        def __call__(self, model, x, objective, *, eps):
            calls.append(eps)
            if eps > 0.05 and stop[0]:
                raise KeyboardInterrupt
            return super().__call__(model, x, objective, eps=eps)

    path = tmp_path / "eval.pt"
    stopping = Stopping(steps=4, random_state=0)
    with pytest.raises(KeyboardInterrupt):
        adversarial_retrieval(model, X, y, eps=eps, attack=stopping, checkpoint=path)
    assert calls == [0.03, 0.08] and path.exists()  # 0 and 0.03 saved before the stop
    calls.clear()
    stop[0] = False
    res = adversarial_retrieval(model, X, y, eps=eps, attack=stopping, checkpoint=path)
    assert calls == [0.08]  # only the unfinished budget is attacked
    # the cost of the budgets finished before the stop is read back: the totals of one run
    assert res["cost"]["restored"] == [False, True, True]
    assert res["cost"]["forward"][2] == ref["cost"]["forward"][2] > 0
    assert res["cost"]["backward"][2] == ref["cost"]["backward"][2] > 0
    assert res["cost"]["gallery_forward"] == len(X)
    for k in ("precision_at_1", "mean_average_precision_at_r", "success"):
        assert res[k] == pytest.approx(ref[k], abs=1e-12)
    for a, b in zip(res["flipped"], ref["flipped"]):
        np.testing.assert_array_equal(a, b)
    assert sum(f.sum() for f in ref["flipped"]) > 0
    # finished: read back without attacking
    calls.clear()
    again = adversarial_retrieval(model, X, y, eps=eps, attack=stopping, checkpoint=path)
    assert calls == [] and again["precision_at_1"] == res["precision_at_1"]
    # another evaluation (another attack, other queries) is refused, or started afresh
    with pytest.raises(CheckpointError, match="another evaluation"):
        adversarial_retrieval(model, X, y, eps=eps, attack=PGD(steps=5, random_state=0), checkpoint=path)
    with pytest.raises(CheckpointError, match="another evaluation"):
        adversarial_retrieval(model, X, y, eps=eps, attack=stopping, checkpoint=path, queries=np.arange(30))
    other = adversarial_retrieval(model, X, y, eps=eps, attack=PGD(steps=5, random_state=0), checkpoint=path,
                                  resume="compatible")
    assert len(other["precision_at_1"]) == 3
    # a damaged file: refused with its name, or (compatible) a warning and a fresh start
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{path}.*damaged"):
        adversarial_retrieval(model, X, y, eps=eps, attack=pgd, checkpoint=path)
    with pytest.warns(UserWarning, match="damaged.*evaluation starts afresh"):
        fresh = adversarial_retrieval(model, X, y, eps=eps, attack=pgd, checkpoint=path, resume="compatible")
    assert fresh["precision_at_1"] == pytest.approx(ref["precision_at_1"], abs=1e-12)
    for bad in ("yes", 1, 0.0):
        with pytest.raises(ValueError, match="resume must be"):
            adversarial_retrieval(model, X, y, eps=eps, attack=pgd, checkpoint=path, resume=bad)
    # an attack whose repr holds a memory address differs in every process: refused, not resumed wrongly
    with pytest.raises(ValueError, match="repr identifies it"):
        adversarial_retrieval(model, X, y, eps=eps, attack=lambda m, x, o, *, eps: pgd(m, x, o, eps=eps),
                              checkpoint=tmp_path / "fn.pt")
    # a training checkpoint given as the evaluation's is never overwritten, even with "compatible"
    from robust_metric_learning.deep import train_embedding

    trained = tmp_path / "train.pt"
    train_embedding(MLP(16, hidden=(8,), embedding_dim=4), X, y, epochs=1, checkpoint=trained, progress=False)
    before = trained.read_bytes()
    with pytest.raises(CheckpointError, match="train_embedding checkpoint, not a") as info:
        adversarial_retrieval(model, X, y, eps=eps, attack=pgd, checkpoint=trained, resume="compatible")
    assert info.value.reason == "kind" and trained.read_bytes() == before
    with pytest.raises(ValueError, match="folder"):
        adversarial_retrieval(model, X, y, eps=eps, attack=pgd, checkpoint=tmp_path)
    with pytest.raises(TypeError, match="checkpoint must be a file path"):
        adversarial_retrieval(model, X, y, eps=eps, attack=pgd, checkpoint=3)
    if os.path.exists("/dev/null"):  # never replaced by a checkpoint, whatever resume says
        with pytest.raises(ValueError, match="not a regular file"):
            adversarial_retrieval(model, X, y, eps=eps, attack=pgd, checkpoint="/dev/null", resume="compatible")


# ------------------------------------------------------------------ issue 16: no silent wrong answer


@pytest.mark.parametrize("eps", [-0.1, float("nan"), float("inf"), [], [[0.1]], "a", [0.1, -0.2]])
def test_certified_retrieval_refuses_bad_eps(eps):
    from robust_metric_learning.deep import certified_retrieval

    model, X, y = _retrieval_problem()
    with pytest.raises(ValueError, match=r"^eps must be"):
        certified_retrieval(model, X, y, eps=eps)


@pytest.mark.parametrize("lipschitz, error", [(-1.0, ValueError), (0.0, ValueError), (float("nan"), ValueError),
                                              (float("inf"), ValueError), ("2", TypeError), (True, TypeError)])
def test_certified_retrieval_and_input_radius_refuse_bad_lipschitz(lipschitz, error):
    from robust_metric_learning.deep import certified_retrieval

    model, X, y = _retrieval_problem()
    with pytest.raises(error, match=r"^lipschitz must be a finite number > 0, got"):
        certified_retrieval(model, X, y, eps=0.1, lipschitz=lipschitz)
    with pytest.raises(error, match=r"^lipschitz must be a finite number > 0, got"):
        certified_input_radius([0.1], [1.0], lipschitz=lipschitz, n_features=4)


def test_certified_retrieval_is_never_above_the_clean_recall_and_checks_its_other_arguments():
    from robust_metric_learning.deep import adversarial_retrieval, certified_retrieval, embed

    model, X, y = _retrieval_problem()
    emb = embed(model, X).double()
    clean = retrieval_metrics(emb, y, emb, y, self_index=np.arange(len(y)))["precision_at_1"]
    res = certified_retrieval(model, X, y, eps=[0.0, 1e-4, 0.01])
    assert res["certified_recall_at_1"][0] <= clean + 1e-12
    assert res["certified_recall_at_1"] == sorted(res["certified_recall_at_1"], reverse=True)
    assert np.all(res["radii"] >= 0) and not np.isnan(res["radii"]).any()
    # an explicit bound twice as large halves every radius
    half = certified_retrieval(model, X, y, eps=0.0, lipschitz=2 * res["lipschitz"])["radii"]
    np.testing.assert_allclose(half, res["radii"] / 2)
    # queries: those rows' radii (the rest of X still the gallery), their certified R@1
    rows = np.arange(len(y))[::-3]
    sub = certified_retrieval(model, X, y, eps=[0.0, 1e-4, 0.01], queries=rows)
    np.testing.assert_allclose(sub["radii"], res["radii"][rows])
    assert sub["certified_recall_at_1"] == [float(np.mean(res["radii"][rows] > e)) for e in (0.0, 1e-4, 0.01)]
    with pytest.raises(ValueError, match="queries must be a non-empty 1-D array of rows of X"):
        certified_retrieval(model, X, y, eps=0.1, queries=[])
    for kw, match in [(dict(n_positives=0), "n_positives must be a positive integer, got 0"),
                      (dict(n_positives=1.5), "n_positives must be a positive integer"),
                      (dict(batch_size=-1), "batch_size must be a positive integer, got -1"),
                      (dict(norm="l1"), "norm must be 'linf' or 'l2'")]:
        with pytest.raises(ValueError, match=match):
            certified_retrieval(model, X, y, eps=0.1, **kw)
    with pytest.raises(ValueError, match="X must have at least 2 rows"):
        certified_retrieval(model, X[:1], y[:1], eps=0.1)
    with pytest.raises(ValueError, match="y has 59 labels, X has 60 samples"):
        certified_retrieval(model, X, y[:-1], eps=0.1)
    with pytest.raises(ValueError, match="y contains NaN"):
        certified_retrieval(model, X, np.where(y == 0, np.nan, y), eps=0.1)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        certified_retrieval("model", X, y, eps=0.1)
    # a SmallCNN (28x28 images) fed 8x8 digits: the error names X and the expected shape
    with pytest.raises(ValueError, match=r"model cannot be applied to X: rows of shape \(16,\); the model takes "
                                         r"inputs of shape \(1, 28, 28\)"):
        certified_retrieval(SmallCNN(4), X, y, eps=0.1)
    # string labels work like their codes; one class is refused, as by every retrieval evaluation
    # (a certificate that nothing can change R@1 would be vacuous)
    named = certified_retrieval(model, X, np.array(["a", "b", "c"])[y], eps=0.01)
    assert named["certified_recall_at_1"] == certified_retrieval(model, X, y, eps=0.01)["certified_recall_at_1"]
    for fn in (certified_retrieval, adversarial_retrieval):
        with pytest.raises(ValueError, match="y must hold at least 2 classes for retrieval, got 1"):
            fn(model, X, np.zeros(len(y)), eps=0.5)


def test_embedding_radius_bound_does_not_depend_on_the_block_with_small_classes():
    """A class with one or two items in the block used to cut every row's positives to its size."""
    rng = np.random.default_rng(3)
    y = np.r_[np.repeat([0, 1, 2], 15), [3], [4, 4]]
    E = torch.as_tensor(rng.normal(size=(len(y), 3)) + 2.0 * (y[:, None] % 3))
    labels = torch.as_tensor(y)
    one_block = embedding_radius_bound(E, labels, n_positives=5, batch_size=1000)
    for bs in (1, 7):
        torch.testing.assert_close(embedding_radius_bound(E, labels, n_positives=5, batch_size=bs), one_block)
    # some rows as queries, in any order: their bounds, the whole set still the gallery
    rows = np.array([46, 3, 45, 0, 17])
    for bs in (2, 1000):
        torch.testing.assert_close(embedding_radius_bound(E, labels, n_positives=5, batch_size=bs, queries=rows),
                                   one_block[rows])
    with pytest.raises(ValueError, match=r"queries must be a non-empty 1-D array of rows of emb \(0..47\), got "
                                         r"values in \[0, 48\]"):
        embedding_radius_bound(E, labels, queries=[0, 48])
    assert one_block[y == 3].item() == 0  # no other item of its class: not certified
    assert (one_block[y < 3] > 0).any()
    for i in range(len(E)):  # still sound against the exact radius
        rest = np.delete(np.arange(len(E)), i)
        exact = exact_radius_1nn(E.numpy()[rest], y[rest], E.numpy()[i:i + 1], y[i:i + 1])[0]
        assert one_block[i] <= exact + 1e-9
    with pytest.raises(ValueError, match="emb contains NaN"):
        embedding_radius_bound(E * float("nan"), labels)


def test_certified_input_radius_checks_its_arrays():
    for kw, match in [(dict(embedding_radius=[np.nan]), "embedding_radius contains NaN"),
                      (dict(body_norms=[-1.0]), "body_norms must be finite and >= 0"),
                      (dict(body_norms=[np.inf]), "body_norms must be finite and >= 0"),
                      (dict(body_norms=[1.0, 2.0]), r"body_norms must have shape \(1,\)"),
                      (dict(body_norms=None), "body_norms is needed"),
                      (dict(embedding_radius=[[0.1]]), "embedding_radius must be a 1-D array"),
                      (dict(embedding_radius=["x"]), "embedding_radius must be a 1-D array of numbers"),
                      (dict(n_features=0), "n_features must be a positive integer, got 0"),
                      (dict(norm="l1"), "norm must be")]:
        args = dict(embedding_radius=[0.1], body_norms=[1.0], lipschitz=1.0, n_features=4) | kw
        with pytest.raises(ValueError, match=match):
            certified_input_radius(args.pop("embedding_radius"), args.pop("body_norms"), **args)
    # negative margins (a query already wrong) give radius 0; unnormalised models need no norms
    assert certified_input_radius([-0.3], None, lipschitz=2.0, n_features=4, norm="l2", normalized=False)[0] == 0


def test_lipschitz_bound_refuses_what_it_cannot_bound():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        lipschitz_bound("abc")
    conv = nn.Sequential(nn.Conv2d(1, 2, 3))
    for shape in [(1, -3, 5), "abc", (), (1, 2.5, 3)]:
        with pytest.raises(ValueError, match="input_shape must be a tuple of positive ints"):
            lipschitz_bound(conv, input_shape=shape)
    with pytest.raises(ValueError, match=r"input_shape \(1, 8, 8\) does not fit the model"):
        lipschitz_bound(SmallCNN(4), input_shape=(1, 8, 8))
    lin = nn.Sequential(nn.Linear(3, 3))
    with torch.no_grad():
        lin[0].weight[1, 1] = float("inf")
    with pytest.raises(ValueError, match="model parameter '0.weight' holds NaN or infinity"):
        lipschitz_bound(lin)
    with pytest.raises(TypeError, match="no running statistics"):
        lipschitz_bound(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, track_running_stats=False)))


def test_embed_reports_non_finite_embeddings_and_bad_batch_size():
    from robust_metric_learning.deep import embed

    model, X, _ = _retrieval_problem()
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        embed(model, X, batch_size=0)
    with torch.no_grad():
        model.body[1].bias[0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"NaN or infinite embeddings for X: first at row 0 \(7 of rows 0..6\)"):
        embed(model, X, batch_size=7)


def test_adversarial_retrieval_takes_string_labels():
    """String labels give the same result as their integer codes (not a TypeError)."""
    from robust_metric_learning.attacks import PGD
    from robust_metric_learning.deep import MLP, adversarial_retrieval

    torch.manual_seed(0)
    model = MLP(16, hidden=(8,), embedding_dim=4)
    X = np.random.default_rng(0).random((6, 16)).astype("f4")
    kw = dict(eps=[0.0, 0.1], attack=PGD(steps=3, random_state=0))
    by_str = adversarial_retrieval(model, X, np.array(list("aabbcc")), **kw)
    by_int = adversarial_retrieval(model, X, np.array([0, 0, 1, 1, 2, 2]), **kw)
    assert by_str["precision_at_1"] == by_int["precision_at_1"]


def test_embedding_radius_bound_with_near_duplicates_of_other_classes():
    """Two gallery items 1e-9 apart under different labels: the expanded square of their pair
    norm cancels; the bound must stay the reference's (pair norms by subtraction), not blow up."""
    from robust_metric_learning.deep import embedding_radius_bound

    rng = np.random.default_rng(0)
    n_checked = 0
    for _ in range(30):
        G = rng.normal(size=(20, 4))
        G /= np.linalg.norm(G, axis=1, keepdims=True)
        y = np.arange(20) % 3
        G[5] = G[4] + 1e-9 * rng.normal(size=4)
        y[5] = (y[4] + 1) % 3
        r = embedding_radius_bound(torch.tensor(G), torch.tensor(y)).numpy()
        for q in range(20):
            d = ((G - G[q]) ** 2).sum(1)
            d[q] = np.inf
            if y[np.argmin(d)] != y[q]:
                continue
            P = np.flatnonzero((y == y[q]) & (np.arange(20) != q))
            P = P[np.argsort(d[P], kind="stable")][:5]
            ref = min(max((d[j] - d[p]) / (2 * np.linalg.norm(G[p] - G[j])) for p in P)
                      for j in np.flatnonzero(y != y[q]))
            assert r[q] <= max(ref, 0.0) * (1 + 1e-5) + 1e-12
            n_checked += 1
    assert n_checked > 150


def test_retrieval_functions_refuse_what_would_give_a_silently_wrong_answer():
    from robust_metric_learning.attacks import PGD, RetrievalEnsemble
    from robust_metric_learning.deep import adversarial_retrieval, certified_retrieval

    rng = np.random.default_rng(0)
    G = rng.normal(size=(20, 3))
    lab = np.repeat(np.arange(4), 5)
    own = np.arange(20)
    base = retrieval_metrics(G, lab, G, lab, self_index=own)
    for q, match in [(np.where(own[:, None] == 3, np.inf, G), "query contains NaN or infinity"),
                     (np.where(own[:, None] == 3, np.nan, G), "query contains NaN or infinity"),
                     (G * 1e200, r"query has values of magnitude up to .*rescale"),
                     (G[:, :0], r"query must be a 2-D array \(n, dim\) with n >= 1 and dim >= 1"),
                     (np.full(G.shape, "a"), "query must be a 2-D array of")]:
        with pytest.raises(ValueError, match=match):
            retrieval_metrics(q, lab, G, lab, self_index=own)
    with pytest.raises(ValueError, match="gallery contains NaN or infinity"):
        retrieval_metrics(G, lab, np.where(own[:, None] == 0, np.nan, G), lab)
    for labels, match in [(np.where(own == 2, np.nan, lab.astype(float)), "query_labels contains NaN"),
                          (np.stack([lab, lab], 1), r"query_labels must be a 1-D array of labels, got shape \(20, 2\)"),
                          (lab.astype(str), "query_labels and gallery_labels must be labels of one kind"),
                          (lab[:-1], "query_labels has 19 labels, query has 20 samples")]:
        with pytest.raises(ValueError, match=match):
            retrieval_metrics(G, labels, G, lab, self_index=own)
    for index, match in [(np.ones(20, bool), "got torch.bool"), (np.full(20, -5), r"got values in \[-5, -5\]"),
                         (own + 0.7, "got torch.float64"), (own[:5], r"of shape \(5,\)")]:
        with pytest.raises(ValueError, match=r"self_index must be an integer array of shape \(20,\) of gallery rows"):
            retrieval_metrics(G, lab, G, lab, self_index=index)
        with pytest.raises(ValueError, match=match):
            retrieval_metrics(G, lab, G, lab, self_index=index)
    with pytest.raises(ValueError, match="nmi must be True or False"):
        retrieval_metrics(G, lab, G, lab, nmi="yes")
    with pytest.raises(ValueError, match=r"seed must be an integer seed in \[0, 2\*\*32 - 1\]"):
        retrieval_metrics(G, lab, G, lab, nmi=True, seed=-1)
    # reversed views and labels of any kind give the same figures
    assert retrieval_metrics(G[::-1], lab[::-1].astype(str), G, lab.astype(str), self_index=own[::-1]) == \
        pytest.approx(base, abs=1e-12)
    # the margin bound: tensor labels go through the same checks; degenerate shapes are refused
    E = torch.as_tensor(G)
    with pytest.raises(ValueError, match="labels contains NaN"):
        embedding_radius_bound(E, torch.as_tensor(np.where(own == 1, np.nan, lab.astype(float))))
    with pytest.raises(ValueError, match=r"emb must be a 2-D array \(n, dim\) with n >= 1"):
        embedding_radius_bound(E[:0], lab[:0])
    with pytest.raises(ValueError, match=r"emb must be a 2-D array \(n, dim\)"):
        embedding_radius_bound(E[:, 0], list(lab))
    # eps: numbers only; a budget past the box's diameter is the whole box (no overflow)
    model, X, y = _retrieval_problem()
    for eps in (True, "0.1", b"0.1", None, [0.1, None]):
        for fn in (adversarial_retrieval, certified_retrieval):
            with pytest.raises(ValueError, match="eps must be a number or a list of numbers"):
                fn(model, X, y, eps=eps)
    pgd = PGD(steps=2, random_state=0)
    huge = adversarial_retrieval(model, X, y, eps=[1e39], attack=pgd)
    whole = adversarial_retrieval(model, X, y, eps=[1.0], attack=pgd)
    assert huge["precision_at_1"] == whole["precision_at_1"]
    assert np.array_equal(huge["flipped"][0], whole["flipped"][0])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        adversarial_retrieval(None, X, y, eps=0.1)
    with pytest.raises(ValueError, match=r"y must be labels that can be compared and sorted \(one type\)"):
        adversarial_retrieval(model, X, np.array([1, "a"] * 30, dtype=object), eps=0.1)
    with pytest.raises(ValueError, match=r"an instance \(e.g. RetrievalEnsemble\(\)\), got the class"):
        adversarial_retrieval(model, X, y, eps=0.1, attack=RetrievalEnsemble)
    with pytest.raises(ValueError, match="queries must be a non-empty 1-D array of rows of X .*got an empty list"):
        certified_retrieval(model, X, y, eps=0.1, queries=[])
    with pytest.raises(ValueError, match=r"The 'rounds' parameter of RetrievalEnsemble must be an int in \[0, 1000\]"):
        adversarial_retrieval(model, X, y, eps=0.1, attack=RetrievalEnsemble(rounds=10 ** 9))


def test_adversarial_retrieval_checks_what_the_attack_returns():
    """An attack that leaves its eps-ball or the box would report robustness that is not there."""
    from robust_metric_learning.attacks import PGD
    from robust_metric_learning.deep import adversarial_retrieval

    model, X, y = _retrieval_problem()

    class Cheat(PGD):
        def __init__(self, change, **kw):
            super().__init__(steps=1, **kw)
            self.change = change

        def __call__(self, model, inputs, objective, *, eps, index=None):
            res = super().__call__(model, inputs, objective, eps=eps, index=index)
            return res[0], self.change(torch.as_tensor(inputs), res[1], eps), res[2]

    cases = [(lambda x, c, e: (x + 2 * e).clamp(0, 1), r"perturbed an input by 0\.1 in linf, beyond eps = 0\.05"),
             (lambda x, c, e: c + 1.0, r"returned inputs outside \[0, 1\]"),
             (lambda x, c, e: c[:, :8], r"returned inputs of shape \(\d+, 8\) for \(\d+, 16\)"),
             (lambda x, c, e: "junk", "its clipped inputs could not be read")]
    for change, match in cases:
        with pytest.raises(ValueError, match=match):
            adversarial_retrieval(model, X, y, eps=0.05, attack=Cheat(change, random_state=0))
    honest = adversarial_retrieval(model, X, y, eps=0.05, attack=Cheat(lambda x, c, e: c, random_state=0))
    assert honest["precision_at_1"][0] <= honest["clean"]["precision_at_1"]


@pytest.mark.parametrize("make", [lambda: SmallCNN(8), lambda: SmallCNN(8, spectral_norm=True)])
def test_conv_models_run_channels_last_with_the_channels_first_values(make):
    import copy

    torch.manual_seed(0)
    model = make().eval()
    convs = [p for p in model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    first = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    # (a weight with one input channel is both layouts at once)
    assert not any(p.is_contiguous(memory_format=torch.channels_last) for p in first.parameters()
                   if p.dim() == 4 and p.shape[1] > 1)
    x = torch.rand(16, 784, requires_grad=True)
    w = torch.randn(16, 8)
    out, ref = model(x), first(x)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    (g,), (g_ref,) = (torch.autograd.grad((o * w).sum(), x) for o in (out, ref))
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-4)
    # the layout survives a state-dict round trip into a fresh model
    again = make()
    again.load_state_dict(first.state_dict())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in again.parameters() if p.dim() == 4)


def test_embedding_net_takes_layers_without_a_channels_last_layout():
    from robust_metric_learning.deep import EmbeddingNet

    for sn in (False, True):
        body = nn.Sequential(nn.Unflatten(1, (1, 4, 4, 4)), nn.Conv3d(1, 2, 3, padding=1), nn.Flatten(),
                             nn.Linear(128, 3))
        assert EmbeddingNet(body, spectral_norm=sn)(torch.rand(2, 64)).shape == (2, 3)


# ------------------------------------------------------------------ bad labels, epochs, flags and widths


def test_samplers_refuse_non_finite_labels_and_bad_epochs():
    for make in (lambda y: PairBatchSampler(y, pairs=2), lambda y: BalancedBatchSampler(y, m=2)):
        with pytest.raises(ValueError, match="labels contains NaN or infinity"):
            make([0.0, np.nan, 1.0, 1.0])
        with pytest.raises(ValueError, match="labels contains NaN or infinity"):
            make([0.0, 0.0, np.inf, np.inf])
        s = make([0, 0, 1, 1])
        for epoch in ("x", -1, 1.5):
            with pytest.raises(ValueError, match=f"epoch must be an integer >= 0, got {epoch!r}"):
                s.set_epoch(epoch)
        s.set_epoch(np.int64(2))
        assert s.epoch == 2 and len(list(s)) == len(s)


def test_pair_miners_check_embeddings_and_labels():
    for miner in (PairedRandomTripletMiner(), PairedSoftHardTripletMiner()):
        emb = torch.rand(6, 2)
        torch.manual_seed(0)
        ref = miner(emb, torch.tensor([0, 0, 1, 1, 2, 2]))
        for labels in (np.array(["a", "a", "b", "b", "c", "c"]), [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]):
            torch.manual_seed(0)  # any class labels: the same triplets as their integer codes
            assert all(torch.equal(u, v) for u, v in zip(miner(emb, labels), ref))
        with pytest.raises(ValueError, match=r"embeddings must be a 2-D tensor of embeddings \(batch, dim\), got None"):
            miner(None, torch.tensor([0, 0, 1, 1]))
        with pytest.raises(ValueError, match=r"embeddings must be a 2-D tensor .*got shape \(4,\)"):
            miner(torch.zeros(4), torch.tensor([0, 0, 1, 1]))
        with pytest.raises(ValueError, match="even length .*at least one.*, got 0 for 0 embeddings"):
            miner(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
        with pytest.raises(ValueError, match="labels contains NaN or infinity"):
            miner(torch.zeros(4, 2), torch.tensor([0.0, 0.0, np.nan, np.nan]))
        with pytest.raises(ValueError, match="labels has 3 labels, embeddings has 4 samples"):
            miner(torch.zeros(4, 2), torch.tensor([0, 0, 1]))


def test_pair_sampler_says_when_the_labels_cannot_give_every_batch_two_classes():
    y = np.array([0, 0] + [1] * 10)
    with pytest.raises(ValueError, match=r"pairs=2 makes 6 batches per epoch of the 12 samples of y, .* only 2 "
                                         r"samples are outside it: pass pairs >= 6"):
        PairBatchSampler(y, pairs=2).require_two_classes(name="y")
    s = PairBatchSampler(y, pairs=6)
    s.require_two_classes()
    for epoch in range(10):
        s.set_epoch(epoch)
        assert all(len(set(y[b])) == 2 for b in s)


def test_models_refuse_non_bool_flags_and_bad_layer_widths():
    for make in (lambda **kw: MLP(4, hidden=(8,), embedding_dim=3, **kw), lambda **kw: RC2F2(4, **kw),
                 lambda **kw: SmallCNN(4, **kw)):
        for flag in ("normalize", "spectral_norm"):
            with pytest.raises(ValueError, match=f"{flag} must be True or False, got 'no'"):
                make(**{flag: "no"})
            with pytest.raises(ValueError, match=f"{flag} must be True or False, got 1"):
                make(**{flag: 1})
        assert isinstance(make(normalize=np.bool_(False)).head, nn.Identity)
    for hidden in (8, (8, 0), (8, 2.0), "8", (True,)):
        with pytest.raises(ValueError, match=f"The 'hidden' parameter of MLP must be a sequence of an int in "
                                             rf"\[1, inf\]; got {re.escape(repr(hidden))}"):
            MLP(4, hidden=hidden)
    assert MLP(4, hidden=[np.int64(5), 6], embedding_dim=3)(torch.rand(2, 4)).shape == (2, 3)
    assert MLP(4, hidden=(), embedding_dim=3)(torch.rand(2, 4)).shape == (2, 3)
    for channels in (8, (8,), (8, 0), (8, 16, 32)):
        with pytest.raises(ValueError, match="The 'channels' parameter of SmallCNN must be"):
            SmallCNN(4, channels=channels)
