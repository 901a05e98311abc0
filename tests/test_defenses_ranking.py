"""deep/: the defences ACT (anti-collapse triplets) and HM (hardness manipulation), against
plain-loop references on a tiny model."""

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, miners, reducers
from sklearn.datasets import load_digits

import robust_metric_learning.deep.defense_base as defense_base
from robust_metric_learning.deep import (
    DEFENSES, MLP, AntiCollapseTriplets, HardnessManipulation, Natural, get_defense, train_embedding,
)
from robust_metric_learning.deep.checkpoints import load_checkpoint

EPS = 0.1


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    keep = y < 4
    return (X[keep] / 16.0).astype(np.float32), y[keep]


@pytest.fixture()
def batch(digits):
    """18 inputs, 6 of each of 3 classes, ordered by class."""
    X, y = digits
    rows = np.concatenate([np.flatnonzero(y == c)[:6] for c in range(3)])
    return torch.as_tensor(X[rows]), torch.as_tensor(y[rows])


def _model(seed=0):
    torch.manual_seed(seed)
    return MLP(64, hidden=(16,), embedding_dim=8)


def _triplet_loss():
    """RobRank's loss: the plain mean over triplets of max(0, d(a,p) - d(a,n) + 0.2)."""
    return losses.TripletMarginLoss(margin=0.2, reducer=reducers.MeanReducer())


class _FixedMiner:
    """A 'miner' returning fixed triplets."""

    def __init__(self, a, p, n):
        self.t = tuple(torch.as_tensor(v) for v in (a, p, n))

    def __call__(self, emb, y):
        return self.t


class _Spy:
    """Records each call of perturb made by a defence (inputs, output, objective, options)."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = defense_base.perturb

        def spy(model, x_in, objective, **kw):
            out = original(model, x_in, objective, **kw)
            self.calls.append({"x": x_in.clone(), "adv": out.clone(), "objective": objective, "kw": kw})
            return out

        monkeypatch.setattr(defense_base, "perturb", spy)


class _Rows:
    """Counts the rows of every forward pass of a model (and whether it was in train mode)."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_hook(lambda m, i, o: self.calls.append((len(o), m.training)))

    @property
    def rows(self):
        return sum(r for r, _ in self.calls)


def _dist(a, b):
    return torch.linalg.vector_norm(a - b, dim=-1)


def _embed(model, x):
    with torch.no_grad():
        return model(x)


def _copy_row(members, row):
    """Shared copies: the copy of batch row ``row`` is its position among the sorted members."""
    return sorted(set(members)).index(row)


# ------------------------------------------------------------------------------------ ACT


def test_act_collapses_positives_onto_negatives_within_the_threat_model(batch, monkeypatch):
    x, y = batch
    model = _model()
    spy = _Spy(monkeypatch)
    rows = _Rows(model)
    act = AntiCollapseTriplets(eps=EPS, steps=5)
    act.step_loss(model, x, y, _triplet_loss(), None, torch.Generator().manual_seed(0))
    rows.handle.remove()
    (call,) = spy.calls
    assert call["kw"]["keep"] == "last" and call["kw"]["random_start"] is False
    delta = call["adv"] - call["x"]
    assert float(delta.abs().max()) <= EPS + 1e-6 and float(delta.abs().max()) > EPS / 2
    assert float(call["adv"].min()) >= 0 and float(call["adv"].max()) <= 1
    # the collapse: mean over all triplets of d(p~, n~) is lower than on the clean inputs
    a, p, n = (t.tolist() for t in defense_base.mine_triplets(_embed(model, x), y, None))
    members = p + n
    cp = [_copy_row(members, r) for r in p]
    cn = [_copy_row(members, r) for r in n]
    clean, adv = _embed(model, call["x"]), _embed(model, call["adv"])
    before = _dist(clean[cp], clean[cn]).mean()
    after = _dist(adv[cp], adv[cn]).mean()
    assert float(after) < float(before) - 0.05
    # the attack ran in eval mode (steps forward passes on the copies), the rest in train mode
    modes = [m for _, m in rows.calls]
    assert modes == [True] + [False] * 5 + [True]
    assert all(p_.grad is None for p_ in model.parameters())  # parameter gradients untouched


def test_act_loss_is_the_triplet_loss_on_clean_anchors_and_adversarial_copies(batch, monkeypatch):
    x, y = batch
    model = _model(1)
    spy = _Spy(monkeypatch)
    loss, made = AntiCollapseTriplets(eps=EPS, steps=3).step_loss(model, x, y, _triplet_loss(), None, None)
    adv_inputs = spy.calls[0]["adv"]
    a, p, n = (t.tolist() for t in defense_base.mine_triplets(_embed(model, x), y, None))
    members = p + n
    assert made == len(set(members)) == len(adv_inputs) == len(x)
    clean, adv = _embed(model, x), _embed(model, adv_inputs)
    terms = []
    for at, pt, nt in zip(a, p, n):  # plain loop: clean anchor, the copies of p and n
        pa, na = adv[_copy_row(members, pt)], adv[_copy_row(members, nt)]
        assert float((adv_inputs[_copy_row(members, pt)] - x[pt]).abs().max()) <= EPS + 1e-6
        terms.append(max(0.0, float(_dist(clean[at], pa) - _dist(clean[at], na)) + 0.2))
    assert float(loss.detach()) == pytest.approx(np.mean(terms), abs=1e-5)
    # not the loss with the adversarial anchors, nor the clean loss
    clean_terms = [max(0.0, float(_dist(clean[at], clean[pt]) - _dist(clean[at], clean[nt])) + 0.2)
                   for at, pt, nt in zip(a, p, n)]
    assert abs(float(loss.detach()) - np.mean(clean_terms)) > 1e-3


def test_act_per_triplet_equals_shared_when_no_input_is_shared(batch):
    x, y = batch
    miner = _FixedMiner([0, 6, 12], [1, 7, 13], [8, 14, 2])  # six different positives and negatives
    out = {}
    for copies in ("shared", "per_triplet"):
        out[copies] = AntiCollapseTriplets(eps=EPS, steps=4, copies=copies).step_loss(
            _model(2), x, y, _triplet_loss(), miner, None)
    assert float(out["shared"][0].detach()) == pytest.approx(float(out["per_triplet"][0].detach()), abs=1e-6)
    assert out["shared"][1] == out["per_triplet"][1] == 6


def test_act_copies_counted_shared_and_per_triplet(batch):
    x, y = batch
    miner = _FixedMiner([0, 0, 6, 7], [1, 2, 7, 8], [12, 13, 13, 0])  # 13 and 7 used twice, 0 as anchor and n
    made = {c: AntiCollapseTriplets(eps=EPS, steps=2, copies=c).step_loss(_model(), x, y, _triplet_loss(),
                                                                          miner, None)[1]
            for c in ("shared", "per_triplet")}
    assert made == {"shared": 7, "per_triplet": 8}  # p and n: {1, 2, 7, 8} and {12, 13, 0}
    capped = AntiCollapseTriplets(eps=EPS, steps=2, copies="per_triplet", max_triplets=3)
    assert capped.step_loss(_model(), x, y, _triplet_loss(), miner, torch.Generator().manual_seed(0))[1] == 6


# ------------------------------------------------------------------------------------- HM


def _et(emb, slots, target):
    """The ET objective by a plain loop over triplets."""
    vals = []
    for sa, sp, sn in zip(*slots):
        h = float(_dist(emb[sa], emb[sp]) - _dist(emb[sa], emb[sn]))
        vals.append(min(0.0, h - target) ** 2)
    return float(np.mean(vals))


def _hm_slots(triplets):
    a, p, n = (t.tolist() for t in triplets)
    members = a + p + n
    return [[_copy_row(members, r) for r in role] for role in (a, p, n)]


def test_hm_objective_decreases_and_targets_follow_the_gradual_schedule(batch, monkeypatch):
    x, y = batch
    model = _model(3)
    miner = _FixedMiner([0, 1, 6, 7, 12, 13], [2, 3, 8, 9, 14, 15], [6, 12, 0, 13, 1, 7])
    slots = _hm_slots(miner.t)
    hm = HardnessManipulation(eps=EPS, steps=6, stop_tol=None, ics_weight=0.0)
    assert hm.prev_loss is None and hm.gradual_target(_triplet_loss()) == pytest.approx(-0.2)
    spy = _Spy(monkeypatch)
    loss1, made = hm.step_loss(model, x, y, _triplet_loss(), miner, None)
    # the first target is -m: the captured objective is the ET objective at -0.2, by hand
    obj = spy.calls[0]["objective"]
    e0 = _embed(model, spy.calls[0]["x"])
    assert float(obj.loss(e0)) == pytest.approx(_et(e0, slots, -0.2), abs=1e-6)
    # the state: the previous batch's adversarial loss (no ICS here, so the returned loss)
    assert hm.prev_loss == pytest.approx(float(loss1.detach()))
    assert made == len(set(sum((t.tolist() for t in miner.t), [])))
    # the second call targets -clip(prev_loss, 0, m)
    target2 = -min(max(float(loss1.detach()), 0.0), 0.2)
    assert hm.gradual_target(_triplet_loss()) == pytest.approx(target2)
    hm.load_state_dict({"prev_loss": 0.0})  # a hard target, so the objective is not zero at the input
    target2 = 0.0
    hm.step_loss(model, x, y, _triplet_loss(), miner, None)
    obj, call = spy.calls[1]["objective"], spy.calls[1]
    e0, e1 = _embed(model, call["x"]), _embed(model, call["adv"])
    assert float(obj.loss(e0)) == pytest.approx(_et(e0, slots, target2), abs=1e-6)
    assert _et(e0, slots, target2) > 1e-4
    assert _et(e1, slots, target2) < 0.5 * _et(e0, slots, target2)  # the objective decreased
    delta = call["adv"] - call["x"]
    assert float(delta.abs().max()) <= EPS + 1e-6 and 0 <= float(call["adv"].min()) <= float(call["adv"].max()) <= 1
    hm.reset()
    assert hm.prev_loss is None and hm.state_dict() == {"prev_loss": None}


def test_hm_early_stop(batch):
    x, y = batch
    model = _model(4)
    miner = _FixedMiner([0, 6, 12], [1, 7, 13], [6, 12, 0])
    B, C, steps = len(x), 6, 8

    def rows(prev_loss=None, **kw):
        count = _Rows(model)
        hm = HardnessManipulation(eps=EPS, steps=steps, ics_weight=0.0, **kw)
        hm.load_state_dict({"prev_loss": prev_loss})
        hm.step_loss(model, x, y, _triplet_loss(), miner, None)
        count.handle.remove()
        return count.rows

    # every triplet already harder than the target -10: zero objective and gradient, one attack step
    assert rows(margin=10.0) == B + 1 * C + C
    assert rows(margin=10.0, stop_tol=None) == B + steps * C + C
    # a tolerance every change meets: RobRank's rule stops after the second step
    assert rows(prev_loss=0.0, margin=0.2, stop_tol=1e9) == B + 2 * C + C  # target 0: a non-zero objective
    # RobRank's 1e-7: here the objective reaches 0 after a few steps, then nothing moves
    assert B + 2 * C + C < rows(prev_loss=0.0, margin=0.2) < B + steps * C + C


def test_hm_ics_term_equals_a_hand_computation(batch, monkeypatch):
    x, y = batch
    model = _model(5)
    miner = _FixedMiner([0, 1, 6, 12], [2, 3, 8, 14], [6, 12, 0, 7])
    spy = _Spy(monkeypatch)
    out = []
    for w in (0.0, 0.5):  # a wide eps and a hard target (0), so the anchors move far
        hm = HardnessManipulation(eps=0.5, steps=5, ics_weight=w)
        hm.load_state_dict({"prev_loss": 0.0})
        out.append(hm.step_loss(model, x, y, _triplet_loss(), miner, None)[0])
    base, with_ics = out
    assert torch.equal(spy.calls[0]["adv"], spy.calls[1]["adv"])  # the same copies
    sa, _, _ = _hm_slots(miner.t)
    clean, adv = _embed(model, x), _embed(model, spy.calls[1]["adv"])
    a, p = miner.t[0].tolist(), miner.t[1].tolist()
    ics = np.mean([max(0.0, float(_dist(clean[at], adv[s]) - _dist(clean[at], clean[pt])))
                   for at, pt, s in zip(a, p, sa)])
    assert ics > 0
    assert float(with_ics.detach()) - float(base.detach()) == pytest.approx(0.5 * ics, abs=1e-6)
    # ics_weight=0: exactly the triplet loss on the adversarial copies, by hand
    sa, sp, sn = _hm_slots(miner.t)
    terms = [max(0.0, float(_dist(adv[i], adv[j]) - _dist(adv[i], adv[k])) + 0.2) for i, j, k in zip(sa, sp, sn)]
    assert float(base.detach()) == pytest.approx(np.mean(terms), abs=1e-5)


def test_hm_gradients_reach_the_clean_anchors_only_through_the_ics_term(batch):
    x, y = batch
    miner = _FixedMiner([0, 6], [1, 7], [6, 12])
    for w, expect in ((0.0, False), (0.5, True)):
        model = _model(6)
        x_in = x.clone().requires_grad_(True)
        hm = HardnessManipulation(eps=0.5, steps=5, ics_weight=w)
        hm.load_state_dict({"prev_loss": 0.0})
        loss, _ = hm.step_loss(model, x_in, y, _triplet_loss(), miner, None)
        (g,) = torch.autograd.grad(loss, x_in, allow_unused=True)
        assert (g is not None and bool(g[[0, 6]].abs().sum() > 0)) == expect


def test_hm_destination_miner(batch):
    x, y = batch
    model = _model(7)
    dest = miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")
    hm = HardnessManipulation(eps=EPS, steps=3, gradual=False, destination_miner=dest)
    loss, made = hm.step_loss(model, x, y, _triplet_loss(), None, None)
    assert torch.isfinite(loss) and made == len(x) and hm.prev_loss is None
    # per source triplet: the mean hardness of the destination triplets of its anchor
    clean = _embed(model, x)
    da, dp, dn = (t.tolist() for t in dest(clean, y))
    h = {}
    for i, j, k in zip(da, dp, dn):
        h.setdefault(i, []).append(float(_dist(clean[i], clean[j]) - _dist(clean[i], clean[k])))
    anchors = torch.arange(len(x))
    got = hm._destination(clean, y, anchors, defense_base.loss_distance(_triplet_loss()))
    fallback = np.mean(sum(h.values(), []))
    want = [np.mean(h[i]) if i in h else fallback for i in range(len(x))]
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    # no destination triplet at all: nothing is perturbed
    empty = HardnessManipulation(eps=EPS, steps=3, gradual=False, destination_miner=_FixedMiner([], [], []))
    assert empty.step_loss(model, x, y, _triplet_loss(), None, None)[1] == 0


def test_joint_objectives_have_correct_gradients():
    torch.manual_seed(0)
    e = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    slots = [torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])]
    loss = _triplet_loss()
    et = HardnessManipulation.et_objective(loss, slots, 0.5, 6)
    collapse = AntiCollapseTriplets.collapse_objective(loss, slots[1], slots[2], 6)
    idx = torch.arange(6)
    assert torch.autograd.gradcheck(lambda z: et(z, idx).sum(), (e,))
    assert torch.autograd.gradcheck(lambda z: collapse(z, idx).sum(), (e,))
    # the scores sum to minus the objective (perturb's ascent is a descent on it)
    assert float(et(e, idx).sum().detach()) == pytest.approx(-float(et.loss(e).detach()))


# ------------------------------------------------------------------------------ training


@pytest.mark.parametrize("defense", ["act", "hm", AntiCollapseTriplets(eps=0.05, steps=2, copies="per_triplet",
                                                                       max_triplets=50),
                                     HardnessManipulation(eps=0.05, steps=2, copies="per_triplet", max_triplets=50)])
def test_train_embedding_runs_with_act_and_hm(digits, defense):
    X, y = digits
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    hist = train_embedding(model, X[:200], y[:200], loss=_triplet_loss(), defense=defense, epochs=1, m=4,
                           batches_per_epoch=2, progress=False)
    assert np.isfinite(hist.loss[0]) and hist.n_adversarial[0] > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_hm_state_is_checkpointed_and_resume_is_exact(digits, tmp_path):
    X, y = digits
    kw = dict(loss=_triplet_loss(), epochs=3, m=4, batches_per_epoch=2, seed=2, progress=False)

    def hm():  # margin 1: a restored prev_loss (< 1) gives another target than a reset one (-1)
        return HardnessManipulation(eps=0.05, steps=2, margin=1.0)

    a = _model()
    train_embedding(a, X[:200], y[:200], defense=hm(), **kw)
    b = _model()
    used = hm()
    used.prev_loss = 0.5  # a fresh run resets the state (else its first target is -0.5, not -1)
    train_embedding(b, X[:200], y[:200], defense=used, **{**kw, "epochs": 2}, checkpoint=tmp_path / "ck.pt")
    saved = load_checkpoint(tmp_path / "ck.pt")["defense"]
    assert saved == {"prev_loss": used.prev_loss} and 0 <= saved["prev_loss"] < 1
    c = _model()
    hist = train_embedding(c, X[:200], y[:200], defense=hm(), **kw, checkpoint=tmp_path / "ck.pt")
    assert hist.resumed_from == 2
    for pa, pc in zip(a.parameters(), c.parameters()):
        assert torch.equal(pa, pc)
    # the repr (a checkpoint setting) tells HM settings apart, the state aside
    assert repr(hm()) == repr(used) and repr(hm()) != repr(HardnessManipulation(eps=0.05, steps=2, margin=1.0,
                                                                                       ics_weight=0.1))


def test_reprs_list_every_parameter():
    dest = miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")
    r = repr(HardnessManipulation(gradual=False, destination_miner=dest))
    assert '"margin": 0.2' in r and "semihard" in r
    assert r != repr(HardnessManipulation(gradual=False, destination_miner=miners.TripletMarginMiner(
        margin=0.3, type_of_triplets="semihard")))
    assert repr(AntiCollapseTriplets(copies="per_triplet")) == (
        "AntiCollapseTriplets(eps=0.1, steps=10, norm=LinfNorm(), step_size=None, random_start=False, "
        "copies='per_triplet', max_triplets=None)")


# ---------------------------------------------------------------------------------- cost


@pytest.mark.parametrize("name", ["act", "hm"])
def test_forward_rows_per_step_at_most_steps_plus_two_batches(batch, name):
    """Rows forwarded by one step_loss with every triplet of the batch (shared copies):
    exactly ``B + (steps + 1) * C`` with ``C <= B`` copies, so at most ``(steps + 2) * B``;
    HM's ICS term reuses the clean forward pass (no more rows), its early stop only removes
    rows. A natural step forwards ``B`` rows."""
    x, y = batch
    B, steps = len(x), 5
    model = _model()
    nat = _Rows(model)
    Natural().step_loss(model, x, y, _triplet_loss(), None, None)
    nat.handle.remove()
    assert nat.rows == B
    kw = dict(stop_tol=None, ics_weight=0.5) if name == "hm" else {}
    count = _Rows(model)
    _, C = get_defense(name, eps=EPS, steps=steps, **kw).step_loss(model, x, y, _triplet_loss(), None, None)
    assert C == B
    assert count.rows == B + (steps + 1) * C <= (steps + 2) * B


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ["act", "hm"])
@pytest.mark.parametrize("params, match", [
    (dict(eps=-0.1), "'eps' parameter of .* must be a number in \\[0, inf\\]; got -0.1"),
    (dict(steps=0), "'steps' parameter .* must be an int in \\[1, inf\\]; got 0"),
    (dict(copies="each"), "'copies' parameter .* must be one of 'shared', 'per_triplet'; got 'each'"),
    (dict(max_triplets=0), "'max_triplets'"),
    (dict(random_start=1), "'random_start'"),
    (dict(norm="l3"), "'norm'"),
])
def test_bad_parameters(name, params, match):
    with pytest.raises(ValueError, match=match):
        get_defense(name, **params)


def test_bad_hm_parameters_and_inputs(batch):
    x, y = batch
    for params, match in [(dict(ics_weight=-1), "'ics_weight'"), (dict(stop_tol=-1e-7), "'stop_tol'"),
                          (dict(margin=0), "'margin'"), (dict(gradual=False), "needs a destination_miner"),
                          (dict(destination_miner=miners.TripletMarginMiner()), "no effect with gradual=True"),
                          (dict(gradual=False, destination_miner="semihard"), "'destination_miner'")]:
        with pytest.raises(ValueError, match=match):
            HardnessManipulation(**params)
    with pytest.raises(ValueError, match="margin"):  # the gradual target needs the loss's margin
        HardnessManipulation(steps=1).step_loss(_model(), x, y, losses.ContrastiveLoss(), None, None)
    assert HardnessManipulation(steps=1, margin=0.5).step_loss(_model(), x, y, losses.ContrastiveLoss(), None,
                                                               None)[1] > 0
    with pytest.raises(ValueError, match="defense must be one of"):
        get_defense("anti-collapse")
    assert {"act", "hm"} <= set(DEFENSES)


@pytest.mark.parametrize("name", ["act", "hm"])
def test_bad_batches(batch, name):
    x, y = batch
    defense = get_defense(name, eps=EPS, steps=2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        defense.step_loss(_model(), x[:6], y[:6], _triplet_loss(), None, None)
    flat = torch.nn.Sequential(torch.nn.Linear(64, 3), torch.nn.Flatten(0))
    with pytest.raises(ValueError, match="model must return a 2-D tensor of embeddings with one row per input"):
        defense.step_loss(flat, x, y, _triplet_loss(), None, None)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        defense.step_loss(_model(), x * 16, y, _triplet_loss(), None, None)


def test_perturb_keep_last_and_stop_tol():
    from robust_metric_learning.attacks.embedding.pgd import perturb
    from robust_metric_learning.attacks import EmbeddingShift

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    x = torch.full((5, 4), 0.5)
    obj = EmbeddingShift(net(x).detach())
    g = torch.Generator().manual_seed(0)
    last = perturb(net, x, obj, eps=0.1, steps=3, keep="last", generator=g)
    assert float((last - x).abs().max()) <= 0.1 + 1e-6
    # no random start: the shift has a zero gradient at the input, so nothing moves and it stops
    calls = []
    h = net.register_forward_hook(lambda m, i, o: calls.append(1))
    same = perturb(net, x, obj, eps=0.1, steps=5, keep="last", random_start=False, stop_tol=0.0)
    h.remove()
    assert torch.equal(same, x) and len(calls) == 1
    for kw, match in [(dict(keep="first"), "keep must be 'best' or 'last'"),
                      (dict(keep="last", restarts=2), "keep='last' needs restarts=1"),
                      (dict(stop_tol=-1.0), "stop_tol must be None or a finite number >= 0")]:
        with pytest.raises(ValueError, match=match):
            perturb(net, x, obj, eps=0.1, **kw)


@pytest.mark.parametrize("loss", [_triplet_loss(), losses.MultiSimilarityLoss(), object()])
def test_distance_lookup_matrix_and_rows_agree(loss):
    torch.manual_seed(1)
    e1, e2 = torch.randn(7, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    i, j = torch.randint(0, 7, (30,)), torch.randint(0, 4, (30,))
    dist = defense_base.loss_distance(loss)
    from_matrix = defense_base.distance_lookup(dist, e1, e2, n_pairs=30)(i, j)  # 28 <= 30 * 5: the matrix
    from_rows = defense_base.distance_lookup(dist, e1, e2, n_pairs=1)(i, j)  # 28 > 5: the rows
    assert torch.allclose(from_matrix, from_rows, atol=1e-5)


# ------------------------------------------------------------------ bad defence names and labels


def test_get_defense_refuses_params_for_an_object_and_names_that_are_not_names():
    act = AntiCollapseTriplets(eps=0.1)
    assert get_defense(act) is act
    with pytest.raises(ValueError, match=r"params \['eps', 'steps'\] cannot be applied to a defense object; set "
                                         "them on it"):
        get_defense(act, eps=0.5, steps=3)
    for name in (["act"], {"act": {}}, ("act",), None, AntiCollapseTriplets):
        with pytest.raises(ValueError, match=r"defense must be one of \['act', .*\] or a Defense object "
                                             rf"\(see get_defense\), got {type(name).__name__} "):
            get_defense(name)


@pytest.mark.parametrize("name", ["act", "natural", "ours", "naive", "est", "noise"])
def test_step_loss_takes_any_class_labels_and_refuses_bad_ones(batch, name):
    x, y = batch
    defense = get_defense(name) if name in ("natural", "noise") else get_defense(name, eps=EPS, steps=2)
    model = _model()

    def loss_of(labels):
        torch.manual_seed(0)
        return defense.step_loss(model, x, labels, _triplet_loss(), None, torch.Generator().manual_seed(0))

    ref, made = loss_of(y)
    for labels in (y.numpy(), y.tolist(), np.array(["a", "b", "c"])[y.numpy()], y.double()):
        value, n = loss_of(labels)
        assert torch.equal(value, ref) and n == made
    with pytest.raises(ValueError, match="y contains NaN or infinity"):
        loss_of(torch.where(torch.arange(len(y)) == 0, torch.nan, y.double()))
    with pytest.raises(ValueError, match="y has 17 labels, x has 18 samples"):
        loss_of(y[:-1])
    with pytest.raises(ValueError, match=r"y must be a 1-D array of labels, got shape \(2, 9\)"):
        loss_of(y.reshape(2, 9))


# ------------------------------------------------------------------------------------ EST


def test_est_as_published_starts_at_the_input_and_trains_on_the_last_iterate(batch, monkeypatch):
    """EST(random_start=False, keep="last"), RobRank's: the attack starts at the input with a
    nudged reference (the shift's gradient vanishes at the input) and its last iterate equals a
    plain sign-gradient loop's on ||f(x') - (f(x) + 1e-4 s)||."""
    from robust_metric_learning.deep import EmbeddingShiftTriplets

    x, y = batch
    model = _model()
    spy = _Spy(monkeypatch)
    est = get_defense("est", eps=EPS, steps=4, step_size=EPS / 2, random_start=False, keep="last")
    assert isinstance(est, EmbeddingShiftTriplets)
    gen = torch.Generator().manual_seed(3)
    sign = 2 * torch.randint(2, (len(x), 8), generator=torch.Generator().manual_seed(3)) - 1  # its draw
    est.step_loss(model, x, y, _triplet_loss(), None, gen)
    (call,) = spy.calls
    assert call["kw"]["keep"] == "last" and call["kw"]["random_start"] is False
    reference = _embed(model, x) + 1e-4 * sign.float()
    model.eval()
    xr = x.clone()
    for _ in range(4):
        xr.requires_grad_(True)
        (g,) = torch.autograd.grad(_dist(model(xr), reference).sum(), xr)
        xr = torch.min(torch.max(xr.detach() + EPS / 2 * g.sign(), x - EPS), x + EPS).clamp(0, 1)
    assert torch.allclose(call["adv"], xr, atol=1e-6)
    assert float((call["adv"] - x).abs().max()) == pytest.approx(EPS, abs=1e-6)
    # the default: a random start and the best iterate
    spy.calls.clear()
    get_defense("est", eps=EPS, steps=4).step_loss(model, x, y, _triplet_loss(), None, gen)
    assert spy.calls[0]["kw"]["keep"] == "best" and spy.calls[0]["kw"]["random_start"] is True
    with pytest.raises(ValueError, match="keep"):
        get_defense("est", keep="first")
    # the options are in the repr (a training checkpoint's key); the defaults print as before
    assert repr(est) == "EmbeddingShiftTriplets(eps=0.1, steps=4, random_start=False, keep='last', norm=LinfNorm(), " \
                        "step_size=0.05)"
    assert repr(get_defense("est", eps=EPS, steps=4)) == "EmbeddingShiftTriplets(eps=0.1, steps=4, norm=LinfNorm())"
    # without a generator (CPU draws)
    assert torch.isfinite(est.step_loss(model, x, y, _triplet_loss(), None, None)[0])
