"""The base of the training defences (:class:`Defense`) and the helpers they share: triplet
mining, adversarial copies of triplet members, joint inner objectives, the loss's distance.

A defence is a small object with ``step_loss(model, x, y, loss_fn, miner, generator)``
returning the scalar loss of one mini-batch (attached to the graph) and the number of
adversarial inputs it made. ``loss_fn`` and ``miner`` are any pytorch-metric-learning loss and
miner (``miner=None``: every triplet of the batch). A defence that keeps state between batches
(:class:`~robust_metric_learning.deep.hardness.HardnessManipulation`'s gradual target) exposes
it through ``state_dict`` / ``load_state_dict`` / ``reset``, which
:func:`~robust_metric_learning.deep.train_embedding` saves in its checkpoints.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, Callable, Sequence

import torch
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from .._parallel import eval_mode
from .._validation import Interval, Options, batch_labels, check_model_output, check_params
from ..attacks.embedding.norms import NORMS, Norm, get_norm
from ..attacks.embedding.objectives import _Distance
from ..attacks.embedding.pgd import perturb

__all__ = ["Defense", "mine_triplets", "select_triplets", "make_copies", "JointObjective", "loss_distance",
           "distance_lookup"]


def mine_triplets(emb: torch.Tensor, y: torch.Tensor, miner: Any) -> tuple[torch.Tensor, ...]:
    """Triplets (a, p, n) of the batch: the miner's (pairs converted), or all of them."""
    if miner is None:
        return lmu.get_all_triplets_indices(y)
    mined = miner(emb, y)
    if len(mined) == 4:
        return lmu.convert_to_triplets(mined, y, t_per_anchor="all")
    return tuple(mined)


def select_triplets(triplets: tuple[torch.Tensor, ...], max_triplets: int | None,
                    generator: torch.Generator | None) -> tuple[torch.Tensor, ...]:
    """At most ``max_triplets`` of ``triplets``, drawn without replacement (order kept)."""
    T = len(triplets[0])
    if max_triplets is None or T <= max_triplets:
        return tuple(triplets)
    gen_device = generator.device if generator is not None else torch.device("cpu")  # draw where it lives
    pick = torch.randperm(T, generator=generator, device=gen_device)[:max_triplets].sort().values
    pick = pick.to(triplets[0].device)
    return tuple(t[pick] for t in triplets)


def make_copies(triplets: Sequence[torch.Tensor], roles: Sequence[int],
                copies: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Adversarial copies of the members ``roles`` (0: anchor, 1: positive, 2: negative).

    Returns ``member``, the batch row each copy is made from, and for each role the copy that
    serves each triplet in that role. ``copies="shared"``: one copy per batch input, whatever
    the role and the number of triplets it is in (so at most ``batch`` copies);
    ``"per_triplet"``: a copy per triplet and role (``len(roles) * n_triplets`` copies).
    """
    T = len(triplets[0])
    rows = torch.cat([triplets[r] for r in roles])
    if copies == "per_triplet":
        return rows, list(torch.arange(len(rows), device=rows.device).split(T))
    member, inverse = torch.unique(rows, return_inverse=True)
    return member, list(inverse.split(T))


class JointObjective:
    """A scalar ``loss(emb_of_all_copies)`` to minimise, in the shape :func:`perturb` maximises.

    Each of the ``n`` rows scores ``-loss / n``, so the scores sum to ``-loss`` and perturb's
    ascent on their sum is a descent on ``loss`` for every copy jointly (a copy shared by
    several triplets follows the sum of their gradients, which has the sign of their mean).
    Per-row best iterates would mean nothing here: use it with ``keep="last"``.
    """

    embedding_dim = None

    def __init__(self, loss: Callable[[torch.Tensor], torch.Tensor], n: int):
        self.loss, self.n_samples = loss, n

    def __call__(self, emb_adv: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return (-self.loss(emb_adv) / len(index)).expand(len(index))


def loss_distance(loss_fn: Any) -> _Distance:
    """The loss's distance (a pytorch-metric-learning loss's ``distance``; similarities negated),
    else Euclidean; ``.pairs(a, b)`` gives row-wise distances."""
    spec = getattr(loss_fn, "distance", None)
    if spec is not None and hasattr(spec, "is_inverted") and hasattr(spec, "pairwise_distance"):
        return _Distance(spec)
    return _Distance("euclidean")


def distance_lookup(dist: _Distance, e1: torch.Tensor, e2: torch.Tensor,
                    n_pairs: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``lookup(i, j) = d(e1[i], e2[j])`` row-wise for ``n_pairs`` pairs: gathered from one
    ``len(e1) x len(e2)`` distance matrix when that is smaller than the gathered rows (many
    triplets on few inputs), else from the gathered rows."""
    if len(e1) * len(e2) <= n_pairs * e1.shape[1]:
        D = dist.matrix(e1, e2)
        return lambda i, j: D[i, j]
    return lambda i, j: dist.pairs(e1[i], e2[j])


def check_batch(x: torch.Tensor, y: Any) -> torch.Tensor:
    """``y``, the labels of the mini-batch ``x``, as a 1-D integer tensor on ``x``'s device
    (:func:`~robust_metric_learning._validation.batch_labels`: any class labels, one per row)
    holding at least 2 classes, or a clear error naming ``y``."""
    y = batch_labels(y, len(x), name="y", rows="x", device=getattr(x, "device", None))
    n_classes = int(torch.unique(y).numel())
    if n_classes < 2:
        raise ValueError(f"a mini-batch needs at least 2 classes for a metric loss, got {n_classes}")
    return y


def check_embeddings(emb: Any, n_rows: int) -> None:
    """The model's output on a batch of ``n_rows`` inputs is an (n_rows, dim) tensor (its
    finiteness is checked by ``train_embedding``, which names the batch)."""
    check_model_output(emb, n_rows=n_rows, finite=False)


class IsCallable:
    """A ``_parameter_constraints`` entry accepting any callable (a miner)."""

    def __init__(self, what: str):
        self.what = what

    def accepts(self, value: Any) -> bool:
        return callable(value)

    def __str__(self) -> str:
        return self.what


class Defense:
    """Base class: how one mini-batch's training loss is formed.

    Parameters are declared in ``_parameter_constraints`` and checked when the defence is made
    (the error names the parameter, what is allowed and what came).
    """

    name = "natural"
    _parameter_constraints: dict = {
        "eps": [Interval(Real, 0, None)],
        "steps": [Interval(Integral, 1, None)],
        "norm": [Options(*NORMS), Norm],
        "step_size": [None, Interval(Real, 0, None, closed="neither")],
    }

    def __init__(self, *, eps: float = 0.1, steps: int = 10, norm: str = "linf", step_size: float | None = None):
        self._validate(eps=eps, steps=steps, norm=norm, step_size=step_size)
        self.eps, self.steps, self.norm, self.step_size = float(eps), int(steps), get_norm(norm), step_size

    def _validate(self, **values: Any) -> None:
        """Check ``values`` against this class's declared constraints."""
        check_params(type(self).__name__, values, {k: self._parameter_constraints[k] for k in values})

    def _perturb(self, model, x, objective, generator, *, random_start: bool = True, keep: str = "best",
                 stop_tol: float | None = None) -> torch.Tensor:
        """PGD (:func:`perturb`) with the model in eval mode; gradients w.r.t. the inputs only."""
        with eval_mode(model):
            return perturb(model, x, objective, norm=self.norm, eps=self.eps, steps=self.steps,
                           step_size=self.step_size, random_start=random_start, restarts=1,
                           generator=generator, keep=keep, stop_tol=stop_tol).detach()

    def step_loss(self, model, x, y, loss_fn, miner, generator) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    # ------------------------------------------------------------ state kept between batches
    def reset(self) -> None:
        """Forget the state kept between batches (none here); ``train_embedding`` calls it when
        a training run starts afresh."""

    def state_dict(self) -> dict[str, Any]:
        """The state kept between batches (plain numbers; saved in training checkpoints)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""

    # ------------------------------------------------------------ repr (a checkpoint setting)
    def _extra_repr(self) -> str:
        """Parameters a subclass adds, shown between ``steps`` and ``norm``."""
        return ""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps}, steps={self.steps}, {self._extra_repr()}norm={self.norm!r}"
                + (f", step_size={self.step_size}" if self.step_size is not None else "") + ")")

    def _full_repr(self, names: Sequence[str], described: dict[str, Any] | None = None) -> str:
        """``Class(name=value, ...)`` for every parameter in ``names`` (``described`` overrides
        a value's repr, e.g. a miner's by its hyperparameters)."""
        described = described or {}
        parts = [f"{n}={described[n] if n in described else repr(getattr(self, n))}" for n in names]
        return f"{type(self).__name__}({', '.join(parts)})"
