"""APGD: Auto-PGD (Croce & Hein 2020, the core of AutoAttack) on embedding models.

A PGD whose step adapts: momentum, step halving at checkpoints when progress stalls (and a
restart from the best point), random restarts, per-sample early stop once the objective says the
attack succeeded. Called like every embedding attack (:class:`~.base.EmbeddingAttack`).
"""

from __future__ import annotations

from numbers import Integral, Real

import torch

from ..._validation import Interval
from .base import (
    _COMMON_CONSTRAINTS,
    EmbeddingAttack,
    _embed,
    _score,
)
from .norms import Norm

__all__ = ["APGD", "apgd_checkpoints"]


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
        See :class:`~.base.EmbeddingAttack`.

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
