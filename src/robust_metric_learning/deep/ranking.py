"""Empirical robustness of retrieval under the ranking-attack suite, and its summary score (ERS).

:func:`ranking_robustness` runs the ten measurements of the suite (Zhou et al., ECCV 2020 and
TPAMI 2024, as published with their code, RobRank) on a model: every input of ``X`` is attacked
as a query (as a candidate for CA) against the clean gallery of all of ``X``; each attack's
targets are drawn by :func:`~robust_metric_learning.attacks.embedding.ranking.select_targets`.
:func:`empirical_robustness_score` folds the ten into one number in [0, 100] (higher: more
robust) as the suite does.

Differences from the published code: the attack keeps each input's best iterate (by its
objective) instead of the last (never weaker); LTM leaves the query's own
gallery copy out of its same-class set (the published code means to, but keeps it); GTM's target
is the nearest gallery item of another label than the top-1 neighbour's (the published code
indexes a filtered list with the gallery's numbering, which makes it an arbitrary item); ES:D is
the shift of the returned perturbation (the published code reports the iterate before the last
step); ES's reference is nudged off the clean embedding by 1e-4 per coordinate (1e-7 there) so
that the shift has a gradient at the start. Metrics are means over the inputs (the published
code averages batch means).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .._validation import (
    check_bool,
    check_eps,
    check_labels,
    check_model_output,
    check_positive_int,
    check_query_rows,
    check_real,
    check_seed,
    retrieval_label_codes,
)
from ..attacks.embedding.objectives import SHIFT_NUDGE, EmbeddingShift
from ..attacks.embedding.ranking import (
    CandidateRank,
    LearningToMisrank,
    QueryRank,
    TargetedMismatch,
    TopOneMisrank,
    TopOneTranslocation,
    select_targets,
)
from .metrics import _check_attack_object, _checked_attack_output
from .training import _check_module, _inputs, embed

__all__ = ["ERS_COLUMNS", "RANKING_ATTACKS", "ROBRANK_EPS", "ROBRANK_STEP", "empirical_robustness_score",
           "ranking_attack", "ranking_robustness"]

#: the suite's attacks, in its order (ES gives two columns)
RANKING_ATTACKS = ("CA+", "CA-", "QA+", "QA-", "TMA", "ES", "LTM", "GTM", "GTT")
#: the columns of the published tables and of ERS
ERS_COLUMNS = ("CA+", "CA-", "QA+", "QA-", "TMA", "ES:D", "ES:R", "LTM", "GTM", "GTT")
#: the published budget for 28x28 images (profile "rob28"): l_inf 77/255, steps of 3/255, 32 steps
ROBRANK_EPS = 77 / 255
ROBRANK_STEP = 3 / 255
ROBRANK_STEPS = 32

# each column's range in the published units (the others are percentages, [0, 100])
_RANGES = {"TMA": (-1.0, 1.0), "ES:D": (0.0, 2.0)}


def _range(column: str) -> tuple[float, float]:
    """A column's range with a margin of 1e-6 of its width for rounding (a mean cosine of 1 + 1e-16)."""
    lo, hi = _RANGES.get(column, (0.0, 100.0))
    return lo - 1e-6 * (hi - lo), hi + 1e-6 * (hi - lo)
# each column: +1 where the attacker raises the value, -1 where it lowers it
_ATTACKER = {"CA+": -1, "CA-": 1, "QA+": -1, "QA-": 1, "TMA": 1, "ES:D": 1, "ES:R": -1, "LTM": -1, "GTM": -1,
             "GTT": -1}


def empirical_robustness_score(scores: Mapping[str, float]) -> float:
    """ERS from the ten columns in the published units: CA+, CA-, QA+, QA- rank percentiles in
    percent; TMA a cosine; ES:D an embedding distance (in [0, 2] on unit embeddings); ES:R, LTM,
    GTM, GTT in percent.

    The mean of ``2 CA+, 100 - CA-, 2 QA+, 100 - QA-, 100 (1 - TMA), 50 (2 - ES:D), ES:R, LTM,
    GTM, GTT`` (each 100 for a model the attacks cannot move, 0 for one they fully control).

    Examples
    --------
    >>> row = {"CA+": 33.6, "CA-": 14.6, "QA+": 38.5, "QA-": 12.1, "TMA": 0.259, "ES:D": 0.541,
    ...        "ES:R": 48.5, "LTM": 59.5, "GTM": 60.2, "GTT": 0.1}
    >>> round(empirical_robustness_score(row), 2)
    63.29
    """
    if not isinstance(scores, Mapping):
        raise ValueError(f"scores must be a mapping of the columns {list(ERS_COLUMNS)}, got {type(scores).__name__}")
    missing = [c for c in ERS_COLUMNS if c not in scores]
    if missing:
        raise ValueError(f"scores lacks the columns {missing}")
    v = {c: check_real(scores[c], name=f"scores[{c!r}]", low=lo, high=hi)
         for c, (lo, hi) in ((c, _range(c)) for c in ERS_COLUMNS)}
    terms = [2 * v["CA+"], 100 - v["CA-"], 2 * v["QA+"], 100 - v["QA-"], 100 * (1 - v["TMA"]),
             50 * (2 - v["ES:D"]), v["ES:R"], v["LTM"], v["GTM"], v["GTT"]]
    return float(np.mean(terms))


def ranking_attack(*, steps: int = ROBRANK_STEPS, step_size: float = ROBRANK_STEP, batch_size: int = 128,
                   random_state: int | None = 0, keep: str = "best"):
    """The suite's attack: PGD, l_inf, fixed steps of ``step_size``, no random start; each input's
    best iterate, or with ``keep="last"`` the last one, as the published suite reports."""
    from ..attacks import PGD

    return PGD(norm="linf", steps=steps, step_size=step_size, random_start=False, keep=keep,
               batch_size=batch_size, random_state=random_state, progress=False)


class _Normalized(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        emb = self.model(x)
        check_model_output(emb, n_rows=x.shape[0])
        return torch.nn.functional.normalize(emb, dim=1)


def _objective(kind: str, gallery, labels, rows, targets, *, self_index):
    if kind in ("CA+", "CA-"):
        return CandidateRank(gallery, targets, direction=1 if kind == "CA+" else -1)
    if kind in ("QA+", "QA-"):
        return QueryRank(gallery, targets, direction=1 if kind == "QA+" else -1)
    if kind == "TMA":
        return TargetedMismatch(gallery, targets)
    if kind == "ES":  # the reference nudged off the clean embedding: the shift has no gradient at 0
        return EmbeddingShift(gallery[rows] + targets)
    if kind == "LTM":
        return LearningToMisrank(gallery, labels, labels[rows], self_index=self_index)
    cls = TopOneMisrank if kind == "GTM" else TopOneTranslocation
    return cls(gallery, labels, labels[rows], targets, self_index=self_index)


def _metrics(kind: str, obj, emb: torch.Tensor, clean: torch.Tensor, idx: torch.Tensor, judge) -> dict[str, torch.Tensor]:
    """Per-input values of the columns one attack gives, in the published units."""
    if kind in ("CA+", "CA-", "QA+", "QA-"):
        return {kind: 100 * obj.rank(emb, idx)}
    if kind == "TMA":
        with torch.no_grad():
            return {kind: obj(emb.double(), idx)}
    if kind == "ES":
        return {"ES:D": (emb.double() - clean.double()).norm(dim=1), "ES:R": 100 * judge.top1_correct(emb, idx).double()}
    if kind == "GTT":
        return {kind: 100 * obj.retained(emb, idx).double()}
    return {kind: 100 * judge.top1_correct(emb, idx).double()}


def ranking_robustness(model: torch.nn.Module, X: Any, y: Any, *, eps: float = ROBRANK_EPS,
                       attack: Any = None, attacks: Sequence[str] = RANKING_ATTACKS, n_targets: int = 1,
                       queries: Any = None, normalize: bool = True, random_state: int = 0,
                       batch_size: int = 1024) -> dict[str, Any]:
    """The ranking-attack suite on ``model``: every input of ``queries`` attacked against the
    clean gallery ``X``, the ten columns and ERS.

    Parameters
    ----------
    model : torch.nn.Module
    X : array or tensor of shape (n, ...), values in [0, 1]
        The gallery; its rows ``queries`` are attacked (as candidates for CA).
    y : array of shape (n,)
    eps : float, default=77/255
        l_inf budget (the attack object's norm otherwise).
    attack : attack object or sequence of them, default=:func:`ranking_attack` (the suite's PGD)
        With several, each input's value of each column is the attacker's best over them.
    attacks : sequence of str, default=all of ``RANKING_ATTACKS``
    n_targets : int, default=1
        W (candidates' queries) and M (queries' candidates).
    queries : array of int, default=None (all rows)
    normalize : bool, default=True
        L2-normalise the model's output (the published protocol's distance); a model whose output
        is already unit-norm is unchanged by it.
    random_state : int, default=0
        Seeds the targets (each attack's drawn in turn from one generator).
    batch_size : int, default=1024
        Rows embedded at once.

    Returns
    -------
    dict
        ``clean`` and ``adversarial`` (column -> value in the published units), ``ERS`` (of the
        adversarial columns when all ten were run and ES:D lies in [0, 2], as it does on
        embeddings of norm at most 1; else None), ``recall_at_1`` (clean, leave-one-out),
        ``per_input`` (column -> per-input adversarial values, numpy), ``by_attack`` and
        ``by_attack_ERS`` (per attack object, in order: its own columns and ERS, as if it had
        been the only one), ``eps``, ``n_queries``.
    """
    unknown = [a for a in (attacks if isinstance(attacks, (list, tuple)) else [attacks]) if a not in RANKING_ATTACKS]
    if unknown or not isinstance(attacks, (list, tuple)) or not attacks:
        raise ValueError(f"attacks must be a non-empty list of {list(RANKING_ATTACKS)}, got {attacks!r}")
    e = check_eps(eps)
    if np.ndim(eps) != 0:
        raise ValueError(f"eps must be one number, got {eps!r}")
    e = float(e[0])
    X = _inputs(_check_module(model), X)
    labels = check_labels(y, n_samples=len(X), name="y")
    retrieval_label_codes(labels, len(X))  # at least 2 classes
    attack_list = [ranking_attack()] if attack is None else list(attack) if isinstance(attack, (list, tuple)) \
        else [attack]
    if not attack_list:
        raise ValueError("The 'attack' parameter of ranking_robustness must be None, an embedding attack object "
                         f"(e.g. PGD(), APGD()) or a non-empty list of them, got {attack!r}")
    for a in attack_list:
        _check_attack_object(a, "ranking_robustness", "PGD(), APGD()")
    n_targets = check_positive_int(n_targets, name="n_targets")
    normalize = check_bool(normalize, name="normalize")
    random_state = check_seed(random_state, name="random_state")
    net = _Normalized(model) if normalize else model
    gallery = embed(net, X, batch_size=batch_size).detach()
    rows = check_query_rows(queries, len(X))
    idx = torch.arange(len(rows))
    clean = gallery[rows]
    gen = torch.Generator().manual_seed(int(random_state))
    judge = LearningToMisrank(gallery, labels, labels[rows.numpy()], self_index=rows)
    out: dict[str, Any] = {"eps": e, "n_queries": int(len(rows)), "clean": {}, "adversarial": {},
                           "per_input": {}, "by_attack": [{} for _ in attack_list],
                           "recall_at_1": float(judge.top1_correct(clean, idx).double().mean())}
    for kind in attacks:
        targets = None
        if kind == "ES":
            targets = SHIFT_NUDGE * (2 * torch.randint(2, clean.shape, generator=gen) - 1).to(clean.dtype)
        elif kind != "LTM":
            try:
                targets = select_targets(kind, clean, gallery, labels, self_index=rows, n=n_targets, generator=gen)
            except ValueError as exc:  # the data (y) or n_targets leave the attack no target
                raise ValueError(f"{kind} cannot pick its targets with y and n_targets={n_targets} as given: "
                                 f"{exc}") from None
        obj = _objective(kind, gallery, labels, rows.numpy(), targets, self_index=rows)
        for col, v in _metrics(kind, obj, clean, clean, idx, judge).items():
            out["clean"][col] = float(v.mean())
        per: dict[str, list[torch.Tensor]] = {}
        for a in attack_list:
            # the attack's perturbed inputs, checked (box, eps-ball) and embedded here, as for
            # adversarial_retrieval: an attack cannot report a robustness that is not there
            adv_x = _checked_attack_output(a, a(net, X[rows], obj, eps=e), X[rows], e)
            emb = embed(net, adv_x, batch_size=batch_size, keep_dtype=True)
            for col, v in _metrics(kind, obj, emb, clean, idx, judge).items():
                per.setdefault(col, []).append(v.double().cpu())
        for col, vs in per.items():
            stacked = torch.stack(vs)
            worst = stacked.amax(0) if _ATTACKER[col] > 0 else stacked.amin(0)
            out["per_input"][col] = worst.numpy()
            out["adversarial"][col] = float(worst.mean())
            for own, v in zip(out["by_attack"], vs):
                own[col] = float(v.mean())
    out["ERS"] = _ers(out["adversarial"])
    out["by_attack_ERS"] = [_ers(own) for own in out["by_attack"]]
    return out


def _ers(columns: Mapping[str, float]) -> float | None:
    """ERS of the columns when all ten are there and ES:D lies in [0, 2] (its term assumes
    embeddings of norm at most 1), else None."""
    full = all(c in columns for c in ERS_COLUMNS)
    return empirical_robustness_score(columns) if full and columns["ES:D"] <= _range("ES:D")[1] else None
