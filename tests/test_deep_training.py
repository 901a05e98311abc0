"""deep/: the training loop and the defences (robust training for mini-batch metric losses)."""

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, miners
from sklearn.datasets import load_digits

from robust_metric_learning.deep import (
    MLP, EmbeddingShiftTriplets, NaiveAdversarial, Natural, RobustTriplets, hyperparameters, train_embedding,
)


@pytest.fixture(scope="module")
def digits01():
    X, y = load_digits(return_X_y=True)
    keep = y < 4
    return (X[keep] / 16.0).astype(np.float32), y[keep]


class _Recorder(torch.nn.Module):
    """A 'loss' that records what the defence hands it."""

    def forward(self, emb, labels, indices_tuple=None):
        self.emb, self.labels, self.indices = emb, labels, indices_tuple
        return emb.sum() * 0.0


@pytest.mark.parametrize("role", ["positive", "negative", "anchor"])
def test_robust_triplets_perturbs_one_role_and_points_the_triplets_at_the_copies(digits01, role):
    X, y = digits01
    torch.manual_seed(0)
    model = MLP(64, hidden=(32,), embedding_dim=8)
    x, yb = torch.as_tensor(X[:40]), torch.as_tensor(y[:40])
    miner = miners.TripletMarginMiner(margin=0.5, type_of_triplets="all")
    defense = RobustTriplets(eps=0.1, steps=3, rate=0.3, role=role)
    rec = _Recorder()
    g = torch.Generator().manual_seed(0)
    _, made = defense.step_loss(model, x, yb, rec, miner, g)
    with torch.no_grad():
        triplets = miner(model(x), yb)
    a, p, n = (t.clone() for t in rec.indices)
    k = {"anchor": 0, "positive": 1, "negative": 2}[role]
    moved = (rec.indices[k] >= len(x))
    assert 0 < made <= len(x) and len(rec.emb) == len(x) + made
    # exactly the chosen role is redirected, the two others are the mined ones
    for j in range(3):
        if j != k:
            assert torch.equal(rec.indices[j], triplets[j])
    assert torch.equal(rec.indices[k][~moved], triplets[k][~moved])
    assert 0 < int(moved.sum()) <= int(np.ceil(0.3 * len(a)))
    # each copy is an adversarial version of the member it replaces, with that member's label
    copies = rec.indices[k][moved] - len(x)
    originals = triplets[k][moved]
    assert torch.equal(rec.labels[len(x) + copies], yb[originals])
    assert int(copies.max()) < made
    # triplets share a copy exactly when they share the perturbed member
    by_copy = {}
    for t in torch.nonzero(moved).flatten().tolist():
        by_copy.setdefault(int(rec.indices[k][t]), set()).add(int(triplets[k][t]))
    assert all(len(v) == 1 for v in by_copy.values())
    assert len({next(iter(v)) for v in by_copy.values()}) == len(by_copy)


def test_robust_triplets_copies_respect_the_threat_model(digits01):
    X, y = digits01
    torch.manual_seed(0)
    model = MLP(64, hidden=(32,), embedding_dim=8)
    x, yb = torch.as_tensor(X[:40]), torch.as_tensor(y[:40])
    seen = {}
    import robust_metric_learning.deep.robust as robust

    original = robust.perturb

    def spy(model, x_in, objective, **kw):
        out = original(model, x_in, objective, **kw)
        seen["x"], seen["adv"] = x_in, out
        return out

    robust.perturb = spy
    try:
        RobustTriplets(eps=0.05, steps=4).step_loss(model, x, yb, losses.TripletMarginLoss(), None,
                                                     torch.Generator().manual_seed(1))
    finally:
        robust.perturb = original
    delta = seen["adv"] - seen["x"]
    assert float(delta.abs().max()) <= 0.05 + 1e-6
    assert float(seen["adv"].min()) >= 0 and float(seen["adv"].max()) <= 1
    assert float(delta.abs().max()) > 0.01  # it did move


@pytest.mark.parametrize("loss", [losses.TripletMarginLoss(margin=0.2), losses.ContrastiveLoss(),
                                  losses.MultiSimilarityLoss(), losses.MarginLoss()])
@pytest.mark.parametrize("defense", [Natural(), RobustTriplets(eps=0.05, steps=2),
                                     NaiveAdversarial(eps=0.05, steps=2), EmbeddingShiftTriplets(eps=0.05, steps=2)])
def test_any_pml_loss_trains_under_every_defense(digits01, loss, defense):
    X, y = digits01
    torch.manual_seed(0)
    model = MLP(64, hidden=(16,), embedding_dim=8)
    before = [p.detach().clone() for p in model.parameters()]
    hist = train_embedding(model, X[:200], y[:200], loss=loss, defense=defense, epochs=1, m=4,
                           batches_per_epoch=3, progress=False)
    assert np.isfinite(hist.loss[0])
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    if not isinstance(defense, Natural):
        assert hist.n_adversarial[0] > 0


def test_training_is_deterministic_and_resumes_exactly(digits01, tmp_path):
    X, y = digits01
    kw = dict(defense=RobustTriplets(eps=0.05, steps=2), epochs=3, m=4, batches_per_epoch=4, seed=5,
              progress=False)

    def fresh():
        torch.manual_seed(0)
        return MLP(64, hidden=(16,), embedding_dim=8)

    a = fresh()
    train_embedding(a, X, y, **kw)
    b = fresh()
    train_embedding(b, X, y, **{**kw, "epochs": 2}, checkpoint=tmp_path / "ck.pt")
    c = fresh()  # a new process would start from a fresh model: resume restores everything
    hist = train_embedding(c, X, y, **kw, checkpoint=tmp_path / "ck.pt")
    assert hist.resumed_from == 2 and hist.epochs == 3
    for pa, pc in zip(a.parameters(), c.parameters()):
        assert torch.equal(pa, pc)
    with pytest.raises(ValueError, match="other settings"):
        train_embedding(fresh(), X, y, **{**kw, "seed": 6}, checkpoint=tmp_path / "ck.pt")
    state = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert len(state["loss"]) == 3
    # a loss differing only in its margin is other settings (its repr does not show the margin)
    with pytest.raises(ValueError, match="other settings"):
        train_embedding(fresh(), X, y, **kw, loss=losses.TripletMarginLoss(margin=0.3), checkpoint=tmp_path / "ck.pt")
    # resume="compatible" starts afresh on other settings, overwriting the checkpoint
    d = fresh()
    hist = train_embedding(d, X, y, **{**kw, "seed": 6}, checkpoint=tmp_path / "ck.pt", resume="compatible")
    assert hist.resumed_from == 0 and hist.epochs == 3
    assert any(not torch.equal(pa, pd) for pa, pd in zip(a.parameters(), d.parameters()))
    e = fresh()
    hist = train_embedding(e, X, y, **{**kw, "seed": 6}, checkpoint=tmp_path / "ck.pt", resume="compatible")
    assert hist.resumed_from == 3
    for pd, pe in zip(d.parameters(), e.parameters()):
        assert torch.equal(pd, pe)
    with pytest.raises(ValueError, match="resume must be"):
        train_embedding(fresh(), X, y, **kw, resume="yes")


def test_hyperparameters_tell_margins_and_miners_apart():
    a, b = losses.TripletMarginLoss(margin=0.2), losses.TripletMarginLoss(margin=0.5)
    assert repr(a) == repr(b) and hyperparameters(a) != hyperparameters(b)
    m = miners.TripletMarginMiner(margin=0.5, type_of_triplets="all")
    before = hyperparameters(m)
    assert before["margin"] == 0.5 and before["type_of_triplets"] == "all"
    assert before["distance"]["normalize_embeddings"] is True
    emb, y = torch.randn(12, 4), torch.arange(12) % 3
    m(emb, y)  # counters updated by a call are not settings
    assert hyperparameters(m) == before
    assert hyperparameters(None) == "None"


def test_bad_input_gets_clear_errors(digits01):
    X, y = digits01
    model = MLP(64, hidden=(8,), embedding_dim=4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train_embedding(model, X * 16, y, epochs=1, progress=False)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train_embedding(model, bad, y, epochs=1, progress=False)
    with pytest.raises(ValueError, match="eps"):
        RobustTriplets(eps=-0.1)
    with pytest.raises(ValueError, match="role"):
        RobustTriplets(role="middle")
    with pytest.raises(ValueError, match="at least 2 classes"):
        train_embedding(model, X[y == 0], y[y == 0], epochs=1, progress=False)
    with pytest.raises(ValueError, match="at least 2 classes"):
        RobustTriplets().step_loss(model, torch.as_tensor(X[:5]), torch.zeros(5, dtype=torch.long),
                                   losses.TripletMarginLoss(), None, None)
    with pytest.raises(ValueError, match="y must have shape"):
        train_embedding(model, X, y[:-1], epochs=1, progress=False)
    flat = torch.nn.Sequential(torch.nn.Linear(64, 3), torch.nn.Flatten(0))
    with pytest.raises(ValueError, match="one row per input"):
        train_embedding(flat, X, y, epochs=1, progress=False)
