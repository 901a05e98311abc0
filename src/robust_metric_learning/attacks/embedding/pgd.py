"""PGD, FGSM and a random-search baseline on embedding models.

- :func:`perturb`, the functional PGD core, for robust training: it works on one batch, leaves
  the model's train/eval mode alone and never touches parameter ``.grad`` (gradients are taken
  with ``torch.autograd.grad`` with respect to the perturbed inputs only).
- :class:`PGD`, :class:`FGSM` and :class:`RandomSearch`, attack objects for evaluation
  (:class:`~.base.EmbeddingAttack`).
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import torch

from ..._validation import Interval, Options, check_bool, check_unit_interval
from .base import (
    _COMMON_CONSTRAINTS,
    EmbeddingAttack,
    _check_objective,
    _embed,
    _keep_best,
    _per_sample,
    _score,
    objective_index,
)
from .norms import Norm, get_norm

__all__ = ["FGSM", "PGD", "RandomSearch", "STEP_SCHEDULES", "perturb"]


STEP_SCHEDULES = {
    "constant": lambda t, T: 1.0,
    "linear": lambda t, T: 1.0 - t / T,
    "cosine": lambda t, T: 0.5 * (1.0 + math.cos(math.pi * t / T)),
}


def _pgd(model, x, objective, index, norm: Norm, eps: torch.Tensor, steps: int, alpha: torch.Tensor,
         random_start: bool, restarts: int, generator: torch.Generator | None, schedule: str = "constant",
         keep: str = "best", stop_tol: float | None = None):
    """PGD on one batch, no validation; returns (x_adv, score), both detached.

    ``keep="best"``: the per-sample best iterate over all steps and restarts, and its score.
    ``keep="last"`` (one restart): the last iterate and the score of the iterate before the
    last step (no final forward pass). ``stop_tol``: stop after the step at which the summed
    score changed by less than ``stop_tol`` from the previous step's, or its gradient is zero
    everywhere (no input would move again).
    """
    factor = STEP_SCHEDULES[schedule]
    best = torch.full((x.shape[0],), -torch.inf, dtype=x.dtype, device=x.device)
    best_x = x.clone()
    for _ in range(restarts):
        if random_start:
            delta = norm.random_start(x.shape, eps, generator, device=x.device, dtype=x.dtype)
            x_adv = (x + delta).clamp_(0.0, 1.0)
        else:
            x_adv = x.clone()
        previous = None
        for t in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                s = _score(objective, _embed(model, x_adv, objective), index)
                if not s.requires_grad:
                    raise ValueError("the objective does not depend on the model's output through autograd; "
                                     "PGD needs a differentiable objective (and model)")
                (grad,) = torch.autograd.grad(s.sum(), x_adv)
            x_adv = x_adv.detach()
            if keep == "best":
                _keep_best(best, best_x, s.detach(), x_adv)
            else:
                best = s.detach()
            x_adv = norm.ascent(x_adv, x, grad, factor(t, steps) * alpha, eps)
            if stop_tol is not None:
                total = float(s.detach().sum())
                if not bool(grad.any()) or (previous is not None and abs(total - previous) < stop_tol):
                    break
                previous = total
        if keep == "last":
            return x_adv, best
        with torch.no_grad():
            s = _score(objective, _embed(model, x_adv, objective), index)
        _keep_best(best, best_x, s, x_adv)
    return best_x, best


def perturb(model: Any, x: torch.Tensor, objective: Any, *, norm: str | Norm = "linf",
            eps: float | torch.Tensor, steps: int = 10, step_size: float | torch.Tensor | None = None,
            random_start: bool = True, restarts: int = 1, generator: torch.Generator | None = None,
            index: torch.Tensor | None = None, return_score: bool = False, keep: str = "best",
            stop_tol: float | None = None):
    """PGD on one batch: the functional core used by robust training and the attack objects.

    Maximises ``objective(model(x_adv), index)`` per sample over ``x_adv`` in the ball of radius
    ``eps`` around ``x`` intersected with [0, 1], by ``steps`` steps of size ``step_size`` along
    ``norm.normalize(grad)``, projected after each step, from a random start (uniform in the
    ball) or from ``x``. Returns the per-sample best iterate over all steps and restarts (by the
    objective), so more restarts never give a worse result with the same generator.

    The model's train/eval mode is left as it is (in train mode, batch-norm statistics are
    updated by every forward pass and dropout is active) and parameter ``.grad`` is never
    touched, so this can run inside a training step. Costs ``restarts * (steps + 1)`` forward
    and ``restarts * steps`` backward passes.

    Parameters
    ----------
    model : callable
        Maps a batch of inputs to embeddings (n, dim).
    x : tensor of shape (n, ...)
        Clean inputs in [0, 1] (on the model's device).
    objective : Objective
        Per-sample scores to maximise, see :mod:`.objectives`.
    norm : {"linf", "l2"} or Norm, default="linf"
    eps : float or tensor of shape (n,)
        Radius of the ball, in the units of ``norm``.
    steps : int, default=10
    step_size : float, tensor of shape (n,) or None, default=None
        None: ``2 * eps / steps``.
    random_start : bool, default=True
    restarts : int, default=1
    generator : torch.Generator or None, default=None
        Source of the random starts (drawn on its device, then moved).
    index : LongTensor of shape (n,) or None, default=None
        Rows of ``x`` in the objective's context; None: ``0..n-1``.
    return_score : bool, default=False
        Also return the best objective value per sample.
    keep : {"best", "last"}, default="best"
        ``"last"``: return the last iterate instead of the best one (robust training's inner
        maximisation of a joint objective, whose per-sample best iterates would not belong
        together); needs ``restarts=1``, skips the final forward pass (``steps`` forward
        passes) and the score returned is that of the iterate before the last step.
    stop_tol : float or None, default=None
        Stop early, after the step at which ``objective(...).sum()`` changed by less than
        ``stop_tol`` since the previous step, or at which its gradient was zero everywhere
        (sign steps would not move any input again). None: always ``steps`` steps.

    Returns
    -------
    x_adv : tensor like ``x`` (detached), or ``(x_adv, score)`` with ``return_score``.

    Examples
    --------
    >>> from robust_metric_learning.attacks import EmbeddingShift
    >>> net = torch.nn.Linear(4, 2)
    >>> x = torch.full((3, 4), 0.5)
    >>> obj = EmbeddingShift(net(x))
    >>> x_adv = perturb(net, x, obj, eps=0.1, generator=torch.Generator().manual_seed(0))
    >>> bool(((x_adv - x).abs() <= 0.1 + 1e-6).all())
    True
    """
    norm = get_norm(norm)
    _check_objective(objective, need_success=False)
    for name, v in (("steps", steps), ("restarts", restarts)):
        if isinstance(v, bool) or not isinstance(v, Integral) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    random_start = check_bool(random_start, name="random_start")
    if keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', got {keep!r}")
    if keep == "last" and restarts != 1:
        raise ValueError(f"keep='last' needs restarts=1, got restarts={restarts!r}")
    if stop_tol is not None and (isinstance(stop_tol, bool) or not isinstance(stop_tol, Real)
                                 or not math.isfinite(stop_tol) or stop_tol < 0):
        raise ValueError(f"stop_tol must be None or a finite number >= 0, got {stop_tol!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    x = check_unit_interval(x.detach() if isinstance(x, torch.Tensor) else x, name="x")
    n = x.shape[0]
    index = objective_index(objective, index, n, name="x").to(x.device)
    eps_t = _per_sample(eps, n, x, name="eps")
    alpha = 2.0 * eps_t / steps if step_size is None else _per_sample(step_size, n, x, name="step_size")
    x_adv, score = _pgd(model, x, objective, index, norm, eps_t, int(steps), alpha, random_start, int(restarts),
                        generator, keep=keep, stop_tol=None if stop_tol is None else float(stop_tol))
    return (x_adv, score) if return_score else x_adv


class PGD(EmbeddingAttack):
    """Projected gradient ascent on the objective (Madry et al. 2018), with random start and
    restarts; keeps each input's best iterate (or, with ``keep="last"``, the last one).

    Parameters
    ----------
    norm : {"linf", "l2"} or Norm, default="linf"
    steps : int, default=10
    step_size : float or None, default=None
        Absolute step (units of ``norm``); None: ``rel_step_size * eps``.
    rel_step_size : float or None, default=None
        Step relative to eps; None (with ``step_size`` None): ``2 / steps``.
    random_start : bool, default=True
        Start uniformly in the eps-ball (else at the input).
    restarts : int, default=1
    step_schedule : {"constant", "linear", "cosine"}, default="constant"
        The step at step t of T is the step above times 1, ``1 - t / T`` or
        ``(1 + cos(pi t / T)) / 2`` (:data:`STEP_SCHEDULES`); a fixed step can bounce around
        the best point (between corners of the box), a decaying one settles.
    keep : {"best", "last"}, default="best"
        Return each input's best iterate over all steps and restarts (by the objective), or the
        last iterate (one restart only): the published ranking attacks report the last one.
    batch_size, random_state, progress
        See :class:`EmbeddingAttack`.

    Notes
    -----
    Costs ``restarts * (steps + 1)`` forward (``steps`` with ``keep="last"``) and ``restarts *
    steps`` backward passes per input (:attr:`n_forward`); ``RandomSearch(n_queries=pgd.n_forward)`` has the same number
    of forward passes.

    Examples
    --------
    >>> from robust_metric_learning.attacks import EmbeddingShift
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.rand(5, 1, 4, 4)
    >>> raw, clipped, success = PGD(steps=5, random_state=0)(net, x, EmbeddingShift(net(x)), eps=0.1)
    >>> clipped.shape, success.shape
    (torch.Size([5, 1, 4, 4]), torch.Size([5]))
    """

    name = "PGD"
    _parameter_constraints = {
        **_COMMON_CONSTRAINTS,
        "steps": [Interval(Integral, 1, None)],
        "step_size": [None, Interval(Real, 0, None, closed="neither")],
        "rel_step_size": [None, Interval(Real, 0, None, closed="neither")],
        "random_start": [bool],
        "restarts": [Interval(Integral, 1, None)],
        "step_schedule": [Options(*STEP_SCHEDULES)],
        "keep": [Options("best", "last")],
    }

    def __init__(self, *, norm: str | Norm = "linf", steps: int = 10, step_size: float | None = None,
                 rel_step_size: float | None = None, random_start: bool = True, restarts: int = 1,
                 step_schedule: str = "constant", keep: str = "best", batch_size: int = 256,
                 random_state: int | None = None, progress: bool | None = None):
        super().__init__(norm=norm, batch_size=batch_size, random_state=random_state, progress=progress)
        self.steps = steps
        self.step_size = step_size
        self.rel_step_size = rel_step_size
        self.random_start = random_start
        self.restarts = restarts
        self.step_schedule = step_schedule
        self.keep = keep

    @property
    def n_forward(self) -> int:
        """Forward passes per input: ``restarts * (steps + 1)`` (``steps`` with ``keep="last"``)."""
        return self.steps if self.keep == "last" else self.restarts * (self.steps + 1)

    def _check_params(self) -> None:
        if self.step_size is not None and self.rel_step_size is not None:
            raise ValueError(f"give step_size or rel_step_size, not both (got {self.step_size!r} and "
                             f"{self.rel_step_size!r})")
        if self.keep == "last" and self.restarts != 1:
            raise ValueError(f"keep='last' needs restarts=1 (the last iterate of which restart?), got "
                             f"restarts={self.restarts!r}")

    def _step(self, eps: float) -> float:
        if self.step_size is not None:
            return float(self.step_size)
        rel = 2.0 / self.steps if self.rel_step_size is None else float(self.rel_step_size)
        return rel * eps

    def _run(self, model, x, objective, index, *, norm, eps, generator):
        if eps == 0:
            return x.clone()
        n = x.shape[0]
        eps_t = torch.full((n,), eps, dtype=x.dtype, device=x.device)
        alpha = torch.full((n,), self._step(eps), dtype=x.dtype, device=x.device)
        x_adv, _ = _pgd(model, x, objective, index, norm, eps_t, int(self.steps), alpha, self.random_start,
                        int(self.restarts), generator, self.step_schedule, keep=self.keep)
        return x_adv


class FGSM(PGD):
    """Fast gradient (sign) method: one step of size eps from the input (Goodfellow et al. 2015);
    with ``random_start=True``, from a random point of the ball (R+FGSM).

    The better of the start and the stepped point is kept. The embedding shift has a zero
    gradient at the input itself, so use ``random_start=True`` for :class:`EmbeddingShift`.

    Parameters
    ----------
    norm : {"linf", "l2"} or Norm, default="linf"
    random_start : bool, default=False
    batch_size, random_state, progress
        See :class:`EmbeddingAttack`.
    """

    name = "FGSM"

    def __init__(self, *, norm: str | Norm = "linf", random_start: bool = False, batch_size: int = 256,
                 random_state: int | None = None, progress: bool | None = None):
        super().__init__(norm=norm, steps=1, rel_step_size=1.0, random_start=random_start, restarts=1,
                         batch_size=batch_size, random_state=random_state, progress=progress)


class RandomSearch(EmbeddingAttack):
    """Gradient-free baseline: the best of ``n_queries`` random points of the eps-ball.

    Parameters
    ----------
    norm : {"linf", "l2"} or Norm, default="linf"
    n_queries : int, default=11
        Forward passes per input (11 matches ``PGD()``'s default ``restarts * (steps + 1)``).
    sample : {"boundary", "ball"}, default="boundary"
        Points on the sphere of radius eps (linf: random corners ``x +- eps``), or uniform in
        the ball; then clipped to [0, 1].
    batch_size, random_state, progress
        See :class:`EmbeddingAttack`.
    """

    name = "RandomSearch"
    _parameter_constraints = {
        **_COMMON_CONSTRAINTS,
        "n_queries": [Interval(Integral, 1, None)],
        "sample": [Options("boundary", "ball")],
    }

    def __init__(self, *, norm: str | Norm = "linf", n_queries: int = 11, sample: str = "boundary",
                 batch_size: int = 256, random_state: int | None = None, progress: bool | None = None):
        super().__init__(norm=norm, batch_size=batch_size, random_state=random_state, progress=progress)
        self.n_queries = n_queries
        self.sample = sample

    def _run(self, model, x, objective, index, *, norm, eps, generator):
        best = torch.full((x.shape[0],), -torch.inf, dtype=x.dtype, device=x.device)
        best_x = x.clone()
        with torch.no_grad():
            for _ in range(int(self.n_queries)):
                if self.sample == "boundary":
                    delta = eps * norm.random_direction(x.shape, generator, device=x.device, dtype=x.dtype)
                else:
                    delta = norm.random_start(x.shape, eps, generator, device=x.device, dtype=x.dtype)
                x_adv = (x + delta).clamp_(0.0, 1.0)
                _keep_best(best, best_x, _score(objective, _embed(model, x_adv, objective), index), x_adv)
        return best_x
