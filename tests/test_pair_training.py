"""Pair batches (every sample an anchor once per epoch), the paired random-negative miner, the
rc2f2 network, and training with pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses

from robust_metric_learning.deep import RC2F2, PairBatchSampler, PairedRandomTripletMiner, train_embedding


def test_pair_sampler_makes_each_sample_an_anchor_once_with_a_same_class_positive():
    y = np.array([0] * 7 + [1] * 5 + [2] * 9)
    s = PairBatchSampler(y, pairs=4, seed=3)
    batches = list(s)
    assert len(batches) == len(s) == 5 and [len(b) for b in batches] == [8] * 4 + [10]  # the lone 21st pair joins
    anchors = [b[i] for b in batches for i in range(0, len(b), 2)]
    positives = [b[i] for b in batches for i in range(1, len(b), 2)]
    assert sorted(anchors) == list(range(len(y)))
    assert all(y[a] == y[p] for a, p in zip(anchors, positives))
    assert batches == list(s)  # deterministic per epoch
    s.set_epoch(1)
    assert list(s) != batches
    # positives uniform over the class (itself included): all members of class 1 show up over epochs
    seen = set()
    for e in range(30):
        s.set_epoch(e)
        seen |= {b[i + 1] for b in s for i in range(0, len(b), 2) if b[i] == 7}
    assert seen == set(range(7, 12))
    with pytest.raises(ValueError, match="at least 2 classes"):
        PairBatchSampler([1, 1, 1])
    with pytest.raises(ValueError, match="pairs"):
        PairBatchSampler(y, pairs=0)


def test_paired_miner_takes_the_pairs_and_a_random_other_class_negative():
    torch.manual_seed(0)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 0])
    counts = torch.zeros(8)
    for _ in range(300):
        a, p, n = PairedRandomTripletMiner()(torch.zeros(8, 3), y)
        assert a.tolist() == [0, 2, 4, 6] and p.tolist() == [1, 3, 5, 7]
        assert bool((y[n] != y[a]).all())
        counts += torch.bincount(n[:1], minlength=8)
    assert set(torch.nonzero(counts).flatten().tolist()) == {2, 3, 4, 5}  # anchor 0: every other-class row
    with pytest.raises(ValueError, match="must agree"):
        PairedRandomTripletMiner()(torch.zeros(4, 3), torch.tensor([0, 1, 1, 1]))
    with pytest.raises(ValueError, match="even length"):
        PairedRandomTripletMiner()(torch.zeros(3, 3), torch.tensor([0, 0, 1]))


def test_rc2f2_has_the_published_layers():
    net = RC2F2()
    shapes = [tuple(p.shape) for p in net.parameters()]
    assert shapes == [(32, 1, 5, 5), (32,), (64, 32, 5, 5), (64,), (1024, 3136), (1024,), (512, 1024), (512,)]
    out = net(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 512) and torch.allclose(out.norm(dim=1), torch.ones(3))


def test_training_with_pairs_runs_and_resumes(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.random((40, 64)).astype(np.float32)
    y = np.repeat(np.arange(4), 10)
    net = torch.nn.Sequential(torch.nn.Linear(64, 8))
    before = [p.detach().clone() for p in net.parameters()]
    kw = dict(loss=losses.TripletMarginLoss(margin=0.2), miner=PairedRandomTripletMiner(), pairs=8,
              checkpoint=tmp_path / "c.pt", progress=False)
    h = train_embedding(net, X, y, epochs=1, **kw)
    assert len(h.loss) == 1 and any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    h2 = train_embedding(net, X, y, epochs=2, **kw)
    assert h2.resumed_from == 1 and len(h2.loss) == 2
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 8))
    fresh.load_state_dict({k: v for k, v in zip(fresh.state_dict(), before)})
    h3 = train_embedding(fresh, X, y, epochs=2, **{**kw, "checkpoint": tmp_path / "d.pt"})
    assert h3.loss == pytest.approx(h2.loss)  # resume is exact
    with pytest.raises(ValueError, match="pairs"):
        train_embedding(net, X, y, epochs=1, pairs=-1, progress=False)


def test_training_with_pairs_survives_a_lone_last_pair():
    # 9 samples in batches of 4 pairs: the 9th pair alone would be a one-class batch, which every
    # defence refuses; it joins the batch before it
    s = PairBatchSampler(np.arange(9) % 3, pairs=4)
    assert [len(b) for b in s] == [8, 10] and len(s) == 2
    assert [len(b) for b in PairBatchSampler(np.arange(10) % 3, pairs=4)] == [8, 8, 4]
    assert [len(b) for b in PairBatchSampler([0, 1, 0], pairs=4)] == [6]
    X = np.random.default_rng(0).random((9, 4)).astype(np.float32)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    h = train_embedding(net, X, np.arange(9) % 3, loss=losses.TripletMarginLoss(margin=0.2),
                        miner=PairedRandomTripletMiner(), pairs=4, epochs=1, progress=False)
    assert len(h.loss) == 1 and np.isfinite(h.loss[0])


def test_pair_sampler_gives_every_batch_two_classes_where_the_labels_allow():
    # random batches of 2 pairs would often be one class
    for y, pairs in ((np.array([0] * 20 + [1] * 20), 2), (np.array([0] * 30 + [1] * 10), 4)):
        for seed in range(20):
            s = PairBatchSampler(y, pairs=pairs, seed=seed)
            batches = list(s)
            assert len(batches) == len(s) == 40 // pairs
            assert all(len(set(y[b])) == 2 for b in batches), seed
            anchors = [b[i] for b in batches for i in range(0, len(b), 2)]
            assert sorted(anchors) == list(range(40))  # still every sample an anchor once
    # too unbalanced for every batch to have two classes: as many as possible do, nothing is lost
    y = np.array([0] * 36 + [1] * 2)
    batches = list(PairBatchSampler(y, pairs=2, seed=0))
    assert sum(len(set(y[b])) == 2 for b in batches) == 2
    assert sorted(b[i] for b in batches for i in range(0, len(b), 2)) == list(range(38))
    with pytest.raises(ValueError, match="pairs must be >= 2"):
        PairBatchSampler(y, pairs=1)
    with pytest.raises(ValueError, match="seed"):
        PairBatchSampler(y, seed=-1)


def test_soft_hard_miner_draws_from_the_published_pools():
    from robust_metric_learning.deep import PairedSoftHardTripletMiner

    g = torch.Generator().manual_seed(0)
    emb = torch.randn(12, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2])
    d = torch.cdist(emb, emb)
    pools_n, pools_p = {}, {}
    for a in range(0, 12, 2):
        same = [j for j in range(12) if y[j] == y[a]]
        other = [j for j in range(12) if y[j] != y[a]]
        far_same = max(float(d[a, j]) for j in same)
        near_other = min(float(d[a, j]) for j in other)
        pools_n[a] = {j for j in other if float(d[a, j]) < far_same} or set(other)
        pools_p[a] = {j for j in same if float(d[a, j]) > near_other} or set(same)
    seen_n = {a: set() for a in pools_n}
    seen_p = {a: set() for a in pools_p}
    torch.manual_seed(0)
    for _ in range(200):
        a, p, n = PairedSoftHardTripletMiner()(emb, y)
        assert a.tolist() == list(range(0, 12, 2))
        for ai, pi, ni in zip(a.tolist(), p.tolist(), n.tolist()):
            assert ni in pools_n[ai] and pi in pools_p[ai]
            seen_n[ai].add(ni)
            seen_p[ai].add(pi)
    assert seen_n == pools_n and seen_p == pools_p  # every member of each pool is drawn
