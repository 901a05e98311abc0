"""Ensembles of embedding attacks: the worst case over member attacks.

- :class:`EnsembleAttack`: a query counts as broken if any member breaks it; later members attack
  only the survivors (a subclass may focus a member on some of them, or stop early).
- :class:`RetrievalEnsemble`: the reported evaluation of retrieval (``adversarial_retrieval``'s
  default attack): APGD on the retrieval margin, APGD on a cross-entropy over the gallery at
  several temperatures and fixed-step PGD, then focus stages and rounds on the near misses.

Called like every embedding attack::

    raw, clipped, success = RetrievalEnsemble(random_state=0)(model, images, objective, eps=0.1)
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, Callable, Generator, Sequence

import numpy as np
import torch

from ..._validation import (
    Interval,
    SequenceOf,
    TupleOf,
    check_params,
    validate_params,
)
from .apgd import APGD
from .base import (
    _COMMON_CONSTRAINTS,
    EmbeddingAttack,
    EmbeddingAttackResult,
    _score,
    check_call,
)
from .norms import Norm, get_norm
from .pgd import PGD
from .retrieval import RetrievalCrossEntropy, RetrievalObjective

__all__ = ["EnsembleAttack", "RetrievalEnsemble"]


# ------------------------------------------------------------------------- ensembles


class EnsembleAttack(EmbeddingAttack):
    """The worst case over several attacks, each on its own objective.

    The members run in order; each attacks only the inputs no earlier member broke (by the
    success of the objective the ensemble is called with). An input counts as broken if a member
    broke it, and gets that member's output; an input no member broke gets the output of highest
    score under the ensemble's objective.

    Parameters
    ----------
    members : sequence of attack or (attack, objective_factory)
        Embedding attacks (all with the same norm); ``objective_factory(objective)`` builds the
        member's objective from the ensemble's (None: the ensemble's own). A member objective
        must have the same success as the ensemble's.

    Notes
    -----
    Every member's random state, batch size and progress bar are its own.

    Examples
    --------
    >>> from robust_metric_learning.attacks import PGD, EmbeddingShift
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.rand(5, 1, 4, 4)
    >>> ens = EnsembleAttack(members=[APGD(steps=5, random_state=0), PGD(steps=5, random_state=0)])
    >>> ens(net, x, EmbeddingShift(net(x)), eps=0.1).success.shape
    torch.Size([5])
    """

    name = "Ensemble"
    _parameter_constraints: dict = {}

    def __init__(self, *, members: Sequence[EmbeddingAttack | tuple[EmbeddingAttack, Callable | None]]):
        self.members = members

    @property
    def n_forward(self) -> int:
        """Forward passes per input at most: the sum over the members."""
        return sum(int(a.n_forward) for a, _ in self._members())

    def _members(self) -> list[tuple[EmbeddingAttack, Callable | None]]:
        members = self.members
        if isinstance(members, (str, bytes)) or not isinstance(members, Sequence) or len(members) == 0:
            raise ValueError(f"members must be a non-empty sequence of embedding attacks, got {members!r}")
        out = []
        for i, m in enumerate(members):
            attack, factory = (m if isinstance(m, tuple) and len(m) == 2 else (m, None))
            if not isinstance(attack, EmbeddingAttack):
                raise ValueError(f"members[{i}] must be an embedding attack or (attack, objective_factory), "
                                 f"got {type(attack).__name__}")
            if factory is not None and not callable(factory):
                raise ValueError(f"members[{i}]'s objective factory must be callable or None, got "
                                 f"{type(factory).__name__}")
            out.append((attack, factory))
        norms = {get_norm(a.norm) for a, _ in out}
        if len(norms) > 1:
            raise ValueError(f"the members must share one norm (eps is measured in it), got "
                             f"{', '.join(sorted(n.name for n in norms))}")
        return out

    def __call__(self, model: torch.nn.Module, inputs: Any, objective: Any, *,
                 eps: float | Sequence[float], index: Any = None) -> EmbeddingAttackResult:
        """Attack ``model`` at ``inputs`` for ``objective`` with every member; see
        :meth:`EmbeddingAttack.__call__ <.base.EmbeddingAttack.__call__>`."""
        validate_params(self)
        members = self._members()
        x, eps_arr, index = check_call(model, inputs, objective, eps, index)
        n = x.shape[0]
        objectives = [objective if f is None else f(objective) for _, f in members]
        fields: list[list[torch.Tensor]] = [[], [], [], [], []]
        for e in eps_arr.tolist():
            raw = clipped = None
            success = torch.zeros(n, dtype=torch.bool)
            scores = torch.full((n,), -torch.inf, dtype=torch.float64)
            embs = None
            rest = torch.arange(n)
            schedule = self._schedule(len(members))
            i = next(schedule, None)
            while i is not None:
                (attack, _), obj = members[i], objectives[i]
                todo = rest if raw is None else self._select(i, objective, rest, scores[rest])
                if len(todo) == 0:
                    i = _advance(schedule, 0)
                    continue
                res = attack(model, x[todo], obj, eps=e, index=index[todo])
                emb = res.embeddings
                with torch.no_grad():
                    ok = objective.success(emb, index[todo]).cpu().to(torch.bool)
                    sc = _score(objective, emb, index[todo]).detach().cpu().to(torch.float64)
                if raw is None:
                    raw = torch.empty((n,) + res.raw.shape[1:], dtype=res.raw.dtype, device=res.raw.device)
                    clipped = torch.empty_like(raw)
                    embs = torch.empty((n,) + emb.shape[1:], dtype=emb.dtype, device=emb.device)
                take = ok | (sc > scores[todo]) | ~torch.isfinite(scores[todo])
                t = todo[take]
                dev = raw.device
                raw[t.to(dev)] = res.raw[take.to(res.raw.device)]
                clipped[t.to(dev)] = res.clipped[take.to(res.raw.device)]
                embs[t.to(embs.device)] = emb[take.to(emb.device)]
                scores[t] = sc[take]
                success[t] = ok[take]
                rest = rest[~success[rest]]
                i = _advance(schedule, int(ok.sum()))
            out_dev = raw.device
            for lst, v in zip(fields, (raw, clipped, success.to(out_dev), scores.to(out_dev, embs.dtype), embs)):
                lst.append(v)
        if np.ndim(eps) == 0:
            return EmbeddingAttackResult(*(f[0] for f in fields[:3]), scores=fields[3][0], embeddings=fields[4][0])
        stacked = [torch.stack(f) for f in fields]
        return EmbeddingAttackResult(*stacked[:3], scores=stacked[3], embeddings=stacked[4])

    def _schedule(self, n_members: int) -> Generator[int, int, None]:
        """The members to run, in order, as their indices; after each it is sent the number of inputs
        that member broke (every member once, in order; subclasses may stop early)."""
        for i in range(n_members):
            yield i

    def _select(self, member: int, objective: Any, rest: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The inputs member ``member`` attacks, among the unbroken ``rest`` (best ``scores`` so far
        under the ensemble's objective): all of them (subclasses may focus a member)."""
        return rest

    def __repr__(self) -> str:
        return f"{type(self).__name__}(members={self.members!r})"


def _advance(schedule: Generator[int, int, None], broke: int) -> int | None:
    """The schedule's next member after one that broke ``broke`` inputs (None: no more)."""
    try:
        return schedule.send(broke)
    except StopIteration:
        return None


def _seeds(random_state: int | None, n: int) -> list[int | None]:
    if random_state is None:
        return [None] * n
    return [int(s.generate_state(1, np.uint64)[0] >> np.uint64(1))
            for s in np.random.SeedSequence(random_state).spawn(n)]


def _cross_entropy(temperature: float) -> Callable[[Any], RetrievalCrossEntropy]:
    """Objective factory: the gallery cross-entropy at ``temperature`` built from a retrieval margin."""
    def factory(objective: Any) -> RetrievalCrossEntropy:
        if not isinstance(objective, RetrievalObjective):
            raise ValueError(f"RetrievalEnsemble attacks retrieval: its objective must be a RetrievalObjective, "
                             f"got {type(objective).__name__}")
        return RetrievalCrossEntropy.from_objective(objective, temperature=temperature)
    return factory


class RetrievalEnsemble(EnsembleAttack):
    """The evaluation attack of retrieval: the worst case over APGD on the retrieval margin, APGD
    on a cross-entropy over the gallery at several temperatures, and fixed-step PGD.

    Called with a :class:`~.retrieval.RetrievalObjective` (the margin); the cross-entropy
    members use :class:`~.retrieval.RetrievalCrossEntropy` built from it (the same success:
    the 1-NN flipped), one per temperature. Members run in that order, each on the queries
    still unbroken, then the focus stages and the rounds on the near misses.

    Parameters
    ----------
    norm : {"linf", "l2"} or Norm, default="linf"
    steps : int, default=100
        APGD steps per restart (every APGD member).
    restarts : int, default=1
        Restarts of every member (APGD and PGD) on every query, each from a random start.
    pgd_steps : int, default=20
        Steps of the PGD member, of fixed size ``pgd_rel_step_size * eps``.
    pgd_rel_step_size : float, default=0.25
    temperatures : sequence of float, default=(0.1, 0.03)
        Temperatures of the cross-entropy members (relative to the gallery's scale, see
        :class:`~.retrieval.RetrievalCrossEntropy`). No one temperature is best for every
        model: on MNIST models trained adversarially, 0.03 broke queries that 0.1 and the
        margin missed (see the notes), and 0.1 others.
    focus : sequence of (float, int), default=((1.0, 2), (0.3, 4), (0.1, 32))
        The focus stages, in order, after the members (empty: none): stage ``(m, r)`` runs
        every APGD member again (the margin and each cross-entropy), with ``r`` restarts, on
        the near misses, the queries
        still unbroken whose best margin is at least ``-m * s`` (``s``:
        :meth:`~.retrieval.RetrievalObjective.gallery_scale`). Some near misses break in only
        a few percent of restarts, and some come near only after a few; spending restarts on
        them, not on the queries far from breaking, is what makes the ensemble converge (see
        the notes).
    rounds : int, default=4
        More runs of the last focus stage, after it, until one breaks nothing (at most ``rounds``,
        at most 1000; none without focus stages): each runs every APGD member again, with the
        stage's margin and restarts, fresh seeds and twice ``steps``, on the near misses still
        unbroken. The first always runs; each further one only if the one before broke a query.
        A near miss that one restart breaks with a probability of a few percent is what the
        doubling check of convergence finds and a fixed budget misses; the rounds stop only once
        such breaks dry up.
    batch_size, random_state, progress
        As for :class:`~.base.EmbeddingAttack`; the members' seeds are drawn from
        ``random_state``: adding temperatures keeps the seeds of the margin, PGD and first
        cross-entropy members, adding focus stages or rounds every earlier member's.

    Notes
    -----
    With ``k`` temperatures, focus stages of ``r_1, ..., r_J`` restarts and ``R`` rounds it costs
    at most ``((restarts + sum(r_j)) * (steps + 1) + R * r_J * (2 * steps + 1)) * (1 + k) +
    restarts * (pgd_steps + 1) + 2 + k + (J + R) * (1 + k)`` forward passes per query
    (:attr:`n_forward`, 89047 by default; the last ``2 + k + (J + R) * (1 + k)`` are the members'
    checks), one backward pass less per restart and member. A query pays a focus stage and the
    rounds only when it is a near miss, the rounds after the first only while they break queries,
    and early stop (APGD) and attacking only the queries no earlier member broke make the cost much
    less on queries that break.

    Measured on SmallCNNs trained on MNIST (``rml reproduce dml``, 300 queries, l_inf eps
    0.1): on contrastive-loss naive adversarial training, the ensemble with the single
    temperature 0.1 and no focus stage left 12 queries that the cross-entropy at 0.03 broke,
    and doubling its steps and restarts found only 4 of them; on triplet-loss EST, doubling
    the ensemble without the focus stage broke 2 or 3 more queries, near misses that one
    restart breaks with a probability of a few percent; 32 restarts on the near misses broke
    them, and 64 nothing more. On Fashion-MNIST triplet-loss naive training and EST, doubling
    the ensemble whose focus stages ran only the cross-entropy members (at 0.3 and 0.1) still
    broke 2 more queries each (8 seeds per member and query): two break under the margin
    member in a quarter to a third of its restarts and under no cross-entropy one, one (left
    outside the stages) under the margin and the 0.1 members in a quarter of theirs, and one
    only under the 0.03 member with 400 steps; with the margin member in the stages and the
    stage at 1.0, doubling broke 1 more on naive training and none on EST.
    On Fashion-MNIST contrastive-loss EST, doubling that ensemble still broke 2 of 300 queries
    that no single doubled budget (steps, restarts or focus restarts alone, or other seeds) broke;
    with the rounds, the ensemble breaks both and the doubled one nothing more.

    Examples
    --------
    >>> RetrievalEnsemble(random_state=0).n_forward
    89047
    """

    name = "RetrievalEnsemble"
    _parameter_constraints = {
        **_COMMON_CONSTRAINTS,
        "steps": [Interval(Integral, 1, None)],
        "restarts": [Interval(Integral, 1, None)],
        "pgd_steps": [Interval(Integral, 1, None)],
        "pgd_rel_step_size": [Interval(Real, 0, None, closed="neither")],
        "temperatures": [SequenceOf(Interval(Real, 0, None, closed="neither"))],
        "focus": [SequenceOf(TupleOf(Interval(Real, 0, None), Interval(Integral, 1, None)), allow_empty=True)],
        "rounds": [Interval(Integral, 0, 1000)],
    }

    def __init__(self, *, norm: str | Norm = "linf", steps: int = 100, restarts: int = 1, pgd_steps: int = 20,
                 pgd_rel_step_size: float = 0.25, temperatures: Sequence[float] = (0.1, 0.03),
                 focus: Sequence[tuple[float, int]] = ((1.0, 2), (0.3, 4), (0.1, 32)), rounds: int = 4,
                 batch_size: int = 256, random_state: int | None = None, progress: bool | None = None):
        self.norm = norm
        self.steps = steps
        self.restarts = restarts
        self.pgd_steps = pgd_steps
        self.pgd_rel_step_size = pgd_rel_step_size
        self.temperatures = temperatures
        self.focus = focus
        self.rounds = rounds
        self.batch_size = batch_size
        self.random_state = random_state
        self.progress = progress

    @property
    def members(self) -> list[tuple[EmbeddingAttack, Callable | None]]:  # type: ignore[override]
        """The member attacks, built from the parameters."""
        validate_params(self)
        temps = [float(t) for t in self.temperatures]
        k, n_rounds = len(temps), self._n_rounds()
        s = _seeds(self.random_state, 2 + k + (1 + k) * (len(self.focus) + n_rounds))
        seeds = [s[1], *s[3:2 + k]]  # the cross-entropy members' (the first keeps its seed as members are added)
        common = {"norm": self.norm, "batch_size": self.batch_size, "progress": self.progress}
        objectives = [None, *(_cross_entropy(t) for t in temps)]  # the margin, then each temperature
        focus = [(APGD(steps=self.steps, restarts=int(r), random_state=seed, **common), obj)
                 for j, (_, r) in enumerate(self.focus)
                 for obj, seed in zip(objectives, s[2 + k + j * (1 + k):2 + k + (j + 1) * (1 + k)])]
        first = 2 + k + len(self.focus) * (1 + k)  # the rounds' seeds follow the stages'
        rounds = [(APGD(steps=2 * self.steps, restarts=int(self.focus[-1][1]), random_state=seed, **common), obj)
                  for j in range(n_rounds)
                  for obj, seed in zip(objectives, s[first + j * (1 + k):first + (j + 1) * (1 + k)])]
        return [
            (APGD(steps=self.steps, restarts=self.restarts, random_state=s[0], **common), None),
            *((APGD(steps=self.steps, restarts=self.restarts, random_state=seed, **common), _cross_entropy(t))
              for t, seed in zip(temps, seeds)),
            (PGD(steps=self.pgd_steps, rel_step_size=self.pgd_rel_step_size, restarts=self.restarts,
                 random_state=s[2], **common), None),
            *focus,
            *rounds,
        ]

    def _n_rounds(self) -> int:
        return int(self.rounds) if len(self.focus) else 0

    def scaled(self, factor: int) -> "RetrievalEnsemble":
        """A copy with ``steps``, ``restarts``, ``pgd_steps``, every focus stage's restarts and the
        most rounds multiplied by ``factor`` (2: the doubling check of convergence)."""
        validate_params(self)
        check_params(f"{type(self).__name__}.scaled", {"factor": factor}, {"factor": [Interval(Integral, 1, None)]})
        f = int(factor)
        params = {name: getattr(self, name) for name in self._parameter_constraints}
        params.update(steps=f * self.steps, restarts=f * self.restarts, pgd_steps=f * self.pgd_steps,
                      focus=[(m, f * int(r)) for m, r in self.focus], rounds=f * int(self.rounds))
        return type(self)(**params)

    def _schedule(self, n_members: int) -> Generator[int, int, None]:
        k = len(self.temperatures)
        fixed = 2 + k + len(self.focus) * (1 + k)
        for i in range(fixed):
            yield i
        for j in range((n_members - fixed) // (1 + k)):  # the rounds, until one breaks nothing
            broke = 0
            for m in range(1 + k):
                broke += yield fixed + j * (1 + k) + m
            if broke == 0:
                return

    def _select(self, member: int, objective: Any, rest: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = len(self.temperatures)
        if member < 2 + k:
            return rest
        stage = min((member - 2 - k) // (1 + k), len(self.focus) - 1)  # a round: the last stage's margin
        margin = float(self.focus[stage][0])
        return rest[scores >= -margin * objective.gallery_scale()]

    @property
    def n_forward(self) -> int:
        """Forward passes per query at most (early stop aside, every round run), the members' final
        checks included."""
        validate_params(self)
        k, focus, n_rounds = len(self.temperatures), [int(r) for _, r in self.focus], self._n_rounds()
        round_passes = n_rounds * focus[-1] * (2 * self.steps + 1) if n_rounds else 0
        return (((self.restarts + sum(focus)) * (self.steps + 1) + round_passes) * (1 + k)
                + self.restarts * (self.pgd_steps + 1) + 2 + k + (len(focus) + n_rounds) * (1 + k))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._parameter_constraints)
        return f"{type(self).__name__}({params})"
