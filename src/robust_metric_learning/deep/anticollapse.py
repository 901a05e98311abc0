"""ACT, the anti-collapse triplet defence (Zhou & Patel, "Adversarial Attack and Defense in Deep
Ranking", TPAMI 2024; RobRank's ``defenses/pnp.py``)."""

from __future__ import annotations

from numbers import Integral
from typing import Any

import torch

from .._validation import Interval, Options
from .defense_base import (
    Defense,
    JointObjective,
    check_batch,
    check_embeddings,
    distance_lookup,
    loss_distance,
    make_copies,
    mine_triplets,
    select_triplets,
)

__all__ = ["AntiCollapseTriplets", "COPIES"]

#: how adversarial copies of triplet members are made (see :func:`~.defense_base.make_copies`)
COPIES = ("shared", "per_triplet")


class AntiCollapseTriplets(Defense):
    """ACT: positives and negatives perturbed to collapse onto each other; clean anchors.

    Per mini-batch: triplets are mined on the clean embeddings with the given miner (all
    triplets when None); the positives and negatives are perturbed jointly by sign-gradient
    PGD (``norm="linf"``; the model in eval mode, gradients w.r.t. the inputs only, the last
    iterate kept) to *minimise* ``mean_t d(f(p~_t), f(n~_t))``, the distance between each
    triplet's adversarial positive and negative (the collapse RobRank's ``pncollapse``
    makes); the training loss is ``loss_fn`` on the triplets (clean anchor, adversarial
    positive, adversarial negative): the adversarial copies are appended to the batch and the
    triplets re-pointed to them, so any pytorch-metric-learning loss that takes triplets works.
    The clean triplet term is not included (as in RobRank).

    Parameters
    ----------
    eps : float, default=0.1
        Perturbation budget, in ``norm``, on inputs in [0, 1]. RobRank (28x28 images): 77/255.
    steps : int, default=10
        PGD steps. RobRank: 32.
    norm : {"linf", "l2"}, default="linf"
    step_size : float or None, default=None
        None: ``2 eps / steps``. RobRank: 3/255 (with eps 77/255 and 32 steps).
    random_start : bool, default=False
        Start at a random point of the eps-ball (RobRank starts at the input).
    copies : {"shared", "per_triplet"}, default="shared"
        ``"shared"``: each batch input is perturbed at most once, its copy serving every
        triplet it is a positive or negative of (the collapse objective then follows the mean
        over those triplets), so the attack runs on at most ``batch`` inputs and a step costs
        at most ``steps + 2`` forward passes of the batch. ``"per_triplet"`` (RobRank's):
        each triplet its own positive and negative copy, ``2 * n_triplets`` inputs attacked.
    max_triplets : int or None, default=None
        Use at most this many of the mined triplets per batch (a random subset, drawn from the
        training generator); None: all. Bounds the cost of ``copies="per_triplet"``.

    Notes
    -----
    Distances are the loss's ``distance`` (pytorch-metric-learning's default ``LpDistance``
    is Euclidean between L2-normalised embeddings, RobRank's metric "N"), else Euclidean.
    RobRank mines with the model in eval mode and forwards the anchors again in train mode;
    here the clean batch is forwarded once in train mode, mined on its detached output, and
    its anchors' embeddings are the loss's (identical for models without batch-norm or
    dropout, one forward pass fewer). Reports ``n_copies`` adversarial inputs per batch.

    Examples
    --------
    >>> from pytorch_metric_learning import losses
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    >>> x, y = torch.rand(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    >>> act = AntiCollapseTriplets(eps=0.1, steps=3)
    >>> loss, made = act.step_loss(net, x, y, losses.TripletMarginLoss(margin=0.2), None, None)
    >>> made
    6
    """

    name = "act"
    _parameter_constraints = {
        **Defense._parameter_constraints,
        "random_start": [bool],
        "copies": [Options(*COPIES)],
        "max_triplets": [None, Interval(Integral, 1, None)],
    }

    def __init__(self, *, eps: float = 0.1, steps: int = 10, norm: str = "linf", step_size: float | None = None,
                 random_start: bool = False, copies: str = "shared", max_triplets: int | None = None):
        super().__init__(eps=eps, steps=steps, norm=norm, step_size=step_size)
        self._validate(random_start=random_start, copies=copies, max_triplets=max_triplets)
        self.random_start, self.copies = bool(random_start), copies
        self.max_triplets = None if max_triplets is None else int(max_triplets)

    def step_loss(self, model, x, y, loss_fn, miner, generator) -> tuple[torch.Tensor, int]:
        y = check_batch(x, y)
        emb = model(x)
        check_embeddings(emb, len(x))
        triplets = select_triplets(mine_triplets(emb.detach(), y, miner), self.max_triplets, generator)
        if len(triplets[0]) == 0:
            return loss_fn(emb, y, triplets), 0
        member, (slot_p, slot_n) = make_copies(triplets, (1, 2), self.copies)
        x_adv = self._perturb(model, x[member], self.collapse_objective(loss_fn, slot_p, slot_n, len(member)),
                              generator, random_start=self.random_start, keep="last")
        n = len(x)
        emb_all = torch.cat([emb, model(x_adv)])
        y_all = torch.cat([y, y[member]])
        return loss_fn(emb_all, y_all, (triplets[0], n + slot_p, n + slot_n)), len(x_adv)

    @staticmethod
    def collapse_objective(loss_fn: Any, slot_p: torch.Tensor, slot_n: torch.Tensor, n_copies: int) -> JointObjective:
        """The inner objective, to minimise: ``mean_t d(e[slot_p[t]], e[slot_n[t]])`` over the
        copies' embeddings ``e``, with the loss's distance."""
        dist = loss_distance(loss_fn)
        return JointObjective(lambda e: distance_lookup(dist, e, e, len(slot_p))(slot_p, slot_n).mean(), n_copies)

    def __repr__(self) -> str:
        return self._full_repr(("eps", "steps", "norm", "step_size", "random_start", "copies", "max_triplets"))
