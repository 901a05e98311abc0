"""Training steps: natural, and the adversarial defences for mini-batch metric losses, with
the registry of all defences (:data:`DEFENSES`, :func:`get_defense`).

A defence is a small object with ``step_loss(model, x, y, loss_fn, miner, generator)``
returning the scalar loss of one mini-batch (attached to the graph) and the number of
adversarial inputs it made (:class:`~.defense_base.Defense`). ``loss_fn`` and ``miner`` are any
pytorch-metric-learning loss and miner (``miner=None``: every triplet of the batch).

* :class:`Natural`: ``loss_fn(f(x), y, miner(f(x), y))``.
* :class:`RobustTriplets` (ours, the published formulation for mini-batch-dependent losses):
  mine triplets once on the clean embeddings; for a fraction ``rate`` of them perturb exactly
  one role (positive by default) by PGD against the detached clean embeddings of the other two;
  append the adversarial copies to the batch, point those triplets at them, and minimise the
  loss on the combined batch.
* :class:`NaiveAdversarial`: every input perturbed by PGD to maximise the batch loss on the
  clean-mined tuples (each sample against its own loss terms); the loss on the perturbed batch.
* :class:`EmbeddingShiftTriplets` (EST): every input perturbed to maximise its own embedding
  shift ``||f(x') - f(x)||``; the loss on the perturbed batch with the clean-mined tuples.
* :class:`GaussianAugmentation`: the loss on noisy inputs (training for randomized smoothing).
* :class:`~.anticollapse.AntiCollapseTriplets` (ACT, RobRank's TPAMI 2024 defence) and
  :class:`~.hardness.HardnessManipulation` (HM, CVPR 2022), in their own modules.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import torch

from .._validation import Interval, Options
from ..attacks.embedding.objectives import SHIFT_NUDGE, EmbeddingShift, TripletRoleObjective
from .anticollapse import AntiCollapseTriplets
from .defense_base import Defense, mine_triplets
from .defense_base import check_batch as _check_batch
from .hardness import HardnessManipulation

__all__ = ["Defense", "Natural", "RobustTriplets", "NaiveAdversarial", "EmbeddingShiftTriplets",
           "AntiCollapseTriplets", "HardnessManipulation", "GaussianAugmentation", "get_defense", "DEFENSES",
           "mine_triplets"]


class Natural(Defense):
    """No adversarial examples."""

    name = "natural"

    def __init__(self):
        super().__init__(eps=0.0, steps=1)

    def step_loss(self, model, x, y, loss_fn, miner, generator):
        y = _check_batch(x, y)
        emb = model(x)
        return loss_fn(emb, y, None if miner is None else miner(emb, y)), 0

    def __repr__(self) -> str:
        return "Natural()"


_MEMBER = {"anchor": 0, "positive": 1, "negative": 2}


class RobustTriplets(Defense):
    """Ours: one role per chosen triplet perturbed against the clean others; combined batch.

    Parameters
    ----------
    eps : float, default=0.1
        Perturbation budget, in ``norm`` on inputs in [0, 1].
    steps : int, default=10
        PGD steps (step size ``2 eps / steps`` unless ``step_size``).
    rate : float, default=0.5
        Fraction of the mined triplets that get an adversarial member.
    role : {"positive", "negative", "anchor"}, default="positive"
        The member perturbed: positive pushed away from its anchors, negative pulled towards
        them, or anchor moved to close the gap (``d(a', p) - d(a', n)`` maximised). Against
        attacks on retrieval queries only the anchor role helps much: ``rml reproduce dml``'s
        role ablation (the documentation's results page) measures it.
    norm : {"linf", "l2"}, default="linf"

    Notes
    -----
    Chosen triplets that share their perturbed member share one adversarial copy, attacked
    against the mean of their terms (:class:`~robust_metric_learning.attacks.embedding.objectives.TripletRoleObjective`
    with ``groups``). So there are at most as many copies as batch inputs, and a step costs
    at most about ``steps + 2`` natural steps whatever the number of triplets.
    """

    name = "ours"
    _parameter_constraints = {
        **Defense._parameter_constraints,
        "rate": [Interval(Real, 0, 1, closed="right")],
        "role": [Options(*_MEMBER)],
    }

    def __init__(self, *, eps: float = 0.1, steps: int = 10, rate: float = 0.5, role: str = "positive",
                 norm: str = "linf", step_size: float | None = None):
        super().__init__(eps=eps, steps=steps, norm=norm, step_size=step_size)
        self._validate(rate=rate, role=role)
        self.rate, self.role = float(rate), role

    def choose(self, triplets: tuple[torch.Tensor, ...], generator) -> tuple[torch.Tensor, torch.Tensor,
                                                                             torch.Tensor]:
        """Chosen triplet positions, each one's copy number, and the batch input of each copy."""
        T = len(triplets[0])
        picked = torch.randperm(T, generator=generator)[: math.ceil(self.rate * T)].to(triplets[0].device)
        member, copy_of = torch.unique(triplets[_MEMBER[self.role]][picked], return_inverse=True)
        return picked, copy_of, member

    def step_loss(self, model, x, y, loss_fn, miner, generator):
        y = _check_batch(x, y)
        emb = model(x)
        triplets = mine_triplets(emb.detach(), y, miner)
        if len(triplets[0]) == 0:
            return loss_fn(emb, y, triplets), 0
        picked, copy_of, member = self.choose(triplets, generator)
        objective = TripletRoleObjective.from_batch(emb.detach(), [t[picked] for t in triplets], role=self.role,
                                                    groups=copy_of)
        x_adv = self._perturb(model, x[member], objective, generator)
        emb_all = torch.cat([emb, model(x_adv)])
        y_all = torch.cat([y, y[member]])
        new = [t.clone() for t in triplets]
        new[_MEMBER[self.role]][picked] = len(x) + copy_of
        return loss_fn(emb_all, y_all, tuple(new)), len(x_adv)

    def _extra_repr(self) -> str:
        return f"rate={self.rate}, role={self.role!r}, "


class _BatchLoss:
    """Objective for the naive attack: the batch loss on fixed tuples, shared by every row."""

    def __init__(self, loss_fn, y, triplets):
        self.loss_fn, self.y, self.triplets = loss_fn, y, triplets

    def __call__(self, emb_adv: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(emb_adv, self.y[index], self.triplets).expand(len(index))

    def success(self, emb_adv: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(index), dtype=torch.bool, device=emb_adv.device)


class _PerturbedBatch(Defense):
    """A defence that mines the tuples on the clean batch, perturbs every input to maximise
    :meth:`_objective` (from a random start, keeping the best iterate, unless the instance says
    otherwise) and takes the loss on the perturbed batch with the clean-mined tuples."""

    random_start, keep = True, "best"

    def _objective(self, clean, loss_fn, y, triplets, generator):
        """The attack's objective, from the clean embeddings and the mined tuples."""
        raise NotImplementedError

    def step_loss(self, model, x, y, loss_fn, miner, generator):
        y = _check_batch(x, y)
        with torch.no_grad():
            clean = model(x)
        triplets = mine_triplets(clean, y, miner)
        x_adv = self._perturb(model, x, self._objective(clean, loss_fn, y, triplets, generator), generator,
                              random_start=self.random_start, keep=self.keep)
        return loss_fn(model(x_adv), y, triplets), len(x_adv)


class NaiveAdversarial(_PerturbedBatch):
    """Classifier-style adversarial training: the whole batch perturbed to maximise its loss
    (clean-mined tuples), then the loss on the perturbed batch."""

    name = "naive"

    def _objective(self, clean, loss_fn, y, triplets, generator):
        return _BatchLoss(loss_fn, y, triplets)


class EmbeddingShiftTriplets(_PerturbedBatch):
    """EST: every input perturbed to maximise its own embedding shift; loss on the perturbed
    batch with the clean-mined tuples.

    Parameters
    ----------
    eps, steps, norm, step_size
        See :class:`Defense`.
    random_start : bool, default=True
        Start the attack at a random point of the ball; False starts at the input, as the
        published code does. The shift's gradient vanishes there, so the reference embedding is
        then moved by ``1e-4`` along a random sign vector, at every step (the published code
        moves it by ``1e-7`` times a random vector of -1, 0, 1 at the first step only; with
        sign steps either starts the ascent).
    keep : {"best", "last"}, default="best"
        Train on each input's best iterate (largest shift), or the last one (published).
    """

    name = "est"
    _parameter_constraints = {**Defense._parameter_constraints, "random_start": [bool],
                              "keep": [Options("best", "last")]}

    def __init__(self, *, eps: float = 0.1, steps: int = 10, norm: str = "linf", step_size: float | None = None,
                 random_start: bool = True, keep: str = "best"):
        super().__init__(eps=eps, steps=steps, norm=norm, step_size=step_size)
        self._validate(random_start=random_start, keep=keep)
        self.random_start, self.keep = random_start, keep

    def _objective(self, clean, loss_fn, y, triplets, generator):
        if self.random_start:
            return EmbeddingShift(clean)
        # from the input: a nudged reference, as the shift's gradient vanishes at the input
        gen_device = generator.device if generator is not None else torch.device("cpu")
        sign = 2 * torch.randint(2, clean.shape, generator=generator, device=gen_device) - 1
        return EmbeddingShift(clean + SHIFT_NUDGE * sign.to(device=clean.device, dtype=clean.dtype))

    def _extra_repr(self) -> str:  # the defaults print nothing, as before these options existed
        if (self.random_start, self.keep) == (True, "best"):
            return ""
        return f"random_start={self.random_start}, keep={self.keep!r}, "


class GaussianAugmentation(Defense):
    """Training for randomized smoothing: the loss on the batch with Gaussian noise of standard
    deviation ``sigma`` added to the inputs (not clipped, as the smoothed model sees them), plus
    ``consistency`` times the mean squared distance between the embeddings of two noisy copies
    (a second forward pass when > 0). Reports no adversarial inputs.

    Parameters
    ----------
    sigma : float, default=0.25
        The noise level (> 0) of the smoothing the model is meant for.
    consistency : float, default=0.0
        Weight (>= 0) of the consistency term.
    """

    name = "noise"
    _parameter_constraints = {**Defense._parameter_constraints, "sigma": [Interval(Real, 0, None, closed="neither")],
                              "consistency": [Interval(Real, 0, None)]}

    def __init__(self, *, sigma: float = 0.25, consistency: float = 0.0):
        self._validate(sigma=sigma, consistency=consistency)
        super().__init__(eps=0.0, steps=1)
        self.sigma, self.consistency = float(sigma), float(consistency)

    def _noisy(self, x: torch.Tensor, generator) -> torch.Tensor:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype)
        return x + self.sigma * noise.to(x.device)

    def step_loss(self, model, x, y, loss_fn, miner, generator):
        y = _check_batch(x, y)
        emb = model(self._noisy(x, generator))
        loss = loss_fn(emb, y, None if miner is None else miner(emb, y))
        if self.consistency > 0:
            other = model(self._noisy(x, generator))
            loss = loss + self.consistency * ((emb - other) ** 2).sum(1).mean()
        return loss, 0

    def __repr__(self) -> str:
        return f"GaussianAugmentation(sigma={self.sigma}, consistency={self.consistency})"


DEFENSES: dict[str, type[Defense]] = {
    "natural": Natural, "ours": RobustTriplets, "naive": NaiveAdversarial, "est": EmbeddingShiftTriplets,
    "act": AntiCollapseTriplets, "hm": HardnessManipulation, "noise": GaussianAugmentation,
}


def get_defense(name: str | Defense, **params: Any) -> Defense:
    """A defence by name (``natural``, ``ours``, ``naive``, ``est``, ``act``, ``hm``, ``noise``)
    with its parameters; a defence object is returned as it is (then ``params`` must be empty)."""
    if isinstance(name, Defense):
        if params:
            raise ValueError(f"params {sorted(params)} cannot be applied to a defense object; set them on it")
        return name
    if not isinstance(name, str) or name not in DEFENSES:
        raise ValueError(f"defense must be one of {sorted(DEFENSES)} or a Defense object (see get_defense), "
                         f"got {type(name).__name__} {name!r}")
    return DEFENSES[name](**params)
