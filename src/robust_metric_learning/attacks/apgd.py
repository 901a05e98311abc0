"""APGD and the evaluation ensembles of attacks on embedding models (DESIGN §3).

- :class:`APGD`: Auto-PGD (Croce & Hein 2020, the core of AutoAttack), a PGD whose step adapts:
  momentum, step halving at checkpoints when progress stalls (and a restart from the best
  point), random restarts, per-sample early stop once the objective says the attack succeeded.
- :class:`EnsembleAttack`: the worst case over member attacks (each with its own objective): a
  query counts as broken if any member breaks it; later members attack only the survivors.
- :class:`RetrievalEnsemble`: the reported evaluation of retrieval (``adversarial_retrieval``'s
  default attack): APGD on the retrieval margin, APGD on a cross-entropy over the gallery at
  several temperatures and fixed-step PGD.

They are called like every embedding attack (:mod:`.gradient`)::

    raw, clipped, success = RetrievalEnsemble(random_state=0)(model, images, objective, eps=0.1)
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .._validation import Interval, SequenceOf, TupleOf, check_eps, check_index, check_unit_interval, validate_params
from .gradient import (
    _COMMON_CONSTRAINTS,
    PGD,
    EmbeddingAttack,
    EmbeddingAttackResult,
    _check_objective,
    _embed,
    _score,
)
from .norms import Norm, get_norm
from .objectives import RetrievalCrossEntropy, RetrievalObjective

__all__ = ["APGD", "EnsembleAttack", "RetrievalEnsemble", "apgd_checkpoints"]


# ------------------------------------------------------------------------- APGD


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations at which APGD checks its progress: ``ceil(p_j * steps)`` for ``0 < p_j < 1``.

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (Croce &
    Hein 2020), computed in exact hundredths; repeated iterations are given once.

    Examples
    --------
    >>> apgd_checkpoints(100)
    [22, 41, 57, 70, 80, 87, 93, 99]
    """
    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    out: list[int] = []
    prev, p = 0, 22  # hundredths
    while p < 100:
        w = -(-p * int(steps) // 100)  # ceil(p * steps / 100)
        if w < steps and (not out or w > out[-1]):
            out.append(w)
        prev, p = p, p + max(p - prev - 3, 6)
    return out


def _apgd(model, x, objective, index, norm: Norm, eps: torch.Tensor, *, steps: int, restarts: int,
          momentum: float, rho: float, early_stop: bool, generator: torch.Generator | None):
    """APGD on one batch, no validation; returns (best x_adv, best score, success), detached.

    The best iterate of a sample is a successful one when any succeeded (the first, with
    ``early_stop``; else the successful one of highest score), else the one of highest score.
    With ``early_stop`` a sample stops (within and across restarts) once it succeeded.
    """
    n = x.shape[0]
    best_x = x.clone()
    best = torch.full((n,), -torch.inf, dtype=x.dtype, device=x.device)
    done = torch.zeros(n, dtype=torch.bool, device=x.device)  # succeeded
    checkpoints = set(apgd_checkpoints(steps))

    def evaluate(xs, rows, need_grad):
        """Score, gradient (or None) and success of the inputs ``xs`` (rows ``rows`` of the batch)."""
        if need_grad:
            xs = xs.clone().requires_grad_(True)
            with torch.enable_grad():
                emb = _embed(model, xs, objective)
                s = _score(objective, emb, index[rows])
                if not s.requires_grad:
                    raise ValueError("the objective does not depend on the model's output through autograd; "
                                     "APGD needs a differentiable objective (and model)")
                (g,) = torch.autograd.grad(s.sum(), xs)
            emb = emb.detach()
        else:
            with torch.no_grad():
                emb = _embed(model, xs, objective)
                s = _score(objective, emb, index[rows])
            g = None
        ok = objective.success(emb, index[rows]).to(device=x.device, dtype=torch.bool)
        return s.detach(), g, ok

    def keep(rows, xs, s, ok):
        """Global best of the batch rows ``rows`` (success first, then score)."""
        better = (ok & ~done[rows]) | ((ok == done[rows]) & (s > best[rows]))
        r = rows[better]
        best_x[r] = xs[better]
        best[r] = s[better]
        done[r] = ok[better]

    for _ in range(restarts):
        rows = torch.nonzero(~done).flatten() if early_stop else torch.arange(n, device=x.device)
        if len(rows) == 0:
            break
        x0, e = x[rows], eps[rows]
        start = norm.random_start(x0.shape, e, generator, device=x.device, dtype=x.dtype)
        cur = (x0 + start).clamp_(0.0, 1.0)
        f_cur, g_cur, ok = evaluate(cur, rows, True)
        keep(rows, cur, f_cur, ok)
        m = len(rows)
        running = ~ok if early_stop else torch.ones(m, dtype=torch.bool, device=x.device)
        prev = cur.clone()
        eta = (2.0 * e).clone()
        x_max, f_max, g_max = cur.clone(), f_cur.clone(), g_cur.clone()
        f_max_last = f_max.clone()  # f_max at the last checkpoint
        halved_last = torch.zeros(m, dtype=torch.bool, device=x.device)
        improved = torch.zeros(m, dtype=torch.int64, device=x.device)
        last = 0
        for k in range(steps):
            act = torch.nonzero(running).flatten()
            if len(act) == 0:
                break
            xa, pa, ea = cur[act], prev[act], e[act]
            z = norm.ascent(xa, x0[act], g_cur[act], eta[act], ea)
            if k == 0:
                new = z
            else:
                new = norm.feasible(xa + momentum * (z - xa) + (1.0 - momentum) * (xa - pa), x0[act], ea)
            f_new, g_new, ok = evaluate(new, rows[act], k + 1 < steps)
            keep(rows[act], new, f_new, ok)
            improved[act] += (f_new > f_cur[act]).to(torch.int64)
            up = f_new > f_max[act]
            x_max[act[up]] = new[up]
            f_max[act[up]] = f_new[up]
            prev[act] = xa
            cur[act] = new
            f_cur[act] = f_new
            if g_new is not None:
                g_cur[act] = g_new
                g_max[act[up]] = g_new[up]
            if early_stop:
                running[act[ok]] = False
            if k + 1 in checkpoints:
                # halve where fewer than rho of the steps since the last checkpoint improved, or
                # where neither the step nor the best value changed since then; go back to the best
                halve = (improved < rho * (k + 1 - last)) | (~halved_last & (f_max <= f_max_last))
                eta = torch.where(halve, eta / 2.0, eta)
                h = torch.nonzero(halve).flatten()
                cur[h] = x_max[h]
                prev[h] = x_max[h]
                g_cur[h] = g_max[h]
                f_cur[h] = f_max[h]
                halved_last = halve
                f_max_last = f_max.clone()
                improved.zero_()
                last = k + 1
    return best_x, best, done


_APGD_CONSTRAINTS = {
    "steps": [Interval(Integral, 1, None)],
    "restarts": [Interval(Integral, 1, None)],
    "momentum": [Interval(Real, 0, 1, closed="right")],
    "rho": [Interval(Real, 0, 1)],
    "early_stop": [bool],
}


class APGD(EmbeddingAttack):
    """Auto-PGD (Croce & Hein 2020): PGD with momentum and a step that halves when progress stalls.

    From a random start in the eps-ball, step ``eta`` (first ``2 * eps``) along
    ``norm.normalize(grad)`` and projection; then ``x_{k+1} = P(x_k + momentum * (z - x_k) +
    (1 - momentum) * (x_k - x_{k-1}))`` with ``z = P(x_k + eta * normalize(grad))``. At the
    checkpoints (:func:`apgd_checkpoints`) the step of a sample halves, and it goes back to its
    best point, when fewer than ``rho`` of the steps since the last checkpoint raised the
    objective, or when neither its step nor its best value changed since then. Each restart
    starts afresh (random start, step ``2 * eps``); every input keeps its best iterate (the first
    successful one, else the highest score).

    Parameters
    ----------
    norm : {"linf", "l2"} or Norm, default="linf"
    steps : int, default=50
        Gradient steps per restart.
    restarts : int, default=1
    momentum : float, default=0.75
        Weight ``alpha`` of the new step (1: no momentum).
    rho : float, default=0.75
    early_stop : bool, default=True
        Stop on an input (for the remaining steps and restarts) once ``objective.success``.
    batch_size, random_state, progress
        See :class:`~.gradient.EmbeddingAttack`.

    Notes
    -----
    Costs at most ``restarts * (steps + 1)`` forward and ``restarts * steps`` backward passes per
    input (:attr:`n_forward`), fewer with early stop; the objective's ``success`` is evaluated at
    every iterate.

    Examples
    --------
    >>> from robust_metric_learning.attacks import EmbeddingShift
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.rand(5, 1, 4, 4)
    >>> res = APGD(steps=10, random_state=0)(net, x, EmbeddingShift(net(x)), eps=0.1)
    >>> bool(((res.clipped - x).abs() <= 0.1 + 1e-6).all())
    True
    """

    name = "APGD"
    _parameter_constraints = {**_COMMON_CONSTRAINTS, **_APGD_CONSTRAINTS}

    def __init__(self, *, norm: str | Norm = "linf", steps: int = 50, restarts: int = 1, momentum: float = 0.75,
                 rho: float = 0.75, early_stop: bool = True, batch_size: int = 256, random_state: int | None = None,
                 progress: bool | None = None):
        super().__init__(norm=norm, batch_size=batch_size, random_state=random_state, progress=progress)
        self.steps = steps
        self.restarts = restarts
        self.momentum = momentum
        self.rho = rho
        self.early_stop = early_stop

    @property
    def n_forward(self) -> int:
        """Forward passes per input at most: ``restarts * (steps + 1)``."""
        return self.restarts * (self.steps + 1)

    def _run(self, model, x, objective, index, *, norm, eps, generator):
        if eps == 0:
            return x.clone()
        eps_t = torch.full((x.shape[0],), eps, dtype=x.dtype, device=x.device)
        x_adv, _, _ = _apgd(model, x, objective, index, norm, eps_t, steps=int(self.steps),
                            restarts=int(self.restarts), momentum=float(self.momentum), rho=float(self.rho),
                            early_stop=self.early_stop, generator=generator)
        return x_adv


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
        :meth:`EmbeddingAttack.__call__ <.gradient.EmbeddingAttack.__call__>`."""
        validate_params(self)
        members = self._members()
        if not isinstance(model, torch.nn.Module):
            raise ValueError("model must be a torch.nn.Module mapping inputs to embeddings, got "
                             f"{type(model).__name__}")
        _check_objective(objective, need_success=True)
        x = check_unit_interval(inputs.detach() if isinstance(inputs, torch.Tensor) else inputs, name="inputs")
        eps_arr = check_eps(eps)
        n = x.shape[0]
        size = getattr(objective, "n_samples", None)
        if index is None:
            if size is not None and size != n:
                raise ValueError(f"the objective holds context for {size} inputs, inputs has {n}; "
                                 "build it for these inputs or pass index= (their rows in its context)")
            index = torch.arange(n)
        else:
            index = check_index(index, n_rows=n, size=size)
        objectives = [objective if f is None else f(objective) for _, f in members]
        fields: list[list[torch.Tensor]] = [[], [], [], [], []]
        for e in eps_arr.tolist():
            raw = clipped = None
            success = torch.zeros(n, dtype=torch.bool)
            scores = torch.full((n,), -torch.inf, dtype=torch.float64)
            embs = None
            rest = torch.arange(n)
            for i, ((attack, _), obj) in enumerate(zip(members, objectives)):
                todo = rest if raw is None else self._select(i, objective, rest, scores[rest])
                if len(todo) == 0:
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
            out_dev = raw.device
            for lst, v in zip(fields, (raw, clipped, success.to(out_dev), scores.to(out_dev, embs.dtype), embs)):
                lst.append(v)
        if np.ndim(eps) == 0:
            return EmbeddingAttackResult(*(f[0] for f in fields[:3]), scores=fields[3][0], embeddings=fields[4][0])
        stacked = [torch.stack(f) for f in fields]
        return EmbeddingAttackResult(*stacked[:3], scores=stacked[3], embeddings=stacked[4])

    def _select(self, member: int, objective: Any, rest: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The inputs member ``member`` attacks, among the unbroken ``rest`` (best ``scores`` so far
        under the ensemble's objective): all of them (subclasses may focus a member)."""
        return rest

    def __repr__(self) -> str:
        return f"{type(self).__name__}(members={self.members!r})"


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

    Called with a :class:`~.objectives.RetrievalObjective` (the margin); the cross-entropy
    members use :class:`~.objectives.RetrievalCrossEntropy` built from it (the same success:
    the 1-NN flipped), one per temperature. Members run in that order, each on the queries
    still unbroken.

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
        :class:`~.objectives.RetrievalCrossEntropy`). No one temperature is best for every
        model: on MNIST models trained adversarially, 0.03 broke queries that 0.1 and the
        margin missed (see the notes), and 0.1 others.
    focus : sequence of (float, int), default=((0.3, 4), (0.1, 32))
        The focus stages, in order, after the members (empty: none): stage ``(m, r)`` runs
        every cross-entropy member again, with ``r`` restarts, on the near misses, the queries
        still unbroken whose best margin is at least ``-m * s`` (``s``:
        :meth:`~.objectives.RetrievalObjective.gallery_scale`). Some near misses break in only
        a few percent of restarts, and some come near only after a few; spending restarts on
        them, not on the queries far from breaking, is what makes the ensemble converge (see
        the notes).
    batch_size, random_state, progress
        As for :class:`~.gradient.EmbeddingAttack`; the members' seeds are drawn from
        ``random_state`` (adding temperatures keeps the seeds of the other members).

    Notes
    -----
    With ``k`` temperatures and focus stages of ``r_1, ..., r_J`` restarts it costs at most
    ``(restarts * (1 + k) + k * sum(r_j)) * (steps + 1) + restarts * (pgd_steps + 1) + 2 + k +
    J * k`` forward passes per query (:attr:`n_forward`, 7604 by default; the last ``2 + k + J *
    k`` are the members' checks), one backward pass less per restart and member; a query pays a
    focus stage only when it is a near miss, and early stop (APGD) and attacking only the queries no earlier member broke
    make the cost much less on queries that break.

    Measured on SmallCNNs trained on MNIST (``rml reproduce dml``, 300 queries, l_inf eps
    0.1): on contrastive-loss naive adversarial training, the ensemble with the single
    temperature 0.1 and no focus stage left 12 queries that the cross-entropy at 0.03 broke,
    and doubling its steps and restarts found only 4 of them; on triplet-loss EST, doubling
    the ensemble without the focus stage broke 2 or 3 more queries, near misses that one
    restart breaks with a probability of a few percent; 32 restarts on the near misses broke
    them, and 64 nothing more.

    Examples
    --------
    >>> RetrievalEnsemble(random_state=0).n_forward
    7604
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
    }

    def __init__(self, *, norm: str | Norm = "linf", steps: int = 100, restarts: int = 1, pgd_steps: int = 20,
                 pgd_rel_step_size: float = 0.25, temperatures: Sequence[float] = (0.1, 0.03),
                 focus: Sequence[tuple[float, int]] = ((0.3, 4), (0.1, 32)), batch_size: int = 256, random_state: int | None = None, progress: bool | None = None):
        self.norm = norm
        self.steps = steps
        self.restarts = restarts
        self.pgd_steps = pgd_steps
        self.pgd_rel_step_size = pgd_rel_step_size
        self.temperatures = temperatures
        self.focus = focus
        self.batch_size = batch_size
        self.random_state = random_state
        self.progress = progress

    @property
    def members(self) -> list[tuple[EmbeddingAttack, Callable | None]]:  # type: ignore[override]
        """The member attacks, built from the parameters."""
        validate_params(self)
        temps = [float(t) for t in self.temperatures]
        k = len(temps)
        s = _seeds(self.random_state, 2 + k + k * len(self.focus))
        seeds = [s[1], *s[3:2 + k]]  # the cross-entropy members' (the first keeps its seed as members are added)
        common = {"norm": self.norm, "batch_size": self.batch_size, "progress": self.progress}
        focus = [(APGD(steps=self.steps, restarts=int(r), random_state=seed, **common), _cross_entropy(t))
                 for j, (_, r) in enumerate(self.focus) for t, seed in zip(temps, s[2 + k + j * k:2 + k + (j + 1) * k])]
        return [
            (APGD(steps=self.steps, restarts=self.restarts, random_state=s[0], **common), None),
            *((APGD(steps=self.steps, restarts=self.restarts, random_state=seed, **common), _cross_entropy(t))
              for t, seed in zip(temps, seeds)),
            (PGD(steps=self.pgd_steps, rel_step_size=self.pgd_rel_step_size, restarts=self.restarts,
                 random_state=s[2], **common), None),
            *focus,
        ]

    def scaled(self, factor: int) -> "RetrievalEnsemble":
        """A copy with ``steps``, ``restarts``, ``pgd_steps`` and every focus stage's restarts
        multiplied by ``factor`` (2: the doubling check of convergence)."""
        validate_params(self)
        if isinstance(factor, bool) or not isinstance(factor, Integral) or factor < 1:
            raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
        f = int(factor)
        return RetrievalEnsemble(norm=self.norm, steps=f * self.steps, restarts=f * self.restarts,
                                 pgd_steps=f * self.pgd_steps, pgd_rel_step_size=self.pgd_rel_step_size,
                                 temperatures=self.temperatures, focus=[(m, f * int(r)) for m, r in self.focus],
                                 batch_size=self.batch_size, random_state=self.random_state, progress=self.progress)

    def _select(self, member: int, objective: Any, rest: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = len(self.temperatures)
        if member < 2 + k:
            return rest
        margin = float(self.focus[(member - 2 - k) // k][0])
        return rest[scores >= -margin * objective.gallery_scale()]

    @property
    def n_forward(self) -> int:
        """Forward passes per query at most (early stop aside), the members' final checks included."""
        validate_params(self)
        k, focus = len(self.temperatures), [int(r) for _, r in self.focus]
        return ((self.restarts * (1 + k) + sum(focus) * k) * (self.steps + 1)
                + self.restarts * (self.pgd_steps + 1) + 2 + k + len(focus) * k)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._parameter_constraints)
        return f"{type(self).__name__}({params})"
