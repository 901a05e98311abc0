"""Attacks on embedding models: PGD, FGSM and a random-search baseline (DESIGN §3, §5).

Two layers:

- :func:`perturb`, the functional PGD core, for robust training: it works on one batch, leaves
  the model's train/eval mode alone and never touches parameter ``.grad`` (gradients are taken
  with ``torch.autograd.grad`` with respect to the perturbed inputs only).
- Attack objects shaped like foolbox's (``PGD``, ``FGSM``, ``RandomSearch``), for evaluation::

      raw, clipped, success = PGD(steps=20)(model, images, objective, eps=[0.01, 0.1])

  The base ``__call__`` validates, puts the model in eval mode (and restores every module's
  mode after), runs on the model's device in batches, clips the result to the threat model
  (ball of radius eps around the input, then the box [0, 1]) and recomputes success and the
  objective itself on the clipped points. A subclass writes only ``_run``.

Threat model: inputs in [0, 1]; ``eps`` in the units of ``norm`` ("linf": max absolute pixel
change; "l2": Euclidean norm of the whole perturbation of one input).
"""

from __future__ import annotations

import math
import sys
from numbers import Integral, Real
from typing import Any, Sequence

import numpy as np
import torch

from .._validation import (
    Interval,
    Options,
    check_eps,
    check_index,
    check_model_output,
    check_unit_interval,
    validate_params,
)
from .norms import NORMS, Norm, get_norm

__all__ = [
    "EmbeddingAttack",
    "EmbeddingAttackResult",
    "FGSM",
    "PGD",
    "RandomSearch",
    "STEP_SCHEDULES",
    "perturb",
]


# ------------------------------------------------------------------------- helpers


def _per_sample(value: float | torch.Tensor, n: int, like: torch.Tensor, *, name: str) -> torch.Tensor:
    """A number or a per-sample tensor as a finite, non-negative (n,) tensor on ``like``'s device."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(n)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must be a number or one value per input ({n}), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0, got values in [{float(t.min()):.6g}, {float(t.max()):.6g}]")
    return t


def _check_objective(objective: Any, *, need_success: bool) -> None:
    if not callable(objective):
        raise ValueError(f"objective must be an Objective (callable as objective(emb, index)), got {type(objective).__name__}")
    if need_success and not callable(getattr(objective, "success", None)):
        raise ValueError(f"objective must have a success(emb, index) method, {type(objective).__name__} has none")


def _embed(model: Any, x: torch.Tensor, objective: Any) -> torch.Tensor:
    emb = model(x)
    check_model_output(emb, n_rows=x.shape[0], dim=getattr(objective, "embedding_dim", None))
    return emb


def _score(objective: Any, emb: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    s = objective(emb, index)
    if not isinstance(s, torch.Tensor) or s.shape != (emb.shape[0],):
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"objective must return one score per input, shape ({emb.shape[0]},), got {got}")
    return s


def _keep_best(best: torch.Tensor, best_x: torch.Tensor, score: torch.Tensor, x_adv: torch.Tensor) -> None:
    """In place: where ``score`` beats ``best`` (NaN never does), take ``x_adv`` and ``score``."""
    better = score > best
    best.copy_(torch.where(better, score, best))
    best_x[better] = x_adv[better]


#: step-size schedules of PGD: factor of the step at step t (0-based) of T
STEP_SCHEDULES = {
    "constant": lambda t, T: 1.0,
    "linear": lambda t, T: 1.0 - t / T,
    "cosine": lambda t, T: 0.5 * (1.0 + math.cos(math.pi * t / T)),
}


def _pgd(model, x, objective, index, norm: Norm, eps: torch.Tensor, steps: int, alpha: torch.Tensor,
         random_start: bool, restarts: int, generator: torch.Generator | None, schedule: str = "constant"):
    """PGD on one batch, no validation; returns (best x_adv, best score), both detached."""
    factor = STEP_SCHEDULES[schedule]
    best = torch.full((x.shape[0],), -torch.inf, dtype=x.dtype, device=x.device)
    best_x = x.clone()
    for _ in range(restarts):
        if random_start:
            delta = norm.random_start(x.shape, eps, generator, device=x.device, dtype=x.dtype)
            x_adv = (x + delta).clamp_(0.0, 1.0)
        else:
            x_adv = x.clone()
        for t in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                s = _score(objective, _embed(model, x_adv, objective), index)
                if not s.requires_grad:
                    raise ValueError("the objective does not depend on the model's output through autograd; "
                                     "PGD needs a differentiable objective (and model)")
                (grad,) = torch.autograd.grad(s.sum(), x_adv)
            x_adv = x_adv.detach()
            _keep_best(best, best_x, s.detach(), x_adv)
            x_adv = norm.ascent(x_adv, x, grad, factor(t, steps) * alpha, eps)
        with torch.no_grad():
            s = _score(objective, _embed(model, x_adv, objective), index)
        _keep_best(best, best_x, s, x_adv)
    return best_x, best


def perturb(model: Any, x: torch.Tensor, objective: Any, *, norm: str | Norm = "linf",
            eps: float | torch.Tensor, steps: int = 10, step_size: float | torch.Tensor | None = None,
            random_start: bool = True, restarts: int = 1, generator: torch.Generator | None = None,
            index: torch.Tensor | None = None, return_score: bool = False):
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
    if not isinstance(random_start, bool):
        raise ValueError(f"random_start must be True or False, got {random_start!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    x = check_unit_interval(x.detach() if isinstance(x, torch.Tensor) else x, name="x")
    n = x.shape[0]
    size = getattr(objective, "n_samples", None)
    if index is None:
        if size is not None and size != n:
            raise ValueError(f"the objective holds context for {size} inputs, x has {n}; "
                             "pass index= (rows of x in the objective's context)")
        index = torch.arange(n, device=x.device)
    else:
        index = check_index(index, n_rows=n, size=size).to(x.device)
    eps_t = _per_sample(eps, n, x, name="eps")
    alpha = 2.0 * eps_t / steps if step_size is None else _per_sample(step_size, n, x, name="step_size")
    x_adv, score = _pgd(model, x, objective, index, norm, eps_t, int(steps), alpha, random_start, int(restarts),
                        generator)
    return (x_adv, score) if return_score else x_adv


# ------------------------------------------------------------------------- attack objects


class EmbeddingAttackResult(tuple):
    """What an attack on an embedding model returns; unpacks as ``raw, clipped, success``.

    For a list of eps every field has a leading axis, one entry per eps.

    Attributes
    ----------
    raw : tensor of shape ([n_eps,] n, ...)
        The attack's output.
    clipped : tensor of shape ([n_eps,] n, ...)
        ``raw`` projected onto the ball of radius eps around the input, then clipped to [0, 1].
    success : BoolTensor of shape ([n_eps,] n)
        ``objective.success`` at ``clipped``, recomputed by the attack's base class.
    scores : tensor of shape ([n_eps,] n)
        The objective at ``clipped``.
    embeddings : tensor of shape ([n_eps,] n, dim)
        The model's embeddings of ``clipped`` (eval mode).
    """

    def __new__(cls, raw, clipped, success, *, scores, embeddings):
        self = super().__new__(cls, (raw, clipped, success))
        self.scores = scores
        self.embeddings = embeddings
        return self

    raw = property(lambda self: self[0])
    clipped = property(lambda self: self[1])
    success = property(lambda self: self[2])


def _device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype | None]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device, None
    return torch.device("cpu"), None


def _progress(progress: bool | None, total: int, desc: str):
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if progress is None else not progress
    return tqdm(total=total, desc=desc, unit="pt", disable=disable, leave=False)


_COMMON_CONSTRAINTS = {
    "norm": [Options(*NORMS), Norm],
    "batch_size": [Interval(Integral, 1, None)],
    "random_state": [None, Interval(Integral, 0, 2**63 - 1)],
    "progress": [None, bool],
}


class EmbeddingAttack:
    """Base of the attacks on embedding models (foolbox-shaped). Subclasses write ``_run``.

    Parameters common to all attacks
    --------------------------------
    norm : {"linf", "l2"} or Norm, default="linf"
        Threat model; eps is measured in this norm.
    batch_size : int, default=256
        Inputs attacked at once.
    random_state : int or None, default=None
        Seed; batch ``b`` draws from its own generator (the ``b``-th child of
        ``SeedSequence(random_state)``), the same for every eps of a sweep and whatever the
        number of restarts.
    progress : bool or None, default=None
        Progress bar; None shows it on a terminal only.
    """

    name = "attack"
    _parameter_constraints: dict = dict(_COMMON_CONSTRAINTS)

    def __init__(self, *, norm: str | Norm = "linf", batch_size: int = 256, random_state: int | None = None,
                 progress: bool | None = None):
        self.norm = norm
        self.batch_size = batch_size
        self.random_state = random_state
        self.progress = progress

    def _run(self, model: torch.nn.Module, x: torch.Tensor, objective: Any, index: torch.Tensor, *,
             norm: Norm, eps: float, generator: torch.Generator) -> torch.Tensor:
        """Adversarial inputs for one batch ``x`` (on the model's device, model in eval mode)."""
        raise NotImplementedError

    def _check_params(self) -> None:
        """Extra checks across parameters (raise ValueError naming them)."""

    def __call__(self, model: torch.nn.Module, inputs: Any, objective: Any, *,
                 eps: float | Sequence[float], index: Any = None) -> EmbeddingAttackResult:
        """Attack ``model`` at ``inputs`` for ``objective``.

        Parameters
        ----------
        model : torch.nn.Module
            Maps a batch of inputs to embeddings (n, dim).
        inputs : tensor or array of shape (n, ...)
            Values in [0, 1].
        objective : Objective
            Built for these inputs (its context has one row per input), or for a larger set
            with ``index`` giving the rows of ``inputs`` in it.
        eps : float or sequence of float
            Radius in the units of ``norm``; a sequence gives every output a leading axis.
        index : array-like of int of shape (n,), default=None

        Returns
        -------
        EmbeddingAttackResult
            ``raw, clipped, success`` (plus ``.scores`` and ``.embeddings``), on the inputs'
            device, in the model's floating dtype.
        """
        validate_params(self)
        self._check_params()
        norm = get_norm(self.norm)
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module mapping inputs to embeddings, got {type(model).__name__}")
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
        device, dtype = _device_dtype(model)
        out_device = x.device
        x = x.to(dtype=dtype or x.dtype)
        starts = range(0, n, self.batch_size)
        seeds = [int(s.generate_state(1, np.uint64)[0])
                 for s in np.random.SeedSequence(self.random_state).spawn(len(starts))]
        raw, clipped, success, scores, embs = [], [], [], [], []
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with _progress(self.progress, n * eps_arr.size, self.name) as bar:
                for e in eps_arr.tolist():
                    parts: list[list[torch.Tensor]] = [[], [], [], [], []]
                    for s, seed in zip(starts, seeds):
                        xb = x[s:s + self.batch_size].to(device)
                        ib = index[s:s + self.batch_size].to(device)
                        gen = torch.Generator().manual_seed(seed)
                        rb = self._run(model, xb, objective, ib, norm=norm, eps=e, generator=gen).detach()
                        if rb.shape != xb.shape:
                            raise RuntimeError(f"{self.name}._run returned shape {tuple(rb.shape)} for inputs "
                                               f"of shape {tuple(xb.shape)}")
                        cb = (xb + norm.project(rb - xb, e)).clamp_(0.0, 1.0)
                        with torch.no_grad():
                            emb = _embed(model, cb, objective)
                            sc = _score(objective, emb, ib)
                            ok = objective.success(emb, ib)
                        for lst, t in zip(parts, (rb, cb, ok.to(torch.bool), sc, emb)):
                            lst.append(t.to(out_device))
                        bar.update(xb.shape[0])
                    for lst, p in zip((raw, clipped, success, scores, embs), parts):
                        lst.append(torch.cat(p))
        finally:
            for m, mode in modes:
                m.training = mode
        if np.ndim(eps) == 0:
            return EmbeddingAttackResult(raw[0], clipped[0], success[0], scores=scores[0], embeddings=embs[0])
        return EmbeddingAttackResult(torch.stack(raw), torch.stack(clipped), torch.stack(success),
                                     scores=torch.stack(scores), embeddings=torch.stack(embs))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._parameter_constraints)
        return f"{type(self).__name__}({params})"


class PGD(EmbeddingAttack):
    """Projected gradient ascent on the objective (Madry et al. 2018), with random start and
    restarts; keeps each input's best iterate.

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
    batch_size, random_state, progress
        See :class:`EmbeddingAttack`.

    Notes
    -----
    Costs ``restarts * (steps + 1)`` forward and ``restarts * steps`` backward passes per
    input (:attr:`n_forward`); ``RandomSearch(n_queries=pgd.n_forward)`` has the same number
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
    }

    def __init__(self, *, norm: str | Norm = "linf", steps: int = 10, step_size: float | None = None,
                 rel_step_size: float | None = None, random_start: bool = True, restarts: int = 1,
                 step_schedule: str = "constant", batch_size: int = 256, random_state: int | None = None,
                 progress: bool | None = None):
        super().__init__(norm=norm, batch_size=batch_size, random_state=random_state, progress=progress)
        self.steps = steps
        self.step_size = step_size
        self.rel_step_size = rel_step_size
        self.random_start = random_start
        self.restarts = restarts
        self.step_schedule = step_schedule

    @property
    def n_forward(self) -> int:
        """Forward passes per input: ``restarts * (steps + 1)``."""
        return self.restarts * (self.steps + 1)

    def _check_params(self) -> None:
        if self.step_size is not None and self.rel_step_size is not None:
            raise ValueError(f"give step_size or rel_step_size, not both (got {self.step_size!r} and "
                             f"{self.rel_step_size!r})")

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
                        int(self.restarts), generator, self.step_schedule)
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
