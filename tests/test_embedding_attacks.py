"""Attacks on embedding models (attacks/embedding/: norms, objectives, PGD, APGD, ensembles).

Checked against independent references: finite differences, closed-form optima of linear
models (SVD, l1 norms), brute-force nearest neighbours, a counted number of forward passes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from robust_metric_learning.attacks import (
    APGD,
    FGSM,
    PGD,
    STEP_SCHEDULES,
    EmbeddingAttack,
    EmbeddingShift,
    EnsembleAttack,
    L2Norm,
    LinfNorm,
    Objective,
    RandomSearch,
    RetrievalCrossEntropy,
    RetrievalEnsemble,
    RetrievalObjective,
    TripletRoleObjective,
    apgd_checkpoints,
    get_norm,
    perturb,
)
from robust_metric_learning.attacks.embedding import apgd as apgd_module

torch.set_num_threads(1)


# ------------------------------------------------------------------------- fixtures


class TinyCNN(torch.nn.Module):
    """8x8 images -> L2-normalised embeddings (smooth activations, for finite differences)."""

    def __init__(self, dim: int = 6, act=torch.nn.Tanh):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.act = act()
        self.fc = torch.nn.Linear(4 * 6 * 6, dim)

    def forward(self, x):
        h = self.act(self.bn(self.conv(x)))
        return torch.nn.functional.normalize(self.fc(h.flatten(1)), dim=1)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    idx = np.random.default_rng(0).permutation(len(X))[:120]
    x = torch.tensor(X[idx] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return x, y[idx]


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    net = TinyCNN()
    with torch.no_grad():  # give batch norm non-trivial running statistics
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _mlp(n_in=10, dim=4, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(n_in, 12), torch.nn.Tanh(), torch.nn.Linear(12, dim)).to(dtype)


# ------------------------------------------------------------------------- norms


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_norm_hooks(norm):
    nrm = get_norm(norm)
    gen = torch.Generator().manual_seed(0)
    eps = torch.tensor([0.0, 0.1, 0.5, 2.0])
    d = nrm.random_start((4, 3, 5), eps, gen)
    assert torch.all(nrm.measure(d) <= eps * (1 + 1e-6))
    g = torch.randn(4, 3, 5, generator=gen)
    g[0] = 0.0
    v = nrm.normalize(g)
    dual = g.flatten(1).abs().sum(1) if norm == "linf" else g.flatten(1).norm(dim=1)
    # the direction of unit norm maximising <g, v>: the inner product is the dual norm of g
    torch.testing.assert_close((g * v).flatten(1).sum(1), dual)
    assert torch.allclose(nrm.measure(v)[1:], torch.ones(3)) and float(nrm.measure(v)[0]) == 0.0
    # projection: inside the ball, identity inside it, idempotent, and nearest (vs random ball points)
    big = 3 * torch.randn(4, 3, 5, generator=gen)
    p = nrm.project(big, eps)
    assert torch.all(nrm.measure(p) <= eps * (1 + 1e-6))
    torch.testing.assert_close(nrm.project(p, eps), p)
    small = nrm.random_start((4, 3, 5), eps, gen)
    torch.testing.assert_close(nrm.project(small, eps), small)
    for _ in range(20):
        z = nrm.random_start((4, 3, 5), eps, gen)
        assert torch.all((big - p).flatten(1).norm(dim=1) <= (big - z).flatten(1).norm(dim=1) + 1e-6)
    ref = big.flatten(1).abs().amax(1) if norm == "linf" else torch.linalg.norm(big.flatten(1), dim=1)
    torch.testing.assert_close(nrm.measure(big), ref)
    # scalar eps works the same as a constant per-sample tensor
    torch.testing.assert_close(nrm.project(big, 0.3), nrm.project(big, torch.full((4,), 0.3)))


def test_random_start_is_uniform_in_the_ball():
    gen = torch.Generator().manual_seed(1)
    d = L2Norm().random_start((20000, 2), 1.0, gen)
    r = d.norm(dim=1)
    # uniform in the 2-D disc: P(r <= t) = t^2; direction uniform: mean of the angle cosine 0
    assert abs(float((r <= 0.5).float().mean()) - 0.25) < 0.015
    assert abs(float((r <= 0.9).float().mean()) - 0.81) < 0.015
    assert abs(float((d[:, 0] / r).mean())) < 0.02
    u = LinfNorm().random_start((20000, 3), 0.5, gen)
    assert abs(float((u.abs() <= 0.25).float().mean()) - 0.5) < 0.015
    corners = LinfNorm().random_direction((1000, 3), gen)
    assert set(corners.unique().tolist()) == {-1.0, 1.0}


def test_get_norm():
    assert isinstance(get_norm("linf"), LinfNorm) and isinstance(get_norm("l2"), L2Norm)
    n = L2Norm()
    assert get_norm(n) is n
    with pytest.raises(ValueError, match="norm must be one of 'linf', 'l2'.*got 'l1'"):
        get_norm("l1")


# ------------------------------------------------------------------------- objectives


def _retrieval_loop(q, gallery, g_lab, q_lab, own):
    """Brute-force reference: (d_same - d_other, label of the 1-NN) for one query embedding."""
    d = [float(np.linalg.norm(q - g)) for g in gallery]
    cand = [j for j in range(len(gallery)) if j != own]
    same = [d[j] for j in cand if g_lab[j] == q_lab]
    other = [d[j] for j in cand if g_lab[j] != q_lab]
    nn = min(cand, key=lambda j: (d[j], j))
    return (min(same) if same else 0.0) - min(other), g_lab[nn]


def test_retrieval_objective_matches_a_loop():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(30, 5))
    g_lab = rng.integers(0, 3, size=30)
    g_lab[7] = 9  # a class with a single item: query 7 has no other same-class item
    q = rng.normal(size=(12, 5))
    own = np.array([0, 1, 2, 3, 4, 5, 6, 7, -1, -1, 10, -1])
    q_lab = np.where(own >= 0, g_lab[np.maximum(own, 0)], rng.integers(0, 3, size=12))
    obj = RetrievalObjective(torch.tensor(gallery), g_lab, q_lab, query_in_gallery=own)
    index = torch.arange(12)
    scores = obj(torch.tensor(q), index)
    hit = obj.success(torch.tensor(q), index)
    for i in range(12):
        s_ref, lab = _retrieval_loop(q[i], gallery, g_lab, q_lab[i], own[i])
        assert float(scores[i]) == pytest.approx(s_ref, abs=1e-9)
        assert bool(hit[i]) == (lab != q_lab[i])
    # the query itself is excluded: a query equal to its own gallery item is still judged by the others
    s0 = obj(torch.tensor(gallery[:1]), torch.tensor([0]))
    assert float(s0) == pytest.approx(_retrieval_loop(gallery[0], gallery, g_lab, q_lab[0], 0)[0], abs=1e-9)
    # a subset of queries by index gives the same rows
    sub = torch.tensor([11, 3, 3])
    torch.testing.assert_close(obj(torch.tensor(q[[11, 3, 3]]), sub), scores[sub])


def test_retrieval_objective_with_a_pml_distance():
    from pytorch_metric_learning.distances import CosineSimilarity, LpDistance

    rng = np.random.default_rng(1)
    gallery = torch.tensor(rng.normal(size=(20, 4)))
    lab = rng.integers(0, 2, size=20)
    q = torch.tensor(rng.normal(size=(5, 4)))
    ref = RetrievalObjective(torch.nn.functional.normalize(gallery, dim=1), lab, lab[:5],
                             query_in_gallery=np.arange(5))
    qn = torch.nn.functional.normalize(q, dim=1)
    ind = torch.arange(5)
    for dist in (LpDistance(), CosineSimilarity()):
        obj = RetrievalObjective(gallery, lab, lab[:5], query_in_gallery=np.arange(5), distance=dist)
        assert torch.equal(obj.success(q, ind), ref.success(qn, ind))
        # cosine similarity is negated: the same ranking as euclidean on normalised embeddings
        s = obj(q, ind)
        assert torch.equal(s > 0, ref(qn, ind) > 0)


@pytest.mark.parametrize("role", ["anchor", "positive", "negative"])
def test_triplet_role_objective(role):
    rng = np.random.default_rng(2)
    a, p, n, e = (rng.normal(size=(6, 3)) for _ in range(4))
    obj = TripletRoleObjective(torch.tensor(a), torch.tensor(p), torch.tensor(n), role=role)
    s = obj(torch.tensor(e), torch.arange(6)).numpy()
    hit = obj.success(torch.tensor(e), torch.arange(6)).numpy()
    A, P, N = (e if role == r else m for r, m in (("anchor", a), ("positive", p), ("negative", n)))
    dap, dan = np.linalg.norm(A - P, axis=1), np.linalg.norm(A - N, axis=1)
    ref = {"positive": dap, "negative": -dan, "anchor": dap - dan}[role]
    np.testing.assert_allclose(s, ref, rtol=1e-12)
    np.testing.assert_array_equal(hit, dap >= dan)


# ------------------------------------------------------------------------- gradients


def _fd_grad(fn, x, h=1e-6):
    g = torch.zeros_like(x)
    flat = x.reshape(-1)
    for k in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[k] = h
        g.reshape(-1)[k] = (fn((flat + e).reshape(x.shape)) - fn((flat - e).reshape(x.shape))) / (2 * h)
    return g


def _objectives_for(net, x0, rng):
    with torch.no_grad():
        emb = net(x0)
        gallery = net(torch.tensor(rng.uniform(size=(15, x0.shape[1]))))
    g_lab = np.arange(15) % 3
    other = torch.tensor(rng.normal(size=emb.shape))
    return {
        "shift": EmbeddingShift(other),  # a reference away from f(x): smooth there
        "retrieval": RetrievalObjective(gallery, g_lab, np.arange(len(x0)) % 3),
        "anchor": TripletRoleObjective(emb, other, emb.flip(0), role="anchor"),
        "positive": TripletRoleObjective(other, emb, emb.flip(0), role="positive"),
        "negative": TripletRoleObjective(other, emb.flip(0), emb, role="negative"),
    }


@pytest.mark.parametrize("name", ["shift", "retrieval", "anchor", "positive", "negative"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_follows_the_objective_gradient(name, norm):
    """One PGD step from x (no random start) moves along normalize(grad), grad by finite differences."""
    rng = np.random.default_rng(3)
    net = _mlp()
    x = torch.tensor(rng.uniform(0.3, 0.7, size=(4, 10)))
    obj = _objectives_for(net, x, rng)[name]
    alpha = 1e-4
    x_adv, score = perturb(net, x, obj, norm=norm, eps=alpha, steps=1, step_size=alpha, random_start=False,
                           return_score=True)
    for i in range(len(x)):
        def f(xi, i=i):
            with torch.no_grad():
                return obj(net(xi[None]), torch.tensor([i]))[0]
        g = _fd_grad(f, x[i])
        step = (x_adv[i] - x[i]) / alpha
        if norm == "l2":
            torch.testing.assert_close(step, g / g.norm(), atol=1e-5, rtol=0)
        else:
            big = g.abs() > 1e-6
            assert big.sum() >= 8
            torch.testing.assert_close(step[big], g[big].sign(), atol=1e-5, rtol=0)
        # the best iterate is the stepped point, whose objective is above the start's
        assert float(score[i]) == pytest.approx(float(f(x_adv[i])), rel=1e-12)
        assert float(score[i]) > float(f(x[i]))


# ------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.8)])
def test_pgd_stays_in_the_threat_model(cnn, digits, norm, eps):
    x, _ = digits
    x = x[:40]
    with torch.no_grad():
        obj = EmbeddingShift(cnn(x))
    nrm = get_norm(norm)
    for attack in (PGD(norm=norm, steps=5, random_state=0), PGD(norm=norm, steps=3, step_size=10 * eps, random_state=0),
                   FGSM(norm=norm, random_start=True, random_state=0), RandomSearch(norm=norm, random_state=0)):
        raw, clipped, success = attack(cnn, x, obj, eps=eps)
        for out in (raw, clipped):
            assert out.shape == x.shape
            assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
            assert torch.all(nrm.measure(out - x) <= eps + 1e-6)
        # digits have many exact 0 pixels: clipping to the box must have been active
        assert bool(((clipped == 0) & (x == 0)).any())
        assert not success.any()  # EmbeddingShift without threshold never succeeds
        assert float(attack(cnn, x, obj, eps=eps).scores.min()) > 0


class _Overshoot(EmbeddingAttack):
    """A careless attack: steps 3 eps along the gradient-free direction +1, out of ball and box."""

    def _run(self, model, x, objective, index, *, norm, eps, generator):
        return x + 3 * eps


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_base_class_clips_and_rechecks(cnn, digits, norm):
    x, _ = digits
    x = x[:20]
    with torch.no_grad():
        obj = EmbeddingShift(cnn(x), threshold=0.05)
    raw, clipped, success = res = _Overshoot(norm=norm, batch_size=7)(cnn, x, obj, eps=[0.1, 0.4])
    nrm = get_norm(norm)
    assert float(raw.max()) > 1.0  # the raw output is returned as it is
    for e, eps in enumerate((0.1, 0.4)):
        assert torch.all(nrm.measure(clipped[e] - x) <= eps + 1e-6)
        assert float(clipped[e].min()) >= 0 and float(clipped[e].max()) <= 1
        with torch.no_grad():
            emb = cnn(clipped[e])
        torch.testing.assert_close(res.embeddings[e], emb)
        torch.testing.assert_close(res.scores[e], obj(emb, torch.arange(20)))
        assert torch.equal(success[e], obj(emb, torch.arange(20)) >= 0.05)
    assert success.any()


def test_more_restarts_never_lower_the_best(cnn, digits):
    x, _ = digits
    x = x[:60]
    with torch.no_grad():
        obj = EmbeddingShift(cnn(x))
    scores = []
    for restarts in (1, 2, 5):
        gen = torch.Generator().manual_seed(7)
        _, s = perturb(cnn, x, obj, eps=0.05, steps=3, restarts=restarts, generator=gen, return_score=True)
        scores.append(s)
    assert torch.all(scores[1] >= scores[0]) and torch.all(scores[2] >= scores[1])
    assert bool((scores[2] > scores[0]).any())  # restarts did help somewhere
    # the attack objects, batched, with one seed: the same order (up to the clipping's rounding)
    res = [PGD(steps=3, restarts=r, batch_size=25, random_state=3)(cnn, x, obj, eps=0.05).scores for r in (1, 4)]
    assert torch.all(res[1] >= res[0] - 1e-6)


def test_fixed_step_pgd_is_monotone_in_steps_and_restarts(cnn, digits):
    # with a fixed relative step and one seed, a longer run extends the shorter one's trajectory and
    # restart 1 is the single run, so keeping the best iterate can only raise the objective
    x, _ = digits
    x = x[:60]
    with torch.no_grad():
        obj = EmbeddingShift(cnn(x))
    run = {(s, r): PGD(steps=s, restarts=r, rel_step_size=0.25, batch_size=25, random_state=5)(cnn, x, obj, eps=0.05)
           for s, r in ((4, 1), (10, 1), (4, 3))}
    assert torch.all(run[10, 1].scores >= run[4, 1].scores - 1e-6)  # up to the final clipping's rounding
    assert torch.all(run[4, 3].scores >= run[4, 1].scores - 1e-6)
    assert bool((run[10, 1].scores > run[4, 1].scores).any())


def test_pgd_beats_random_search_with_the_same_budget(cnn, digits):
    x, _ = digits
    with torch.no_grad():
        obj = EmbeddingShift(cnn(x))
    for norm, eps in (("linf", 0.05), ("l2", 0.5)):
        pgd = PGD(norm=norm, steps=10, random_state=0)
        rs_ball = RandomSearch(norm=norm, n_queries=pgd.n_forward, sample="ball", random_state=0)
        rs_sphere = RandomSearch(norm=norm, n_queries=pgd.n_forward, random_state=0)
        s_pgd = pgd(cnn, x, obj, eps=eps).scores
        for rs in (rs_ball, rs_sphere):
            s_rs = rs(cnn, x, obj, eps=eps).scores
            assert torch.all(s_pgd >= s_rs), (norm, rs.sample, int((s_pgd < s_rs).sum()))


def test_same_number_of_forward_passes():
    net = _mlp(dtype=torch.float32)
    calls = []
    net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x = torch.rand(7, 10)
    with torch.no_grad():
        obj = EmbeddingShift(net(x))
    calls.clear()
    pgd = PGD(steps=4, restarts=3, batch_size=7)
    pgd(net, x, obj, eps=0.1)
    n_pgd = len(calls)
    calls.clear()
    RandomSearch(n_queries=pgd.n_forward, batch_size=7)(net, x, obj, eps=0.1)
    assert n_pgd == len(calls) == pgd.n_forward + 1  # + the base class's check of the clipped points


# ------------------------------------------------------------------------- analytic optima


def test_pgd_reaches_the_l2_optimum_of_a_linear_model():
    """max ||W delta||_2 over ||delta||_2 <= eps is eps * sigma_max(W) (box inactive at x = 0.5)."""
    rng = np.random.default_rng(4)
    W = rng.normal(size=(5, 20))
    net = torch.nn.Linear(20, 5).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor(W))
    x = torch.full((3, 20), 0.5, dtype=torch.float64)
    eps = 0.3
    opt = eps * np.linalg.svd(W, compute_uv=False)[0]
    with torch.no_grad():
        obj = EmbeddingShift(net(x))
    s = PGD(norm="l2", steps=60, step_size=5 * eps, random_state=0)(net, x, obj, eps=eps).scores
    assert torch.all(s <= opt * (1 + 1e-9))
    assert torch.all(s >= opt * (1 - 1e-6))


def test_pgd_reaches_the_linf_optimum_of_a_linear_model():
    """For rank-one W = u v^T, max ||W delta||_2 over ||delta||_inf <= eps is eps ||u||_2 ||v||_1,
    reached by PGD's default schedule (2 eps / steps) in 10 steps from any start."""
    rng = np.random.default_rng(5)
    u, v = rng.normal(size=4), rng.normal(size=30)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(30, 4, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor(np.outer(u, v), dtype=torch.float32))
    x = torch.tensor(rng.uniform(0.25, 0.75, size=(6, 5, 6)), dtype=torch.float32)
    eps = 0.2
    opt = eps * np.linalg.norm(u) * np.abs(v).sum()
    with torch.no_grad():
        obj = EmbeddingShift(net(x))
    raw, clipped, _ = PGD(steps=10, random_state=1)(net, x, obj, eps=eps)
    delta = (clipped - x).reshape(6, 30)
    np.testing.assert_allclose(np.abs(delta.numpy()), eps, rtol=1e-5)  # a vertex of the box
    np.testing.assert_allclose(PGD(steps=10, random_state=1)(net, x, obj, eps=eps).scores.numpy(), opt, rtol=1e-5)


def test_fgsm_on_a_linear_model():
    """Triplet positive role: grad of ||a - W x'|| is -W^T (a - W x') / ||.||: FGSM moves by its sign."""
    rng = np.random.default_rng(6)
    W = rng.normal(size=(3, 12))
    net = torch.nn.Linear(12, 3, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor(W))
    x = rng.uniform(0.2, 0.8, size=(5, 12))
    a = rng.normal(size=(5, 3))
    obj = TripletRoleObjective(torch.tensor(a), torch.tensor(x @ W.T), torch.tensor(a), role="positive")
    raw, clipped, _ = FGSM()(net, torch.tensor(x), obj, eps=0.1)
    g = (x @ W.T - a) @ W
    np.testing.assert_allclose(clipped.numpy(), x + 0.1 * np.sign(g), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------- retrieval


def test_retrieval_attack_success_rechecked_by_brute_force(cnn, digits):
    x, y = digits
    with torch.no_grad():
        gallery = cnn(x).double().numpy()
    n = len(x)
    # queries = the gallery itself (leave-one-out); attack only those correct at R@1 (brute force)
    nn_clean = [min((j for j in range(n) if j != i), key=lambda j: np.linalg.norm(gallery[i] - gallery[j]))
                for i in range(n)]
    correct = np.array([y[nn_clean[i]] == y[i] for i in range(n)])
    assert correct.sum() >= 30
    q = np.flatnonzero(correct)
    obj = RetrievalObjective(torch.tensor(gallery), y, y, query_in_gallery=np.arange(n))
    eps = [0.0, 0.02, 0.1]
    res = PGD(steps=10, restarts=2, random_state=0)(cnn, x[q], obj, eps=eps, index=q)
    assert res.clipped.shape == (3,) + x[q].shape and res.success.shape == (3, len(q))
    assert not res.success[0].any()  # eps = 0: every attacked query is still correct
    rate = res.success.double().mean(1)
    assert 0.1 < float(rate[1]) < float(rate[2])
    for e in range(3):
        with torch.no_grad():
            emb = cnn(res.clipped[e]).double().numpy()
        torch.testing.assert_close(res.embeddings[e].double(), torch.tensor(emb))
        for k, i in enumerate(q):
            s_ref, lab = _retrieval_loop(emb[k], gallery, y, y[i], i)
            assert bool(res.success[e, k]) == (lab != y[i])
            assert float(res.scores[e, k]) == pytest.approx(s_ref, abs=1e-5)
    # a sweep equals separate calls (one seed per batch, shared by every eps)
    single = PGD(steps=10, restarts=2, random_state=0)(cnn, x[q], obj, eps=0.02, index=q)
    torch.testing.assert_close(single.clipped, res.clipped[1])


# ------------------------------------------------------------------------- model state


def test_perturb_keeps_mode_and_parameter_grads(digits):
    x, _ = digits
    torch.manual_seed(1)
    net = TinyCNN()
    net.train()
    with torch.no_grad():
        obj = EmbeddingShift(net(x[:16]))
    for p in net.parameters():
        p.grad = None
    with torch.no_grad():  # even inside no_grad (the caller's context) the attack gets its gradients
        x_adv = perturb(net, x[:16], obj, eps=0.05, steps=2)
    assert net.training and all(m.training for m in net.modules())
    assert all(p.grad is None for p in net.parameters())
    assert not x_adv.requires_grad
    # inside a training step: gradients already accumulated stay untouched
    loss = net(x[:16]).sum()
    loss.backward()
    before = [p.grad.clone() for p in net.parameters()]
    perturb(net, x[:16], obj, eps=0.05, steps=2)
    assert all(torch.equal(b, p.grad) for b, p in zip(before, net.parameters()))
    net.eval()
    perturb(net, x[:16], obj, eps=0.05, steps=2)
    assert not net.training


def test_attack_sets_eval_mode_and_restores_every_module(digits):
    x, _ = digits
    torch.manual_seed(2)
    net = TinyCNN()
    net.train()
    net.bn.eval()  # mixed modes come back as they were
    seen = []
    net.register_forward_hook(lambda m, i, o: seen.append(m.training))
    running = net.bn.running_mean.clone()
    with torch.no_grad():
        obj = EmbeddingShift(net(x[:10]))
    seen.clear()
    PGD(steps=2)(net, x[:10], obj, eps=0.05)
    assert seen and not any(seen)
    assert net.training and not net.bn.training and net.fc.training
    assert torch.equal(running, net.bn.running_mean)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_attack_runs_on_the_models_device(cnn, digits):
    x, _ = digits
    net = TinyCNN().cuda().eval()
    with torch.no_grad():
        obj = EmbeddingShift(net(x[:20].cuda()))
    raw, clipped, success = PGD(steps=3, random_state=0)(net, x[:20], obj, eps=0.05)
    assert clipped.device == x.device and success.device == x.device
    cpu = PGD(steps=3, random_state=0)(net.cpu(), x[:20], obj, eps=0.05)
    torch.testing.assert_close(cpu.scores, PGD(steps=3, random_state=0)(net.cuda(), x[:20], obj, eps=0.05).scores,
                               atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------- bad input


def test_bad_input_gets_clear_errors(cnn, digits):
    x, y = digits
    x = x[:8]
    with torch.no_grad():
        emb = cnn(x)
    obj = EmbeddingShift(emb)
    pgd = PGD(steps=2)
    with pytest.raises(ValueError, match=r"inputs must lie in \[0, 1\].*got values in \[0, 255\]"):
        pgd(cnn, x * 255, obj, eps=0.1)
    bad = x.clone()
    bad[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="inputs contains NaN or infinity in 1 sample"):
        pgd(cnn, bad, obj, eps=0.1)
    with pytest.raises(ValueError, match=r"eps must be finite and >= 0, got \[-0.1\]"):
        pgd(cnn, x, obj, eps=-0.1)
    with pytest.raises(ValueError, match="'steps' parameter of PGD must be an int in \\[1, inf\\]; got 0"):
        PGD(steps=0)(cnn, x, obj, eps=0.1)
    with pytest.raises(ValueError, match="'restarts' parameter"):
        PGD(restarts=0)(cnn, x, obj, eps=0.1)
    with pytest.raises(ValueError, match="'norm' parameter of PGD"):
        PGD(norm="l1")(cnn, x, obj, eps=0.1)
    with pytest.raises(ValueError, match="step_size or rel_step_size, not both"):
        PGD(step_size=0.1, rel_step_size=0.5)(cnn, x, obj, eps=0.1)
    with pytest.raises(ValueError, match="'n_queries' parameter of RandomSearch"):
        RandomSearch(n_queries=0)(cnn, x, obj, eps=0.1)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        perturb(cnn, x, obj, eps=0.1, steps=0)
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        perturb(cnn, x, obj, eps=-1.0)
    with pytest.raises(ValueError, match=r"eps must be a number or one value per input \(8\), got shape \(3,\)"):
        perturb(cnn, x, obj, eps=torch.ones(3))
    # the model's output
    flat = torch.nn.Sequential(torch.nn.Flatten(0), torch.nn.Linear(8 * 64, 6))
    with pytest.raises(ValueError, match=r"model must return a 2-D tensor of embeddings with one row per input: "
                                         r"expected \(8, dim\), got shape \(6,\)"):
        pgd(flat, x, obj, eps=0.1)
    three = torch.nn.Sequential(torch.nn.Flatten(2), torch.nn.Linear(64, 6))
    with pytest.raises(ValueError, match=r"got shape \(8, 1, 6\)"):
        pgd(three, x, obj, eps=0.1)
    wide = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 9))
    with pytest.raises(ValueError, match="embeddings of dimension 9, the objective's embeddings have dimension 6"):
        pgd(wide, x, obj, eps=0.1)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        pgd(lambda t: t, x, obj, eps=0.1)
    # context and inputs of different lengths
    with pytest.raises(ValueError, match="the objective holds context for 8 inputs, inputs has 5"):
        pgd(cnn, x[:5], obj, eps=0.1)
    with pytest.raises(ValueError, match="the objective holds context for 8 inputs, x has 5"):
        perturb(cnn, x[:5], obj, eps=0.1)
    with pytest.raises(ValueError, match=r"index must hold row numbers in \[0, 8\), got values in \[0, 8\]"):
        pgd(cnn, x[:2], obj, eps=0.1, index=[0, 8])
    with pytest.raises(ValueError, match=r"index must be 1-D with one row number per input \(2\)"):
        pgd(cnn, x[:2], obj, eps=0.1, index=[0, 1, 2])
    with pytest.raises(ValueError, match="objective must have a success"):
        pgd(cnn, x, lambda e, i: e.sum(1), eps=0.1)
    with pytest.raises(ValueError, match=r"objective must return one score per input, shape \(8,\)"):
        perturb(cnn, x, lambda e, i: e, eps=0.1)


def test_bad_objective_context():
    g = torch.rand(6, 3)
    with pytest.raises(ValueError, match="gallery has no item of another class than query 0"):
        RetrievalObjective(g, [1] * 6, [1, 1])
    with pytest.raises(ValueError, match=r"query_in_gallery\[1\] = 4 points at a gallery item labelled 2"):
        RetrievalObjective(g, [0, 0, 1, 1, 2, 2], [0, 1], query_in_gallery=[0, 4])
    with pytest.raises(ValueError, match=r"query_in_gallery must be an integer array of shape \(2,\) of gallery rows "
                                         r"in \[0, 6\) or -1, got values in \[0, 6\]"):
        RetrievalObjective(g, [0, 0, 1, 1, 2, 2], [0, 1], query_in_gallery=[0, 6])
    with pytest.raises(ValueError, match="gallery_labels has 5 labels, gallery has 6 samples"):
        RetrievalObjective(g, [0, 0, 1, 1, 2], [0])
    with pytest.raises(ValueError, match="gallery contains NaN"):
        RetrievalObjective(torch.full((2, 2), float("nan")), [0, 1], [0])
    with pytest.raises(ValueError, match=r"query_in_gallery must be an integer array .*got torch.float"):
        RetrievalObjective(g, [0, 0, 1, 1, 2, 2], [0, 1], query_in_gallery=[0.0, 2.0])
    with pytest.raises(ValueError, match="query_labels and gallery_labels must be labels of one kind"):
        RetrievalObjective(g, [0, 0, 1, 1, 2, 2], ["0"])
    with pytest.raises(ValueError, match=r"query_labels must be a non-empty 1-D array of labels, got shape \(0,\)"):
        RetrievalObjective(g, [0, 0, 1, 1, 2, 2], [])
    with pytest.raises(ValueError, match="query_labels contains NaN"):
        RetrievalObjective(g, [0, 0, 1, 1, 2, 2], [float("nan")])
    # a reversed view of the labels and of query_in_gallery gives the reversed queries' context
    lab = np.array([0, 0, 1, 1, 2, 2])
    fwd, rev = RetrievalObjective(g, lab, lab, query_in_gallery=np.arange(6)), \
        RetrievalObjective(g, lab, lab[::-1], query_in_gallery=np.arange(6)[::-1])
    e = torch.rand(6, 3)
    torch.testing.assert_close(rev(e.flip(0), torch.arange(6)).flip(0), fwd(e, torch.arange(6)))
    with pytest.raises(ValueError, match="distance must be one of"):
        RetrievalObjective(g, [0, 0, 1, 1, 2, 2], [0], distance="manhattan")
    with pytest.raises(ValueError, match=r"same shape \(n_triplets, dim\), got \(6, 3\), \(6, 3\) and \(5, 3\)"):
        TripletRoleObjective(g, g, g[:5])
    with pytest.raises(ValueError, match="role must be one of 'anchor', 'positive', 'negative', got 'pos'"):
        TripletRoleObjective(g, g, g, role="pos")
    with pytest.raises(ValueError, match=r"clean_embeddings must be a non-empty 2-D tensor.*got shape \(6,\)"):
        EmbeddingShift(torch.rand(6))
    with pytest.raises(ValueError, match="threshold must be None or a finite number >= 0"):
        EmbeddingShift(g, threshold=-1)


def test_embedding_shift_threshold(cnn, digits):
    x, _ = digits
    with torch.no_grad():
        obj = EmbeddingShift(cnn(x[:30]), threshold=0.3)
    res = PGD(steps=5, random_state=0)(cnn, x[:30], obj, eps=[0.01, 0.1])
    torch.testing.assert_close(res.success, res.scores >= 0.3)
    assert res.success[1].sum() > res.success[0].sum()


@pytest.mark.parametrize("role", ["anchor", "positive", "negative"])
def test_triplet_role_groups_average_the_ungrouped_terms(role):
    g = torch.Generator().manual_seed(3)
    a, p, n = (torch.randn(7, 4, generator=g) for _ in range(3))
    groups = torch.tensor([2, 0, 1, 0, 2, 2, 1])
    member = torch.randn(3, 4, generator=g)
    grouped = TripletRoleObjective(a, p, n, role=role, groups=groups)
    single = TripletRoleObjective(a, p, n, role=role)
    per_triplet = single(member[groups], torch.arange(7))
    expect = torch.stack([per_triplet[groups == c].mean() for c in range(3)])
    assert torch.allclose(grouped(member, torch.arange(3)), expect)
    # a batch holding only some inputs, in another order
    assert torch.allclose(grouped(member[[2, 0]], torch.tensor([2, 0])), expect[[2, 0]])
    hit = single.success(member[groups], torch.arange(7))
    assert torch.equal(grouped.success(member, torch.arange(3)),
                       torch.stack([hit[groups == c].any() for c in range(3)]))
    with pytest.raises(ValueError, match="groups"):
        TripletRoleObjective(a, p, n, role=role, groups=torch.tensor([0, 2, 2, 2, 2, 2, 2]))


@pytest.mark.parametrize("role", ["anchor", "positive", "negative"])
def test_triplet_role_from_batch_equals_the_per_triplet_form(role):
    g = torch.Generator().manual_seed(4)
    clean = torch.randn(9, 5, generator=g, dtype=torch.float64)
    a = torch.tensor([0, 1, 2, 0, 4, 5, 6, 8])
    p = torch.tensor([1, 0, 3, 2, 5, 4, 7, 6])
    n = torch.tensor([4, 5, 6, 7, 0, 1, 2, 3])
    member = {"anchor": a, "positive": p, "negative": n}[role]
    uniq, groups = torch.unique(member, return_inverse=True)
    adv = clean[uniq] + 0.3 * torch.randn(len(uniq), 5, generator=g, dtype=torch.float64)
    fast = TripletRoleObjective.from_batch(clean, (a, p, n), role=role, groups=groups)
    slow = TripletRoleObjective(clean[a], clean[p], clean[n], role=role, groups=groups)
    idx = torch.arange(len(uniq))
    assert torch.allclose(fast(adv, idx), slow(adv, idx))
    assert torch.equal(fast.success(adv, idx), slow.success(adv, idx))
    sub = idx.flip(0)[:3]
    assert torch.allclose(fast(adv[sub], sub), slow(adv[sub], sub))
    with pytest.raises(ValueError, match="triplets"):
        TripletRoleObjective.from_batch(clean, (a, p, n + 9), role=role, groups=groups)


# ------------------------------------------------------------------------- APGD and the evaluation ensemble


def _checkpoints_loop(steps):
    """Reference: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) in exact
    fractions; the iterations ceil(p_j * steps) strictly inside (0, steps), each once."""
    from fractions import Fraction
    from math import ceil

    p = [Fraction(0), Fraction(22, 100)]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)))
    out = []
    for pj in p[1:]:
        w = ceil(pj * steps)
        if 0 < w < steps and w not in out:
            out.append(w)
    return out


def test_apgd_checkpoints_follow_the_published_schedule():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    for steps in range(1, 400):
        assert apgd_checkpoints(steps) == _checkpoints_loop(steps), steps
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="steps must be an integer >= 1"):
            apgd_checkpoints(bad)


def _apgd_loop(score_grad, x, start, eps, steps, momentum=0.75, rho=0.75):
    """Reference APGD on one input (l_inf, no early stop), written as the paper states it."""
    ckpt = _checkpoints_loop(steps)
    proj = lambda z: np.clip(np.clip(z, x - eps, x + eps), 0.0, 1.0)  # noqa: E731
    eta = 2 * eps
    f, g = score_grad(start)
    best_x, best_f = start, f
    cur = prev = x_max = start
    f_cur = f_max = f_max_last = f
    g_max = g
    halved_last, improved, last, etas = False, 0, 0, []
    for k in range(steps):
        etas.append(eta)
        z = proj(cur + eta * np.sign(g))
        new = z if k == 0 else proj(cur + momentum * (z - cur) + (1 - momentum) * (cur - prev))
        f_new, g_new = score_grad(new)
        if f_new > best_f:
            best_x, best_f = new, f_new
        improved += f_new > f_cur
        if f_new > f_max:
            x_max, f_max, g_max = new, f_new, g_new
        prev, cur, f_cur, g = cur, new, f_new, g_new
        if k + 1 in ckpt:
            halve = improved < rho * (k + 1 - last) or (not halved_last and f_max <= f_max_last)
            if halve:
                eta /= 2
                cur = prev = x_max
                g, f_cur = g_max, f_max
            halved_last, f_max_last, improved, last = halve, f_max, 0, k + 1
    return best_x, best_f, etas


def test_apgd_matches_a_plain_loop_reference():
    net = _mlp(n_in=10, dim=4, seed=3)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 10, generator=gen, dtype=torch.float64)
    obj = EmbeddingShift(torch.randn(5, 4, generator=gen, dtype=torch.float64))  # never succeeds
    eps, steps = 0.08, 30
    best_x, best, done = apgd_module._apgd(net, x, obj, torch.arange(5), LinfNorm(),
                                           torch.full((5,), eps, dtype=torch.float64),
                                           steps=steps, restarts=1, momentum=0.75, rho=0.75, early_stop=True,
                                           generator=torch.Generator().manual_seed(11))
    assert not done.any()
    start = (x + LinfNorm().random_start(x.shape, eps, torch.Generator().manual_seed(11), dtype=x.dtype)).clamp(0, 1)
    halvings = 0
    for i in range(5):
        def score_grad(z, i=i):
            t = torch.tensor(z, requires_grad=True)
            s = obj(net(t[None]), torch.tensor([i]))[0]
            (gr,) = torch.autograd.grad(s, t)
            return float(s.detach()), gr.numpy()

        ref_x, ref_f, etas = _apgd_loop(score_grad, x[i].numpy(), start[i].numpy(), eps, steps)
        np.testing.assert_allclose(best_x[i].numpy(), ref_x, rtol=0, atol=1e-12)
        assert float(best[i]) == pytest.approx(ref_f, rel=1e-12)
        halvings += int(round(np.log2(etas[0] / etas[-1])))
    assert halvings >= 5  # the step did adapt


class _Target(Objective):
    """Score ``-||f(x') - target||``: its maximum (0) lies inside the ball; never succeeds."""

    def __init__(self, target):
        self.target = target
        self.n_samples, self.embedding_dim = target.shape

    def __call__(self, emb, index):
        return -(emb - self.target[index]).norm(dim=1)

    def success(self, emb, index):
        return torch.zeros(len(index), dtype=torch.bool)


def test_apgd_settles_where_fixed_step_pgd_bounces(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    n, d, eps = 6, 20, 0.1
    x = 0.25 + 0.5 * torch.rand(n, d, generator=gen, dtype=torch.float64)
    star = x + eps * (torch.rand(n, d, generator=gen, dtype=torch.float64) - 0.5)  # interior optimum
    net = torch.nn.Linear(d, d, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.eye(d))
    obj = _Target(star)
    pgd = PGD(steps=40, rel_step_size=0.25, random_state=0)(net, x, obj, eps=eps).scores
    apgd = APGD(steps=40, random_state=0)(net, x, obj, eps=eps).scores
    decay = PGD(steps=40, rel_step_size=0.25, step_schedule="cosine", random_state=0)(net, x, obj, eps=eps).scores
    # the fixed step of eps/4 bounces around the optimum; halving the step settles, so does a decaying step
    assert float(apgd.min()) > 4 * float(pgd.max())
    assert float(decay.min()) > 4 * float(pgd.max())
    # without its checkpoints (no halving) APGD's step of 2 eps jumps between corners: worse than PGD
    monkeypatch.setattr(apgd_module, "apgd_checkpoints", lambda steps: [])
    stuck = APGD(steps=40, random_state=0)(net, x, obj, eps=eps).scores
    assert float(stuck.max()) < float(pgd.min())


def test_step_schedules():
    for name, f in STEP_SCHEDULES.items():
        assert f(0, 100) == 1.0
        assert f(99, 100) <= (1.0 if name == "constant" else 0.011)
    with pytest.raises(ValueError, match="'step_schedule' parameter of PGD"):
        PGD(step_schedule="exp")(torch.nn.Linear(3, 2), torch.rand(2, 3), EmbeddingShift(torch.zeros(2, 2)), eps=0.1)


def _retrieval_ce_loop(q, gallery, g_lab, q_lab, own, T):
    d = np.array([np.linalg.norm(q - g) for g in gallery])
    keep = np.arange(len(gallery)) != own
    logits = -d[keep] / T
    same = (g_lab[keep] == q_lab)
    lse = lambda v: np.log(np.sum(np.exp(v - v.max()))) + v.max()  # noqa: E731
    return lse(logits) - lse(logits[same]) if same.any() else lse(logits)


def test_retrieval_cross_entropy_matches_a_loop_and_shares_success():
    rng = np.random.default_rng(7)
    gallery = rng.normal(size=(25, 4))
    g_lab = rng.integers(0, 3, size=25)
    g_lab[5] = 7  # query 5 has no other same-class item
    own = np.array([0, 1, 2, 3, 4, 5, -1, -1])
    q_lab = np.where(own >= 0, g_lab[np.maximum(own, 0)], 1)
    margin = RetrievalObjective(torch.tensor(gallery), g_lab, q_lab, query_in_gallery=own)
    ce = RetrievalCrossEntropy(torch.tensor(gallery), g_lab, q_lab, query_in_gallery=own, temperature=0.3)
    # the temperature is relative to the median nearest-neighbour distance within the gallery
    nn = [min(np.linalg.norm(gallery[i] - gallery[j]) for j in range(25) if j != i) for i in range(25)]
    assert ce.temperature_ == pytest.approx(0.3 * np.sort(nn)[12], rel=1e-12)
    q = torch.tensor(rng.normal(size=(8, 4)), requires_grad=True)
    idx = torch.arange(8)
    s = ce(q, idx)
    for i in range(8):
        ref = _retrieval_ce_loop(q[i].detach().numpy(), gallery, g_lab, q_lab[i], own[i], ce.temperature_)
        assert float(s[i].detach()) == pytest.approx(ref, rel=1e-10)
    (g,) = torch.autograd.grad(s.sum(), q)
    assert bool(torch.isfinite(g).all())
    assert torch.equal(ce.success(q.detach(), idx), margin.success(q.detach(), idx))
    # built from the margin objective: the same context and scores
    twin = RetrievalCrossEntropy.from_objective(margin, temperature=0.3)
    torch.testing.assert_close(twin(q.detach(), idx), s.detach())
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got -1"):
        RetrievalCrossEntropy(torch.tensor(gallery), g_lab, q_lab, temperature=-1)
    with pytest.raises(ValueError, match="objective must be a RetrievalObjective, got EmbeddingShift"):
        RetrievalCrossEntropy.from_objective(EmbeddingShift(torch.zeros(2, 2)))


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.8)])
def test_apgd_and_ensembles_stay_in_the_threat_model(cnn, digits, norm, eps):
    x, y = digits
    x, y = x[:40], y[:40]
    nrm = get_norm(norm)
    with torch.no_grad():
        emb = cnn(x)
    shift = EmbeddingShift(emb)
    retrieval = RetrievalObjective(emb, y, y, query_in_gallery=np.arange(40))
    runs = [(APGD(norm=norm, steps=8, restarts=2, random_state=0), shift),
            (APGD(norm=norm, steps=8, random_state=0), retrieval),
            (EnsembleAttack(members=[APGD(norm=norm, steps=5, random_state=0),
                                     PGD(norm=norm, steps=5, random_state=1)]), shift),
            (RetrievalEnsemble(norm=norm, steps=8, restarts=1, pgd_steps=4, focus=((0.3, 1), (0.1, 2)),
                               random_state=0), retrieval)]
    for attack, obj in runs:
        res = attack(cnn, x, obj, eps=eps)
        for out in (res.raw, res.clipped):
            assert out.shape == x.shape
            assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
            assert torch.all(nrm.measure(out - x) <= eps + 1e-6)
        with torch.no_grad():
            e = cnn(res.clipped)
        torch.testing.assert_close(res.embeddings, e)
        torch.testing.assert_close(res.scores, obj(e, torch.arange(40)))
        assert torch.equal(res.success, obj.success(e, torch.arange(40)))
    assert bool(((res.clipped == 0) & (x == 0)).any())  # the box was active


def test_ensemble_is_the_worst_case_of_its_members(cnn, digits):
    x, y = digits
    with torch.no_grad():
        gallery = cnn(x)
    obj = RetrievalObjective(gallery, y, y, query_in_gallery=np.arange(len(y)))
    first = PGD(steps=5, rel_step_size=0.25, random_state=3)
    second = APGD(steps=10, random_state=4)
    ens = EnsembleAttack(members=[first, (second, RetrievalCrossEntropy.from_objective)])
    eps = [0.01, 0.03]
    res = ens(cnn, x, obj, eps=eps)
    alone = first(cnn, x, obj, eps=eps)
    assert res.success.shape == (2, len(y))
    # every query the first member broke is broken, with the first member's output
    assert torch.all(res.success >= alone.success)
    torch.testing.assert_close(res.clipped[alone.success], alone.clipped[alone.success])
    assert bool((res.success & ~alone.success).any())  # the second member broke more
    # where nobody broke it, the ensemble keeps the output of higher margin
    assert torch.all(res.scores[~res.success] >= alone.scores[~res.success] - 1e-6)
    with pytest.raises(ValueError, match="members must be a non-empty sequence"):
        EnsembleAttack(members=[])(cnn, x, obj, eps=0.1)
    with pytest.raises(ValueError, match=r"members\[1\] must be an embedding attack"):
        EnsembleAttack(members=[first, "pgd"])(cnn, x, obj, eps=0.1)
    with pytest.raises(ValueError, match="the members must share one norm"):
        EnsembleAttack(members=[first, APGD(norm="l2")])(cnn, x, obj, eps=0.1)
    with pytest.raises(ValueError, match="its objective must be a RetrievalObjective, got EmbeddingShift"):
        RetrievalEnsemble(steps=2, restarts=1)(cnn, x, EmbeddingShift(gallery), eps=0.1)


def test_retrieval_ensemble_has_one_cross_entropy_member_per_temperature(cnn, digits):
    x, y = digits
    with torch.no_grad():
        gallery = cnn(x)
    obj = RetrievalObjective(gallery, y, y, query_in_gallery=np.arange(len(y)))
    one = RetrievalEnsemble(temperatures=(0.1,), restarts=4, focus=(), random_state=0)
    three = RetrievalEnsemble(temperatures=(0.1, 0.03, 0.01), restarts=4, focus=((0.3, 4), (0.1, 32)), rounds=0,
                              random_state=0)
    m1, m3 = one.members, three.members
    assert [type(a).__name__ for a, _ in m3] == ["APGD"] * 4 + ["PGD"] + ["APGD"] * 8
    assert m3[0][1] is None and m3[4][1] is None
    assert [f(obj).temperature for _, f in m3[1:4]] == [0.1, 0.03, 0.01]
    # each focus stage: the margin, then the cross-entropy at each temperature
    for stage in (m3[5:9], m3[9:13]):
        assert stage[0][1] is None
        assert [f(obj).temperature for _, f in stage[1:]] == [0.1, 0.03, 0.01]
    assert [a.restarts for a, _ in m3] == [4] * 5 + [4] * 4 + [32] * 4
    # adding temperatures and focus stages keeps the seeds of the members both ensembles have
    assert [a.random_state for a, _ in m1] == [m3[i][0].random_state for i in (0, 1, 4)]
    assert len({a.random_state for a, _ in m3}) == 13
    assert one.n_forward == 4 * (2 * 101 + 21) + 3
    assert three.n_forward == (4 + 36) * 4 * 101 + 4 * 21 + 2 + 3 + 2 * 4
    # the defaults: 4 rounds of 32 restarts of 200 steps
    assert RetrievalEnsemble().n_forward == (1 + 38) * 3 * 101 + 4 * 32 * 3 * 201 + 21 + 2 + 2 + (3 + 4) * 3
    for bad in ((), (0.1, 0.0), (0.1, -1.0), (float("nan"),), "0.1", 0.1, (True,)):
        with pytest.raises(ValueError, match="'temperatures' parameter of RetrievalEnsemble must be a non-empty "
                                             "sequence of a number in"):
            RetrievalEnsemble(temperatures=bad, steps=2, restarts=1)(cnn, x[:4], obj, eps=0.1, index=np.arange(4))
    for bad in (((0.1, 0),), ((0.1, 1.5),), ((-0.1, 2),), ((float("inf"), 2),), ((0.1,),), (0.1, 2), "x", None):
        with pytest.raises(ValueError, match=r"'focus' parameter of RetrievalEnsemble must be a sequence of \("):
            RetrievalEnsemble(focus=bad, steps=2, restarts=1)(cnn, x[:4], obj, eps=0.1, index=np.arange(4))


def test_retrieval_ensemble_scaled_doubles_every_budget():
    ens = RetrievalEnsemble(norm="l2", steps=7, restarts=2, pgd_steps=3, pgd_rel_step_size=0.5,
                            temperatures=(0.2,), focus=((0.3, 4), (0.1, 5)), batch_size=9, random_state=3)
    d = ens.scaled(2)
    assert (d.steps, d.restarts, d.pgd_steps, d.rounds) == (14, 4, 6, 8)
    assert [tuple(f) for f in d.focus] == [(0.3, 8), (0.1, 10)]
    assert (d.norm, d.pgd_rel_step_size, tuple(d.temperatures), d.batch_size, d.random_state) == \
        ("l2", 0.5, (0.2,), 9, 3)
    assert ens.scaled(1).n_forward == ens.n_forward
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"The 'factor' parameter of RetrievalEnsemble.scaled must be an int in \[1, inf\]"):
            ens.scaled(bad)


def test_retrieval_ensemble_focus_stages_attack_only_near_misses(cnn, digits, monkeypatch):
    x, y = digits
    with torch.no_grad():
        gallery = cnn(x)
    obj = RetrievalObjective(gallery, y, y, query_in_gallery=np.arange(len(y)))
    s = obj.gallery_scale()
    base = {"steps": 3, "restarts": 1, "pgd_steps": 2, "temperatures": (0.1,), "rounds": 0, "random_state": 0}
    ens = RetrievalEnsemble(**base, focus=((0.5, 2), (0.1, 3)))
    rest = torch.arange(6)
    scores = torch.tensor([-0.1, -0.6, -0.49, -2.0, -0.5, 0.0], dtype=torch.float64) * s
    for member in range(3):  # margin, cross-entropy, PGD: every unbroken query
        assert torch.equal(ens._select(member, obj, rest, scores), rest)
    for member in (3, 4):  # stage 1 (margin, cross-entropy): margin >= -0.5 s
        assert ens._select(member, obj, rest, scores).tolist() == [0, 2, 4, 5]
    for member in (5, 6):  # stage 2: margin >= -0.1 s
        assert ens._select(member, obj, rest, scores).tolist() == [0, 5]
    # the first stage is called with exactly the unbroken near misses the members left
    off = RetrievalEnsemble(**base, focus=())
    r_off = off(cnn, x, obj, eps=0.02)
    near = torch.nonzero(~r_off.success & (r_off.scores.double() >= -0.5 * s)).flatten()
    assert 0 < len(near) < int((~r_off.success).sum())
    calls = []
    orig = APGD.__call__

    def spy(self, model, inputs, objective, *, eps, index=None):
        calls.append((self.restarts, index.clone()))
        return orig(self, model, inputs, objective, eps=eps, index=index)

    monkeypatch.setattr(APGD, "__call__", spy)
    res = ens(cnn, x, obj, eps=0.02)
    assert [c[0] for c in calls[:3]] == [1, 1, 2]
    assert torch.equal(calls[2][1], near)
    # then the stage's cross-entropy and the second stage's margin and cross-entropy, each on
    # the near misses still unbroken (a call is skipped when none is left)
    later = [c[0] for c in calls[3:]]
    assert later in ([2, 3, 3], [2, 3], [2], [3, 3], [3], [])
    assert all(bool(torch.isin(c[1], near).all()) for c in calls[3:])
    assert torch.all(res.success >= r_off.success)
    far = ~torch.isin(torch.arange(len(y)), near)
    assert torch.equal(res.clipped[far], r_off.clipped[far])
    # margins of 0 focus on nothing unbroken: the result is the one without the stages
    calls.clear()
    r0 = RetrievalEnsemble(**base, focus=((0.0, 2),))(cnn, x, obj, eps=0.02)
    assert [c[0] for c in calls] == [1, 1]
    assert torch.equal(r0.success, r_off.success) and torch.equal(r0.clipped, r_off.clipped)


def test_retrieval_ensemble_rounds_repeat_the_last_stage_until_one_breaks_nothing(cnn, digits, monkeypatch):
    x, y = digits
    with torch.no_grad():
        gallery = cnn(x)
    obj = RetrievalObjective(gallery, y, y, query_in_gallery=np.arange(len(y)))
    base = {"steps": 3, "restarts": 1, "pgd_steps": 2, "temperatures": (0.1,), "focus": ((0.5, 2), (0.1, 3)),
            "random_state": 0}
    ens, none = RetrievalEnsemble(**base, rounds=2), RetrievalEnsemble(**base, rounds=0)
    members = ens.members
    assert len(members) == 3 + 2 * 2 + 2 * 2 and len(none.members) == 7
    # each round: the margin and the cross-entropy, the last stage's restarts, twice the steps, fresh seeds
    assert [(a.steps, a.restarts) for a, _ in members[7:]] == [(6, 3)] * 4
    assert members[7][1] is None and members[8][1](obj).temperature == 0.1
    assert [a.random_state for a, _ in members[:7]] == [a.random_state for a, _ in none.members]
    assert len({a.random_state for a, _ in members}) == 11
    assert RetrievalEnsemble(**{**base, "focus": ()}, rounds=3).members.__len__() == 3  # no stage, no round
    assert ens.n_forward == none.n_forward + 2 * 2 * 3 * 7 + 4
    # a round runs on the last stage's near misses
    s, rest = obj.gallery_scale(), torch.arange(3)
    scores = torch.tensor([-0.05, -0.3, 0.0], dtype=torch.float64) * s
    for member in (5, 7, 10):
        assert ens._select(member, obj, rest, scores).tolist() == [0, 2]

    def run(schedule, broke):  # the members a schedule runs when member i breaks broke.get(i, 0) queries
        out, i = [], next(schedule)
        while i is not None:
            out.append(i)
            try:
                i = schedule.send(broke.get(i, 0))
            except StopIteration:
                i = None
        return out

    assert run(ens._schedule(11), {}) == list(range(9))  # the first round always, then none
    assert run(ens._schedule(11), {8: 1}) == list(range(11))  # round 1 broke one: round 2
    assert run(RetrievalEnsemble(**base, rounds=3)._schedule(13), {7: 2, 9: 1}) == list(range(13))
    assert run(RetrievalEnsemble(**base, rounds=3)._schedule(13), {5: 4}) == list(range(9))
    # the call: each round attacks the last stage's unbroken near misses; the rounds go on while one
    # breaks a query, and stop after the first that breaks none
    calls = []
    orig = APGD.__call__

    def spy(self, model, inputs, objective, *, eps, index=None):
        res = orig(self, model, inputs, objective, eps=eps, index=index)
        calls.append((self.steps, index.clone(), int(res.success.sum())))
        return res

    monkeypatch.setattr(APGD, "__call__", spy)
    eps = 0.03
    res = RetrievalEnsemble(**base, rounds=3)(cnn, x, obj, eps=eps)  # the cap is not what stops it
    last_stage = [c for c in calls if c[0] == 3][-2:]  # the (0.1, 3) stage: margin and cross-entropy
    rounds = [c for c in calls if c[0] == 6]
    per_round = [sum(c[2] for c in rounds[j:j + 2]) for j in range(0, len(rounds), 2)]
    assert len(rounds) == 4 and per_round[0] > 0 and per_round[1] == 0  # round 1 broke some: round 2 ran, not 3
    near = torch.cat([c[1] for c in last_stage[:1]])  # the near misses the stage started from
    for _, index, _ in rounds:
        assert bool(torch.isin(index, near).all())
        assert not bool(res.success[index].all())  # some left: else the member is skipped
    calls.clear()
    r_none = none(cnn, x, obj, eps=eps)
    assert torch.all(res.success >= r_none.success)
    assert int(res.success.sum()) - int(r_none.success.sum()) == sum(per_round)  # the same members before
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="'rounds' parameter of RetrievalEnsemble must be an int in"):
            RetrievalEnsemble(**base, rounds=bad)(cnn, x[:4], obj, eps=0.1, index=np.arange(4))


@pytest.fixture(scope="module")
def trained_mlp():
    """An MLP embedding of 8x8 digits trained (natural) on classes 0-4; 120 test images of 5-9."""
    from robust_metric_learning.deep import MLP, train_embedding

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    tr = rng.permutation(np.flatnonzero(y < 5))[:400]
    te = rng.permutation(np.flatnonzero(y >= 5))[:120]
    torch.manual_seed(0)
    net = MLP(64, hidden=(32,), embedding_dim=16)
    train_embedding(net, X[tr], y[tr], epochs=3, m=8, seed=0, progress=False)
    return net.eval(), X[te], y[te]


def test_ensemble_breaks_at_least_what_fixed_step_pgd_breaks(trained_mlp):
    from robust_metric_learning.deep import adversarial_retrieval

    net, X, y = trained_mlp
    eps = [0.03, 0.05, 0.1]
    pgd = adversarial_retrieval(net, X, y, eps=eps, attack=PGD(steps=20, rel_step_size=0.25, random_state=0))
    ens = adversarial_retrieval(net, X, y, eps=eps,
                                attack=RetrievalEnsemble(steps=20, restarts=1, pgd_steps=10, focus=((0.1, 4),),
                                                         random_state=0))
    default = adversarial_retrieval(net, X, y, eps=eps[1])  # the default attack: the full ensemble
    assert ens["clean"]["precision_at_1"] > 0.7
    for r_ens, r_pgd in zip(ens["precision_at_1"], pgd["precision_at_1"]):
        assert r_ens <= r_pgd
    assert ens["precision_at_1"][1] < pgd["precision_at_1"][1]  # strictly stronger at eps 0.05
    assert default["precision_at_1"][0] <= ens["precision_at_1"][1]


@pytest.mark.parametrize("eps,got", [(-0.1, r"\[-0.1\]"), (float("nan"), r"\[nan\]"), (float("inf"), r"\[inf\]"),
                                     ([0.1, -0.01], r"\[0.1, -0.01\]")])
def test_bad_eps_is_refused_by_the_deep_evaluation_and_every_attack(trained_mlp, eps, got):
    from robust_metric_learning.deep import adversarial_retrieval

    net, X, y = trained_mlp
    msg = "eps must be finite and >= 0, got " + got
    with pytest.raises(ValueError, match=msg):
        adversarial_retrieval(net, X, y, eps=eps)
    x = torch.as_tensor(X[:10])
    with torch.no_grad():
        obj = RetrievalObjective(net(x), y[:10], y[:10], query_in_gallery=np.arange(10))
    for attack in (PGD(steps=2), APGD(steps=2), RandomSearch(), RetrievalEnsemble(steps=2, restarts=1, focus=((0.1, 1),)),
                   EnsembleAttack(members=[PGD(steps=2)])):
        with pytest.raises(ValueError, match=msg):
            attack(net, x, obj, eps=eps)


def test_bad_eps_type_is_named(trained_mlp):
    from robust_metric_learning.deep import adversarial_retrieval

    net, X, y = trained_mlp
    with pytest.raises(ValueError, match="eps must be a number or a list of numbers.*got 'big'"):
        adversarial_retrieval(net, X, y, eps="big")
    with pytest.raises(ValueError, match="eps must be a non-empty 1-D list of numbers"):
        adversarial_retrieval(net, X, y, eps=[])


def test_apgd_bad_parameters(cnn, digits):
    x, _ = digits
    with torch.no_grad():
        obj = EmbeddingShift(cnn(x[:4]))
    for params, name in (({"steps": 0}, "steps"), ({"restarts": 0}, "restarts"), ({"momentum": 0.0}, "momentum"),
                         ({"rho": 1.5}, "rho"), ({"early_stop": 1}, "early_stop")):
        with pytest.raises(ValueError, match=f"'{name}' parameter of APGD"):
            APGD(**params)(cnn, x[:4], obj, eps=0.1)
    with pytest.raises(ValueError, match="'pgd_steps' parameter of RetrievalEnsemble"):
        RetrievalEnsemble(pgd_steps=0)(cnn, x[:4], obj, eps=0.1)
    with pytest.raises(ValueError, match="does not depend on the model's output through autograd"):
        APGD(steps=2)(cnn, x[:4], _Detached(obj), eps=0.1)


class _Detached(Objective):
    def __init__(self, inner):
        self.inner = inner
        self.n_samples = inner.n_samples

    def __call__(self, emb, index):
        return self.inner(emb.detach(), index)

    def success(self, emb, index):
        return self.inner.success(emb, index)
