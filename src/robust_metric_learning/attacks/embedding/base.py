"""The base of attacks on embedding models: :class:`EmbeddingAttack`, its result
type, and the helpers every attack and the functional PGD core share.

Attack objects are shaped like foolbox's::

    raw, clipped, success = PGD(steps=20)(model, images, objective, eps=[0.01, 0.1])

The base ``__call__`` validates, puts the model in eval mode (and restores every module's mode
after), runs on the model's device in batches, clips the result to the threat model (ball of
radius eps around the input, then the box [0, 1]) and recomputes success and the objective
itself on the clipped points. A subclass writes only ``_run``.

Threat model: inputs in [0, 1]; ``eps`` in the units of ``norm`` ("linf": max absolute pixel
change; "l2": Euclidean norm of the whole perturbation of one input).
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, Sequence

import numpy as np
import torch

from ..._parallel import eval_mode, progress_bar
from ..._validation import (
    Interval,
    Options,
    check_eps,
    check_index,
    check_model_output,
    check_unit_interval,
    validate_params,
)
from .norms import NORMS, Norm, get_norm

__all__ = ["EmbeddingAttack", "EmbeddingAttackResult"]


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


# ------------------------------------------------------------------------- attack objects


def check_call(model: Any, inputs: Any, objective: Any, eps: Any, index: Any) -> tuple:
    """The checks of an attack call: ``(inputs, eps array, index)``, validated (every attack and
    ensemble calls this once)."""
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module mapping inputs to embeddings, got {type(model).__name__}")
    _check_objective(objective, need_success=True)
    x = check_unit_interval(inputs.detach() if isinstance(inputs, torch.Tensor) else inputs, name="inputs")
    eps_arr = check_eps(eps)
    return x, eps_arr, objective_index(objective, index, x.shape[0], name="inputs")


def objective_index(objective: Any, index: Any, n: int, *, name: str) -> torch.Tensor:
    """The rows of the objective's context the ``n`` inputs ``name`` stand for (``index``, or
    ``0..n-1`` when None, which needs an objective built for exactly these inputs)."""
    size = getattr(objective, "n_samples", None)
    if index is None:
        if size is not None and size != n:
            raise ValueError(f"the objective holds context for {size} inputs, {name} has {n}; "
                             "build it for these inputs or pass index= (their rows in its context)")
        return torch.arange(n)
    return check_index(index, n_rows=n, size=size)


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


_COMMON_CONSTRAINTS = {
    "norm": [Options(*NORMS), Norm],
    "batch_size": [Interval(Integral, 1, None)],
    "random_state": [None, Interval(Integral, 0, 2**63 - 1)],
    "progress": [None, bool],
}


class EmbeddingAttack:
    """Base of the attacks on embedding models (foolbox-shaped). Subclasses write ``_run``;
    every attack takes the parameters below.

    Parameters
    ----------
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
        x, eps_arr, index = check_call(model, inputs, objective, eps, index)
        n = x.shape[0]
        device, dtype = _device_dtype(model)
        out_device = x.device
        x = x.to(dtype=dtype or x.dtype)
        starts = range(0, n, self.batch_size)
        seeds = [int(s.generate_state(1, np.uint64)[0])
                 for s in np.random.SeedSequence(self.random_state).spawn(len(starts))]
        raw, clipped, success, scores, embs = [], [], [], [], []
        with eval_mode(model):
            with progress_bar(self.progress, n * eps_arr.size, self.name) as bar:
                # a budget past the box's diameter allows the whole box: the run uses the diameter
                # (the same threat model; a huge eps would overflow the attack's float32 steps)
                for e in np.minimum(eps_arr, norm.diameter(int(np.prod(x.shape[1:])))).tolist():
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
        if np.ndim(eps) == 0:
            return EmbeddingAttackResult(raw[0], clipped[0], success[0], scores=scores[0], embeddings=embs[0])
        return EmbeddingAttackResult(torch.stack(raw), torch.stack(clipped), torch.stack(success),
                                     scores=torch.stack(scores), embeddings=torch.stack(embs))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._parameter_constraints)
        return f"{type(self).__name__}({params})"
