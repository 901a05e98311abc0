"""deep/: the training loop and the defences (robust training for mini-batch metric losses)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, miners
from sklearn.datasets import load_digits

from robust_metric_learning.deep import (
    MLP, EmbeddingShiftTriplets, NaiveAdversarial, Natural, PairedRandomTripletMiner, RobustTriplets, SmallCNN,
    hyperparameters, train_embedding,
)
from robust_metric_learning.deep.checkpoints import CheckpointError, load_checkpoint


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
    import robust_metric_learning.deep.defense_base as defense_base  # where Defense._perturb calls perturb

    original = defense_base.perturb

    def spy(model, x_in, objective, **kw):
        out = original(model, x_in, objective, **kw)
        seen["x"], seen["adv"] = x_in, out
        return out

    defense_base.perturb = spy
    try:
        RobustTriplets(eps=0.05, steps=4).step_loss(model, x, yb, losses.TripletMarginLoss(), None,
                                                     torch.Generator().manual_seed(1))
    finally:
        defense_base.perturb = original
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
    state = load_checkpoint(tmp_path / "ck.pt")
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


# ------------------------------------------------------------------ issue 16: no silent wrong answer


def _fresh(hidden=8, dim=4, **kw):
    torch.manual_seed(0)
    return MLP(64, hidden=(hidden,), embedding_dim=dim, **kw)


_KW = dict(epochs=3, m=4, batches_per_epoch=4, seed=1, progress=False)


class _NaNLossAt(torch.nn.Module):
    """A triplet loss that returns NaN (still attached to the graph) at its ``at``-th call."""

    def __init__(self, at):
        super().__init__()
        self.at, self.calls = at, 0
        self.inner = losses.TripletMarginLoss(margin=0.2)

    def forward(self, emb, labels, indices_tuple=None):
        self.calls += 1
        value = self.inner(emb, labels, indices_tuple)
        return value * float("nan") if self.calls == self.at else value


def test_non_finite_loss_stops_naming_epoch_and_batch_and_keeps_the_model(digits01, tmp_path):
    X, y = digits01
    model = _fresh()
    # what the model is after the batch before the failing one: the same run, stopped there
    ref = _fresh()
    train_embedding(ref, X, y, **{**_KW, "epochs": 1})  # epoch 1 = calls 1..4
    with pytest.raises(FloatingPointError, match=r"epoch 2/3, batch 1/4 .*the loss is nan") as info:
        train_embedding(model, X, y, loss=_NaNLossAt(5), checkpoint=tmp_path / "ck.pt", **_KW)
    assert "0-based: epoch 1, batch 0" in str(info.value) and str(tmp_path / "ck.pt") in str(info.value)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)  # not updated with the failing batch
    assert len(load_checkpoint(tmp_path / "ck.pt")["loss"]) == 1  # the last completed epoch


class _PoisonAt(torch.nn.Module):
    """Identity, except that its ``at``-th call in training mode returns NaN."""

    def __init__(self, at):
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                return x * float("nan")
        return x


def test_non_finite_model_output_stops_and_restores_batch_norm_statistics(digits01):
    X, y = digits01
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), _PoisonAt(3), torch.nn.BatchNorm1d(8),
                              torch.nn.ReLU(), torch.nn.Linear(8, 4))
    with pytest.raises(FloatingPointError, match=r"epoch 1/3, batch 3/4 .*model's output"):
        train_embedding(net, X, y, **_KW)
    bn = net[3]
    assert torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var).all()
    assert int(bn.num_batches_tracked) == 2  # the counter too: the two batches before the failed one
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_non_finite_output_of_an_adversarial_forward_is_caught(digits01):
    """A NaN that only the attack's forward passes see (the model in eval mode) still stops training."""
    X, y = digits01

    class EvalPoison(torch.nn.Module):
        """NaN in eval mode (the attack's passes), except on the first call (the probe before training)."""

        calls = 0

        def forward(self, x):
            if self.training:
                return x
            self.calls += 1
            return x if self.calls == 1 else x * float("nan")

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4), EvalPoison())
    with pytest.raises(FloatingPointError, match=r"epoch 1/3, batch 1/4 .*inside the step: model returned NaN or "
                                                 r"infinite embeddings") as info:
        train_embedding(net, X, y, defense=RobustTriplets(eps=0.05, steps=2), **_KW)
    assert isinstance(info.value.__cause__, FloatingPointError)
    assert net[2].calls > 1
    net[2].calls = 1  # the probe before training runs in eval mode too: it reports a NaN model at once
    with pytest.raises(FloatingPointError, match=r"NaN or infinite embeddings .*X \(before training\)"):
        train_embedding(net, X, y, **_KW)


def test_non_finite_gradient_with_finite_loss_stops(digits01):
    X, y = digits01

    def sqrt_at_zero(emb, labels, indices_tuple=None):  # value 0, gradient 0 * inf = NaN
        return torch.sqrt(((emb - emb.detach()) ** 2).sum())

    model = _fresh()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match=r"epoch 1/3, batch 1/4 .*gradient of parameter"):
        train_embedding(model, X, y, loss=sqrt_at_zero, **_KW)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_exploding_lr_is_stopped_before_parameters_become_nan(digits01):
    X, y = digits01
    model = _fresh(normalize=False)
    with pytest.raises(FloatingPointError, match=r"epoch \d+/3, batch \d+/4"):
        train_embedding(model, X, y, lr=1e30, **_KW)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_lr_or_weight_decay_too_large_for_adams_float32_steps_is_refused(digits01):
    import re

    X, y = digits01
    for lr in (1e200, 3.5e38, 1e37):
        with pytest.raises(ValueError, match=r"lr must be a finite positive number whose Adam steps \(up to 10 lr\) "
                                             rf"float32 can hold, at most 3.40282e\+36, got {re.escape(repr(lr))}"):
            train_embedding(_fresh(), X, y, lr=lr, **_KW)
    with pytest.raises(ValueError, match=r"weight_decay must be a finite number >= 0 that float32 can hold "
                                         r"\(Adam's\), at most 3.40282e\+38, got 1e\+39"):
        train_embedding(_fresh(), X, y, weight_decay=1e39, **_KW)
    model = _fresh(normalize=False)  # the largest lr: Adam steps, and the next batch's output stops training
    with pytest.raises(FloatingPointError, match=r"epoch 1/3, batch 2/4"):
        train_embedding(model, X, y, lr=float(np.finfo(np.float32).max) / 100, **_KW)


def test_pair_batches_the_labels_cannot_give_two_classes_are_refused_before_training(digits01):
    X, y = digits01[0][:12], np.array([0, 0] + [1] * 10)
    model = _fresh()
    before = [p.detach().clone() for p in model.parameters()]
    kw = dict(loss=losses.TripletMarginLoss(margin=0.2), miner=PairedRandomTripletMiner(), progress=False)
    with pytest.raises(ValueError, match=r"pairs=2 makes 6 batches per epoch of the 12 samples of y, and each batch "
                                         r"needs an anchor outside the largest class of y .* only 2 samples are "
                                         r"outside it: pass pairs >= 6"):
        train_embedding(model, X, y, pairs=2, **kw)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert train_embedding(model, X, y, pairs=6, epochs=3, **kw).epochs == 3


@pytest.mark.parametrize("defense", [{}, ["act"], {"act": {}}])
def test_unhashable_defense_is_refused_naming_it(digits01, defense):
    X, y = digits01
    with pytest.raises(ValueError, match=rf"defense must be one of \[.*\] or a Defense object .*, got "
                                         rf"{type(defense).__name__} "):
        train_embedding(_fresh(), X, y, defense=defense, **_KW)


def _tensor_record(path, member_suffix="/data/0"):
    """(offset, size) in the bytes of ``path`` of the uncompressed zip member ending with the suffix."""
    import struct
    import zipfile

    raw = path.read_bytes() if hasattr(path, "read_bytes") else path
    import io

    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(member_suffix))
        assert info.compress_type == zipfile.ZIP_STORED
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def test_checkpoint_with_a_flipped_bit_in_tensor_data_is_refused_or_restarted(digits01, tmp_path):
    import io

    X, y = digits01
    path = tmp_path / "ck.pt"
    train_embedding(_fresh(), X, y, checkpoint=path, **{**_KW, "epochs": 1})
    raw = bytearray(path.read_bytes())
    # the payload (the saved training state, itself a torch zip) is the outer file's tensor record;
    # flip one bit inside the data of the payload's first tensor (a model weight)
    outer_off, outer_size = _tensor_record(bytes(raw))
    inner = bytes(raw[outer_off:outer_off + outer_size])
    inner_off, inner_size = _tensor_record(inner)
    raw[outer_off + inner_off + inner_size // 2] ^= 0x04
    path.write_bytes(bytes(raw))
    # torch alone does not notice: the damaged payload loads, with another weight
    flipped = torch.load(io.BytesIO(bytes(raw[outer_off:outer_off + outer_size])), weights_only=True)
    clean = torch.load(io.BytesIO(inner), weights_only=True)
    assert any(not torch.equal(flipped["model"][k], clean["model"][k]) for k in clean["model"])

    with pytest.raises(CheckpointError, match="SHA-256 does not match") as info:
        train_embedding(_fresh(), X, y, checkpoint=path, **_KW)
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(path)

    model = _fresh()
    with pytest.warns(UserWarning, match=f"{path}.*damaged.*starts afresh"):
        hist = train_embedding(model, X, y, checkpoint=path, resume="compatible", **_KW)
    assert hist.resumed_from == 0 and hist.epochs == 3
    ref = _fresh()
    train_embedding(ref, X, y, **_KW)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters()))
    assert len(load_checkpoint(path)["loss"]) == 3  # rewritten, valid


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "old format without checksum"])
def test_unreadable_or_unverifiable_checkpoint_is_reported_with_its_path(digits01, tmp_path, damage):
    X, y = digits01
    path = tmp_path / "ck.pt"
    train_embedding(_fresh(), X, y, checkpoint=path, **{**_KW, "epochs": 1})
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) * 2 // 3])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # what an older version wrote: the bare state, no checksum
        torch.save(load_checkpoint(path), path)
    with pytest.raises(CheckpointError) as info:
        train_embedding(_fresh(), X, y, checkpoint=path, **_KW)
    message = str(info.value)
    assert str(path) in message and "resume='compatible'" in message
    assert ("without a checksum" in message) == (damage == "old format without checksum")
    with pytest.warns(UserWarning, match=str(path)):
        hist = train_embedding(_fresh(), X, y, checkpoint=path, resume="compatible", **_KW)
    assert hist.resumed_from == 0 and len(load_checkpoint(path)["loss"]) == 3
    # resume=False neither reads nor minds it
    path.write_bytes(b"junk")
    assert train_embedding(_fresh(), X, y, checkpoint=path, resume=False, **_KW).resumed_from == 0


def test_checkpoint_of_another_model_or_more_epochs_is_other_settings(digits01, tmp_path):
    X, y = digits01
    path = tmp_path / "ck.pt"
    train_embedding(_fresh(), X, y, checkpoint=path, **_KW)
    with pytest.raises(CheckpointError, match="other settings"):
        train_embedding(_fresh(hidden=9), X, y, checkpoint=path, **_KW)
    with pytest.raises(CheckpointError, match="holds 3 epochs, more than epochs=2"):
        train_embedding(_fresh(), X, y, checkpoint=path, **{**_KW, "epochs": 2})
    hist = train_embedding(_fresh(), X, y, checkpoint=path, resume="compatible", **{**_KW, "epochs": 2})
    assert hist.resumed_from == 0 and hist.epochs == 2


def test_checkpoint_path_is_checked_before_training(digits01, tmp_path):
    X, y = digits01
    loss = _NaNLossAt(at=-1)  # counts calls, never NaN
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="checkpoint must be a file path"):
        train_embedding(_fresh(), X, y, loss=loss, checkpoint=tmp_path, **_KW)
    with pytest.raises(ValueError, match=r"checkpoint .*file.*cannot be written"):
        train_embedding(_fresh(), X, y, loss=loss, checkpoint=tmp_path / "file" / "ck.pt", **_KW)
    if Path("/dev/null").exists():  # a device is never replaced by a checkpoint
        with pytest.raises(ValueError, match="not a regular file"):
            train_embedding(_fresh(), X, y, loss=loss, checkpoint="/dev/null", resume="compatible", **_KW)
    assert loss.calls == 0


def _nan_weight_mlp():
    model = _fresh()
    with torch.no_grad():
        model.body[1].weight[0, 0] = float("nan")
    return model


@pytest.mark.parametrize("change, error, match", [
    (dict(lr=float("inf")), ValueError, "lr must be a finite number > 0, got inf"),
    (dict(lr=-1e-3), ValueError, "lr must be a finite number > 0"),
    (dict(lr=True), TypeError, "lr must be a finite number > 0, got bool"),
    (dict(lr="1e-3"), TypeError, "lr must be a finite number"),
    (dict(weight_decay=-1.0), ValueError, "weight_decay must be a finite number >= 0"),
    (dict(weight_decay=float("nan")), ValueError, "weight_decay must be"),
    (dict(seed=-1), ValueError, r"seed must be an integer seed in \[0, 2\*\*32 - 1\], got -1"),
    (dict(seed=1.5), ValueError, "seed must be an integer seed"),
    (dict(seed=2**32), ValueError, "seed must be an integer seed"),
    (dict(epochs=0), ValueError, "epochs must be a positive integer, got 0"),
    (dict(batches_per_epoch=-3), ValueError, "batches_per_epoch must be a positive integer, got -3"),
    (dict(m=-1), ValueError, "m must be a positive integer"),
    (dict(classes_per_batch=1), ValueError, "classes_per_batch must be between 2"),
    (dict(loss="triplet"), TypeError, "loss must be a callable"),
    (dict(miner="hard"), TypeError, "miner must be None or a callable"),
    (dict(loss=lambda emb, labels, indices=None: emb.sum(1)), TypeError,
     r"loss must return a scalar tensor, got Tensor of shape \(\d+,\)"),
    (dict(loss=lambda emb, labels, indices=None: torch.tensor(0.0)), ValueError,
     r"the loss at epoch 1/1, batch 1/2 is not attached to the model's graph"),
    (dict(progress="no"), TypeError, "progress must be True, False or None"),
    (dict(resume=1), ValueError, "resume must be"),
    (dict(y="nan label"), ValueError, "y contains NaN"),
    (dict(y="singleton"), ValueError, "y: every class needs at least 2 samples"),
    (dict(y="2d"), ValueError, r"y must have shape \(\d+,\), got \(\d+, 1\)"),
    (dict(X="1d"), ValueError, r"model cannot be applied to X: rows of shape \(\)"),
    (dict(X="narrow"), ValueError, r"model cannot be applied to X: rows of shape \(10,\)"),
    (dict(X="strings"), ValueError, "X must be"),
    (dict(X="empty"), ValueError, "X must have at least one sample"),
    (dict(model="smallcnn"), ValueError, r"rows of shape \(64,\); the model takes inputs of shape \(1, 28, 28\)"),
    (dict(model="none"), TypeError, "model must be a torch.nn.Module, got NoneType"),
    (dict(model="no parameters"), ValueError, "model has no trainable parameters"),
    (dict(model="nan weight"), ValueError, "model parameter 'body.1.weight' holds NaN"),
])
def test_hostile_arguments_get_errors_naming_them(digits01, change, error, match):
    X, y = digits01
    kw = dict(epochs=1, batches_per_epoch=2, progress=False)
    model = {"smallcnn": lambda: SmallCNN(4), "none": lambda: None, "no parameters": torch.nn.Flatten,
             "nan weight": _nan_weight_mlp}.get(change.pop("model", None), _fresh)()
    X = {"1d": X[:, 0], "narrow": X[:, :10], "strings": np.full(X.shape, "a"), "empty": X[:0],
         None: X}[change.pop("X", None)]
    yy = change.pop("y", None)
    if yy == "nan label":
        y = np.where(np.arange(len(y)) == 0, np.nan, y.astype(float))
    elif yy == "singleton":
        y = y.copy()
        y[0] = 99
    elif yy == "2d":
        y = y[:, None]
    with pytest.raises(error, match=match):
        train_embedding(model, X, y, **{**kw, **change})


def test_eval_mode_gives_every_module_back_its_own_mode_even_on_error():
    from robust_metric_learning._parallel import eval_mode

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.Dropout())
    model.train()
    model[1].eval()  # a frozen batch norm inside a training model stays frozen
    before = [m.training for m in model.modules()]
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == before
