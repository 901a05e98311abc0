"""The ranking-attack suite: objectives and metrics against plain loops, target selection,
the attacks against a hand-written sign-gradient loop, ERS of published rows, bad input."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from robust_metric_learning.attacks import APGD, PGD
from robust_metric_learning.attacks.embedding.ranking import (
    CandidateRank,
    LearningToMisrank,
    QueryRank,
    TargetedMismatch,
    TopOneMisrank,
    TopOneTranslocation,
    select_targets,
)
from robust_metric_learning.deep.ranking import (
    ERS_COLUMNS,
    empirical_robustness_score,
    ranking_attack,
    ranking_robustness,
)


def _d(a, b) -> float:
    return math.sqrt(sum((float(u) - float(v)) ** 2 for u, v in zip(a, b)))


@pytest.fixture()
def space():
    g = torch.nn.functional.normalize(torch.randn(15, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
                                      dim=1)
    labels = np.array([0, 1, 2] * 5)
    q = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(1),
                                                  dtype=torch.float64), dim=1)
    return g, labels, q


def test_candidate_and_query_rank_match_plain_loops(space):
    g, _, q = space
    targets = torch.tensor([[0, 3], [4, 4], [14, 2], [7, 1], [5, 6], [9, 8]])
    idx = torch.arange(6)
    for direction in (1, -1):
        ca, qa = CandidateRank(g, targets, direction=direction), QueryRank(g, targets, direction=direction)
        s_ca, s_qa, r_ca, r_qa = ca(q, idx), qa(q, idx), ca.rank(q, idx), qa.rank(q, idx)
        for i in range(6):
            terms, hits = [], 0
            for w in targets[i].tolist():
                a = _d(q[i], g[w])
                for x in range(15):
                    b = _d(g[x], g[w])
                    terms.append(max(0.0, direction * (a - b)))
                    hits += a > b
            assert float(s_ca[i]) == pytest.approx(-sum(terms) / len(terms), abs=1e-12)
            assert float(r_ca[i]) == pytest.approx(hits / len(terms), abs=1e-12)
            terms, nearer = [], 0
            for m in targets[i].tolist():
                a = _d(q[i], g[m])
                for x in range(15):
                    b = _d(q[i], g[x])
                    terms.append(max(0.0, direction * (a - b)))
                    nearer += b < a
            assert float(s_qa[i]) == pytest.approx(-sum(terms) / len(terms), abs=1e-12)
            assert float(r_qa[i]) == pytest.approx(nearer / len(terms), abs=1e-12)


def test_label_objectives_match_plain_loops(space):
    g, labels, q = space
    own = np.array([0, 4, -1, 7, 12, 2])
    ql = np.array([labels[o] if o >= 0 else 1 for o in own])
    idx = torch.arange(6)
    ltm = LearningToMisrank(g, labels, ql, self_index=own)
    tgt = torch.tensor([3, 5, 6, 9, 10, 11])
    gtm = TopOneMisrank(g, labels, ql, tgt, self_index=own)
    gtt = TopOneTranslocation(g, labels, ql, tgt, self_index=own)
    tma = TargetedMismatch(g, tgt)
    s_ltm, s_gtm, s_gtt, s_tma = ltm(q, idx), gtm(q, idx), gtt(q, idx), tma(q, idx)
    top1, kept = ltm.top1_correct(q, idx), gtt.retained(q, idx)
    for i in range(6):
        rows = [x for x in range(15) if x != own[i]]
        d = {x: _d(q[i], g[x]) for x in rows}
        far_other = max(d[x] for x in rows if labels[x] != ql[i])
        near_same = min(d[x] for x in rows if labels[x] == ql[i])
        assert float(s_ltm[i]) == pytest.approx(-max(0.0, far_other - near_same), abs=1e-12)
        assert float(s_gtm[i]) == pytest.approx(-_d(q[i], g[tgt[i]]), abs=1e-12)
        t = d[int(tgt[i])]
        assert float(s_gtt[i]) == pytest.approx(-sum(max(0.0, d[x] - t) for x in rows) / len(rows), abs=1e-12)
        cos = float(q[i] @ g[tgt[i]]) / (float(q[i].norm()) * float(g[tgt[i]].norm()))
        assert float(s_tma[i]) == pytest.approx(cos, abs=1e-12)
        nearest = min(rows, key=lambda x: (d[x], x))
        assert bool(top1[i]) == (labels[nearest] == ql[i])
        assert bool(kept[i]) == (int(tgt[i]) in sorted(rows, key=lambda x: (d[x], x))[:4])


def test_select_targets_follow_the_suite(space):
    g, labels, _ = space
    own = np.arange(15)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    near = 4  # int(0.3 * 15)
    dist = torch.cdist(g, g)
    dist[own, own] = torch.inf
    order = dist.argsort(1)
    for kind in ("CA-", "QA-"):
        t = select_targets(kind, g, g, labels, self_index=own, n=3, near_fraction=0.3, generator=gen())
        assert t.shape == (15, 3)
        for i in range(15):
            assert set(t[i].tolist()) <= set(order[i, :near].tolist()) and i not in t[i].tolist()
        assert torch.equal(t, select_targets(kind, g, g, labels, self_index=own, n=3, near_fraction=0.3,
                                             generator=gen()))
    qa = select_targets("QA-", g, g, labels, self_index=own, n=4, near_fraction=0.3, generator=gen())
    assert all(len(set(r.tolist())) == 4 for r in qa)  # without replacement
    for kind in ("CA+", "QA+"):
        t = select_targets(kind, g, g, labels, n=2, generator=gen())
        assert t.shape == (15, 2) and int(t.min()) >= 0 and int(t.max()) < 15
    assert select_targets("TMA", g, g, labels, generator=gen()).shape == (15,)
    gtt = select_targets("GTT", g, g, labels, self_index=own)
    assert torch.equal(gtt, order[:, 0])
    gtm = select_targets("GTM", g, g, labels, self_index=own)
    for i in range(15):
        top_label = labels[int(order[i, 0])]
        candidates = [x for x in order[i].tolist() if labels[x] != top_label and x != i]
        assert int(gtm[i]) == candidates[0]
    with pytest.raises(ValueError, match="kind must be one of"):
        select_targets("XX", g, g, labels)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        select_targets("QA+", g, g, labels, n=0)
    with pytest.raises(ValueError, match="n must be at most the 4 near rows"):
        select_targets("QA-", g, g, labels, self_index=own, n=5, near_fraction=0.3)


def _tiny():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    X = torch.rand(14, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = np.array([0, 1] * 7)
    return net, X, y


def _plain_sign_pgd(net, x0, loss_of, eps, alpha, steps, keep="best"):
    """Reference: sign-gradient descent on ``loss_of`` from x0, clipped to the box and [0, 1],
    keeping the iterate with the lowest loss (the suite minimises), or the last one."""
    with torch.no_grad():
        best, best_loss = x0.clone(), float(loss_of(torch.nn.functional.normalize(net(x0[None]), dim=1)[0]))
    x = x0.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        loss = loss_of(torch.nn.functional.normalize(net(x[None]), dim=1)[0])
        (grad,) = torch.autograd.grad(loss, x)
        x = x.detach() - alpha * grad.sign()
        x = torch.min(torch.max(x, x0 - eps), x0 + eps).clamp(0, 1)
        with torch.no_grad():
            value = float(loss_of(torch.nn.functional.normalize(net(x[None]), dim=1)[0]))
        if value < best_loss:
            best, best_loss = x.clone(), value
    return best if keep == "best" else x


#: the suite's tie: squared distances of unit embeddings (size 1 + 1) within 64 float32 ulps of
#: the size squared are equal
_TIE = 64 * float(np.finfo(np.float32).eps) * 2 ** 2


def _gap(a, b):
    """``a - b``, 0 (and no gradient) within the tie."""
    d = a - b
    return d * 0 if abs(float(torch.as_tensor(d * (a + b)).detach())) <= _TIE else d


def _plain_suite_reference(kind, net, X, y, gal, i, gen_state, eps, alpha, steps, keep="best"):
    """Plain loops: the attack on input i (its loss to minimise, the sign-gradient loop) and the
    column(s) it measures, written from the suite's definitions (the gallery in float32, as the
    suite keeps it, so CA's and QA's ties are those of float32 embeddings)."""
    n = len(y)
    rows = [x for x in range(n) if x != i]
    dist = lambda e, x: (gal[x] - e).norm()  # noqa: E731
    clean_d = {x: float((gal[x] - gal[i]).norm()) for x in rows}
    top1 = min(rows, key=lambda x: (clean_d[x], x))
    target = None
    if kind in ("CA+", "CA-", "QA+", "QA-", "TMA"):
        target = int(gen_state[i])
    elif kind == "GTT":
        target = top1
    elif kind == "GTM":
        target = min((x for x in rows if y[x] != y[top1]), key=lambda x: (clean_d[x], x))
    sign = 1 if kind.endswith("+") else -1

    def loss_of(e):
        if kind in ("CA+", "CA-"):
            q = gal[target]
            return torch.stack([torch.relu(sign * _gap((e - q).norm(), (gal[x] - q).norm())) for x in range(n)]).mean()
        if kind in ("QA+", "QA-"):
            c = gal[target]
            return torch.stack([torch.relu(sign * _gap((e - c).norm(), dist(e, x))) for x in range(n)]).mean()
        if kind == "TMA":
            return -torch.nn.functional.cosine_similarity(e, gal[target], dim=0)
        if kind == "ES":
            return -(e - (gal[i] + gen_state[i])).norm()
        if kind == "LTM":
            far_other = torch.stack([dist(e, x) for x in rows if y[x] != y[i]]).max()
            near_same = torch.stack([dist(e, x) for x in rows if y[x] == y[i]]).min()
            return torch.relu(far_other - near_same)
        if kind == "GTM":
            return dist(e, target)
        return torch.stack([torch.relu(dist(e, x) - dist(e, target)) for x in rows]).mean()  # GTT

    x_adv = _plain_sign_pgd(net, X[i], loss_of, eps, alpha, steps, keep)
    with torch.no_grad():
        e = torch.nn.functional.normalize(net(x_adv[None]), dim=1)[0]
        d = {x: float(dist(e, x)) for x in rows}
        ranked = sorted(rows, key=lambda x: (d[x], x))
        if kind in ("CA+", "CA-"):
            q = gal[target]
            return {kind: 100 * sum(float(_gap((e - q).norm(), (gal[x] - q).norm())) > 0 for x in range(n)) / n}
        if kind in ("QA+", "QA-"):
            a = float((e - gal[target]).norm())
            return {kind: 100 * sum(float(_gap(a, dist(e, x))) > 0 for x in range(n)) / n}
        if kind == "TMA":
            return {kind: float(torch.nn.functional.cosine_similarity(e, gal[target], dim=0))}
        r1 = 100.0 * (y[ranked[0]] == y[i])
        if kind == "ES":
            return {"ES:D": float((e - gal[i]).norm()), "ES:R": r1}
        if kind == "GTT":
            return {kind: 100.0 * (target in ranked[:4])}
        return {kind: r1}


@pytest.mark.parametrize("keep", ["best", "last"])
@pytest.mark.parametrize("kind", ["CA+", "CA-", "QA+", "QA-", "TMA", "ES", "LTM", "GTM", "GTT"])
def test_every_attack_matches_a_plain_sign_gradient_loop(kind, keep):
    net, X, y = _tiny()
    eps, alpha, steps, seed = 0.2, 0.05, 6, 5
    attack = PGD(norm="linf", steps=steps, step_size=alpha, random_start=False, keep=keep, batch_size=4,
                 progress=False)
    res = ranking_robustness(net, X, y, eps=eps, attack=attack, attacks=[kind], random_state=seed)
    with torch.no_grad():
        gal = torch.nn.functional.normalize(net(X), dim=1)
    gen = torch.Generator().manual_seed(seed)  # the draws ranking_robustness makes for this attack
    if kind in ("CA+", "QA+", "TMA"):
        gen_state = torch.randint(14, (14,) if kind == "TMA" else (14, 1), generator=gen).reshape(14)
    elif kind in ("CA-", "QA-"):
        near = select_targets(kind, gal, gal, y, self_index=np.arange(14), generator=gen)
        gen_state = near.reshape(14)
    elif kind == "ES":
        gen_state = 1e-4 * (2 * torch.randint(2, gal.shape, generator=gen) - 1).to(gal.dtype)
    else:
        gen_state = None
    for i in range(14):
        expected = _plain_suite_reference(kind, net, X, y, gal, i, gen_state, eps, alpha, steps, keep)
        for col, value in expected.items():  # counts exact; TMA, ES:D to the gallery's float32 rounding
            assert res["per_input"][col][i] == pytest.approx(value, abs=1e-6), (col, i)


def test_the_suite_on_a_tiny_model_moves_every_column_the_attackers_way():
    net, X, y = _tiny()
    res = ranking_robustness(net, X, y, eps=0.3)
    c, a = res["clean"], res["adversarial"]
    assert set(a) == set(ERS_COLUMNS) and res["ERS"] == pytest.approx(empirical_robustness_score(a))
    # the rank columns follow their hinge objectives; R@1 under ES, LTM and GTM need not fall
    # (a move for another goal can fix a query that was wrong), so they are not checked here
    for col in ("CA+", "QA+", "GTT"):
        assert a[col] <= c[col] + 1e-9, col
    for col in ("CA-", "QA-", "TMA", "ES:D"):
        assert a[col] >= c[col] - 1e-9, col
    assert a["ES:D"] > 0.01 and a["GTT"] < c["GTT"]
    # a second attack can only help the attacker, column by column and input by input
    both = ranking_robustness(net, X, y, eps=0.3, attack=[ranking_attack(), APGD(norm="linf", steps=20,
                                                                                  random_state=0, progress=False)])
    for col in ERS_COLUMNS:
        sign = 1 if col in ("CA-", "QA-", "TMA", "ES:D") else -1
        assert np.all(sign * (both["per_input"][col] - res["per_input"][col]) >= -1e-9), col
    # each attack's own columns and ERS: the first's are those of the single-attack run
    assert both["by_attack"][0] == pytest.approx(res["adversarial"], abs=1e-12)
    assert both["by_attack_ERS"][0] == pytest.approx(res["ERS"], abs=1e-12)


def test_ers_of_the_published_fashion_mnist_rows():
    rows = {  # RobRank's doc/dmltab-fashion.txt, rc2f2 / rc2f2d / rc2f2p with ptripletN, profile rob28
        "none": (1.1, 96.8, 0.3, 97.8, 0.990, 1.604, 0.1, 0.0, 12.6, 0.0),
        "est": (14.9, 36.1, 20.9, 48.6, 0.966, 0.288, 62.0, 28.0, 20.8, 0.0),
        "act": (33.6, 14.6, 38.5, 12.1, 0.259, 0.541, 48.5, 59.5, 60.2, 0.1),
    }
    ers = {k: empirical_robustness_score(dict(zip(ERS_COLUMNS, v))) for k, v in rows.items()}
    assert ers["none"] == pytest.approx(4.170, abs=1e-9)
    assert ers["est"] == pytest.approx(38.670, abs=1e-9)
    assert ers["act"] == pytest.approx(63.285, abs=1e-9)
    with pytest.raises(ValueError, match=r"lacks the columns \['GTT'\]"):
        empirical_robustness_score(dict(zip(ERS_COLUMNS[:-1], rows["act"])))
    with pytest.raises(ValueError, match=r"scores\['CA\+'\] must be a finite number"):
        empirical_robustness_score(dict(zip(ERS_COLUMNS, (float("nan"),) * 10)))
    act = dict(zip(ERS_COLUMNS, rows["act"]))
    for column, value in (("CA+", 500.0), ("TMA", -5.0), ("ES:D", 50.0), ("GTT", -1.0)):  # outside the units
        with pytest.raises(ValueError, match=f"scores\\['{re.escape(column)}'\\] must be a finite number in"):
            empirical_robustness_score({**act, column: value})
    for value in ("0.2", True, None, np.ones(2)):
        with pytest.raises((TypeError, ValueError), match=r"scores\['CA\+'\] must be a finite number"):
            empirical_robustness_score({**act, "CA+": value})


def test_ranking_robustness_rejects_bad_input():
    net, X, y = _tiny()
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        ranking_robustness(net, X, y, eps=-0.1)
    with pytest.raises(ValueError, match="eps must be one number"):
        ranking_robustness(net, X, y, eps=[0.1, 0.2])
    with pytest.raises(ValueError, match="attacks must be a non-empty list of"):
        ranking_robustness(net, X, y, attacks=["CA+", "FOO"])
    with pytest.raises(ValueError, match="at least 2 classes"):
        ranking_robustness(net, X, np.zeros(14))
    with pytest.raises(ValueError, match="queries must be a non-empty 1-D array of rows of X"):
        ranking_robustness(net, X, y, queries=[0, 14])
    with pytest.raises(ValueError, match="X"):
        ranking_robustness(net, X * 3, y)
    with pytest.raises(ValueError, match="y"):
        ranking_robustness(net, X, y[:5])

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = net

        def forward(self, x):
            return self.inner(x).sum(1)

    with pytest.raises(ValueError, match=r"model must return a 2-D tensor of embeddings"):
        ranking_robustness(Flat(), X, y)


def test_select_targets_rejects_bad_arguments_instead_of_silent_targets(space):
    g, labels, _ = space
    own = np.arange(15)
    # GTM with one label has no valid target (it used to return row 0, the first input's own row)
    with pytest.raises(ValueError, match="GTM needs a gallery row of another label"):
        select_targets("GTM", g, g, np.zeros(15, dtype=int), self_index=own)
    # QA- asked for more targets than the near rows it can draw (own row excluded) used to return fewer
    with pytest.raises(ValueError, match="n must be at most the 14 near rows"):
        select_targets("QA-", g, g, labels, self_index=own, n=15, near_fraction=1.0)
    for bad in (float("nan"), float("inf"), -0.1, 0.0, 1.5):
        with pytest.raises(ValueError, match="near_fraction must be a finite number"):
            select_targets("CA-", g, g, labels, self_index=own, near_fraction=bad)
    with pytest.raises(TypeError, match="near_fraction must be a finite number"):
        select_targets("CA-", g, g, labels, near_fraction="x")
    with pytest.raises(ValueError, match="block must be a positive integer"):
        select_targets("GTT", g, g, labels, block=0)
    with pytest.raises(ValueError, match="queries have 3 dimensions, the gallery 4"):
        select_targets("GTT", g[:, :3], g, labels)


def test_query_rows_and_attacks_are_checked_not_truncated_or_called_blindly():
    from robust_metric_learning.deep import adversarial_retrieval

    net, X, y = _tiny()
    for fn in (ranking_robustness, adversarial_retrieval):
        kw = {"attacks": ["TMA"]} if fn is ranking_robustness else {"eps": 0.1}
        # float rows were truncated to row 0 and booleans read as rows 0/1
        with pytest.raises(ValueError, match="queries must be a non-empty 1-D array of rows of X.*dtype"):
            fn(net, X, y, queries=[0.7, 1.2], **kw)
        with pytest.raises(ValueError, match="queries must be a non-empty 1-D array of rows of X.*dtype"):
            fn(net, X, y, queries=np.ones(14, dtype=bool), **kw)
    with pytest.raises(ValueError, match="'attack' parameter of ranking_robustness must be an embedding attack"):
        ranking_robustness(net, X, y, attack="pgd", attacks=["TMA"])
    with pytest.raises(ValueError, match=r"an instance \(e.g. PGD\(\)\), got the class PGD"):
        ranking_robustness(net, X, y, attack=PGD, attacks=["TMA"])
    with pytest.raises(ValueError, match="could not be read"):  # an attack that returns no inputs
        ranking_robustness(net, X, y, attack=lambda *a, **k: 3, attacks=["TMA"])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        ranking_robustness(lambda x: x, X, y, attacks=["TMA"])
    with pytest.raises(ValueError, match=r"QA- cannot pick its targets with y and n_targets=1000"):
        ranking_robustness(net, X, y, n_targets=1000, attacks=["QA-"])
    with pytest.raises(ValueError, match=r"random_state must be an integer seed in \[0, 2\*\*32 - 1\]"):
        ranking_robustness(net, X, y, random_state=2**70, attacks=["TMA"])
    with pytest.raises(ValueError, match="'attack' parameter of ranking_robustness must be None, an embedding"):
        ranking_robustness(net, X, y, attack=[], attacks=["TMA"])
    with pytest.raises(ValueError, match="n_targets must be a positive integer"):
        ranking_robustness(net, X, y, n_targets=0, attacks=["TMA"])
    with pytest.raises(ValueError, match="random_state must be an integer seed"):
        ranking_robustness(net, X, y, random_state=None, attacks=["TMA"])
    with pytest.raises(ValueError, match="normalize must be True or False"):
        ranking_robustness(net, X, y, normalize="yes", attacks=["TMA"])


def test_ranking_objectives_check_what_their_metrics_and_targets_are_given():
    gen = torch.Generator().manual_seed(0)
    g = torch.nn.functional.normalize(torch.randn(6, 3, generator=gen, dtype=torch.float64), dim=1)
    gl = np.array([0, 0, 0, 1, 1, 1])
    ltm = LearningToMisrank(g, gl, gl[:2], self_index=[0, 1])
    with pytest.raises(ValueError, match="emb_adv must have the gallery's dimension 3, got 4"):
        ltm.top1_correct(torch.zeros(2, 4, dtype=torch.float64), torch.arange(2))
    with pytest.raises(ValueError, match=r"index must hold row numbers in \[0, 2\)"):
        ltm.top1_correct(g[:2], torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="index must hold integer row numbers"):
        ltm.top1_correct(g[:2], torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="labels must be a non-empty 1-D array"):
        LearningToMisrank(g, gl, [])
    gtt = TopOneTranslocation(g, gl, gl[:2], [3, 4], self_index=[0, 1])
    for k in (-1, "x", 0):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            gtt.retained(g[:2], torch.arange(2), k=k)
    with pytest.raises(ValueError, match="targets must not be an input's own gallery row"):
        TopOneTranslocation(g, gl, gl[:2], [0, 4], self_index=[0, 1])
    with pytest.raises(ValueError, match=r"index must hold row numbers in \[0, 2\)"):
        CandidateRank(g, [[1], [2]]).rank(g[:2], torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="generator must be a torch.Generator or None, got int"):
        select_targets("CA+", g[:2], g, gl, generator=0)
