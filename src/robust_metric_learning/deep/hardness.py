"""HM, hardness manipulation with a gradual adversary and an intra-class-structure term (Zhou &
Patel, "Enhancing Adversarial Robustness for Deep Metric Learning", CVPR 2022; RobRank's
``defenses/amd.py``)."""

from __future__ import annotations

import json
from numbers import Integral, Real
from typing import Any

import torch

from .._validation import Interval, Options
from .anticollapse import COPIES
from .defense_base import (
    Defense,
    IsCallable,
    JointObjective,
    check_batch,
    check_embeddings,
    distance_lookup,
    loss_distance,
    make_copies,
    mine_triplets,
    select_triplets,
)
from .hyperparams import hyperparameters

__all__ = ["HardnessManipulation"]


class HardnessManipulation(Defense):
    """HM: every member of the source triplets perturbed until each triplet is at least as hard
    as a destination hardness; the loss on the adversarial triplets, plus an intra-class-structure
    (ICS) term.

    Per mini-batch, with the hardness of a triplet ``H = d(a, p) - d(a, n)`` (larger is harder):

    1. Source triplets: the given miner's, on the clean embeddings (RobRank's published
       variant ``ghmetsmi`` mines them "soft-hard"; any pytorch-metric-learning miner, or None
       for all triplets, works here).
    2. Destination hardness ``H_dst``: with ``gradual=True`` (the published option) the scalar
       ``-m * clip(prev_loss, 0, m) / m``, ``m`` the margin and ``prev_loss`` the previous
       batch's adversarial loss (before the ICS term): the first batch targets ``-m`` (the
       semi-hard boundary), and the target moves towards 0 (hard) as the loss falls. With
       ``gradual=False``, the hardness of the ``destination_miner``'s triplets on the clean
       batch (RobRank pairs source and destination triplets by position, one per anchor; here
       a source triplet's target is the mean hardness of the destination triplets with the
       same anchor, or of all destination triplets when its anchor has none; no destination
       triplet at all: the inputs are not moved).
    3. The anchors, positives and negatives of the source triplets are perturbed jointly by
       sign-gradient PGD (the model in eval mode, gradients w.r.t. the inputs only, the last
       iterate kept) to minimise the ET objective ``mean_t min(0, H~_t - H_dst)^2`` on the
       adversarial embeddings, which is non-zero only for triplets easier than the target;
       stopping early once the objective changes by less than ``stop_tol`` between steps (or
       its gradient is zero: no input would move).
    4. Loss: ``loss_fn`` on the adversarial triplets ``(a~, p~, n~)``, plus, with
       ``ics_weight > 0``, ``ics_weight * mean_t max(0, d(a_t, a~_t) - d(a_t, p_t))`` with
       the clean anchor and positive (with gradient) and the adversarial anchor.

    Parameters
    ----------
    eps : float, default=0.1
        Perturbation budget, in ``norm``, on inputs in [0, 1]. RobRank (28x28): 77/255.
    steps : int, default=10
        Most PGD steps. RobRank: 32.
    norm : {"linf", "l2"}, default="linf"
    step_size : float or None, default=None
        None: ``2 eps / steps``. RobRank: 3/255.
    random_start : bool, default=False
        RobRank starts at the input.
    gradual : bool, default=True
        The gradual adversary (scalar target above); False: ``destination_miner``'s hardness.
    destination_miner : pytorch-metric-learning miner or None, default=None
        Needed with ``gradual=False`` (RobRank's published destination is semi-hard, e.g.
        ``TripletMarginMiner(margin=0.2, type_of_triplets="semihard")``); refused with
        ``gradual=True``, where it would have no effect.
    margin : float or None, default=None
        ``m`` of the gradual target; None: the loss's ``margin`` (RobRank: 0.2). A loss without
        a numeric ``margin`` needs it given.
    ics_weight : float, default=0.5
        Weight of the ICS term (RobRank's); 0 turns it off.
    copies : {"shared", "per_triplet"}, default="shared"
        ``"shared"``: each batch input is perturbed at most once, its copy serving every role it
        has in every source triplet, so the attack runs on at most ``batch`` inputs and a step
        costs at most ``steps + 2`` forward passes of the batch. ``"per_triplet"`` (RobRank's):
        a copy per triplet and role, ``3 * n_triplets`` inputs attacked.
    stop_tol : float or None, default=1e-7
        Early stop of the inner PGD (RobRank's); None: always ``steps`` steps.
    max_triplets : int or None, default=None
        Use at most this many source triplets per batch (a random subset); None: all.

    Notes
    -----
    **State.** With ``gradual=True`` the defence keeps the previous batch's adversarial loss in
    the object (``prev_loss``, None before the first batch). :meth:`reset` forgets it;
    :func:`~robust_metric_learning.deep.train_embedding` resets it when a run starts afresh and
    saves it in its checkpoints, so a resumed run continues exactly. Calling ``step_loss``
    outside ``train_embedding`` updates it.

    Distances are the loss's ``distance`` (pytorch-metric-learning's default ``LpDistance`` is
    Euclidean between L2-normalised embeddings, RobRank's metric "N"), else Euclidean; ``m``
    is in the same units. RobRank's loss is the plain mean over triplets
    (``F.triplet_margin_loss``): pytorch-metric-learning's ``TripletMarginLoss`` averages over
    the non-zero terms unless given ``reducer=MeanReducer()``, which also changes ``prev_loss``
    and so the gradual target. The clean batch is forwarded once (in train mode; with gradient
    when ``ics_weight > 0``) for mining and the ICS term; RobRank forwards it once in eval mode
    and the anchors and positives again. Reports ``n_copies`` adversarial inputs per batch.
    """

    name = "hm"
    _parameter_constraints = {
        **Defense._parameter_constraints,
        "random_start": [bool],
        "gradual": [bool],
        "destination_miner": [None, IsCallable("a callable miner")],
        "margin": [None, Interval(Real, 0, None, closed="neither")],
        "ics_weight": [Interval(Real, 0, None)],
        "copies": [Options(*COPIES)],
        "stop_tol": [None, Interval(Real, 0, None)],
        "max_triplets": [None, Interval(Integral, 1, None)],
    }

    def __init__(self, *, eps: float = 0.1, steps: int = 10, norm: str = "linf", step_size: float | None = None,
                 random_start: bool = False, gradual: bool = True, destination_miner: Any = None,
                 margin: float | None = None, ics_weight: float = 0.5, copies: str = "shared",
                 stop_tol: float | None = 1e-7, max_triplets: int | None = None):
        super().__init__(eps=eps, steps=steps, norm=norm, step_size=step_size)
        self._validate(random_start=random_start, gradual=gradual, destination_miner=destination_miner,
                       margin=margin, ics_weight=ics_weight, copies=copies, stop_tol=stop_tol,
                       max_triplets=max_triplets)
        if gradual and destination_miner is not None:
            raise ValueError(f"HardnessManipulation: destination_miner has no effect with gradual=True (the target "
                             f"is the gradual schedule's); pass gradual=False to use it, got {destination_miner!r}")
        if not gradual and destination_miner is None:
            raise ValueError("HardnessManipulation: gradual=False needs a destination_miner (the destination "
                             "hardness comes from its triplets), got None")
        self.random_start, self.gradual, self.destination_miner = bool(random_start), bool(gradual), destination_miner
        self.margin = None if margin is None else float(margin)
        self.ics_weight, self.copies = float(ics_weight), copies
        self.stop_tol = None if stop_tol is None else float(stop_tol)
        self.max_triplets = None if max_triplets is None else int(max_triplets)
        self.prev_loss: float | None = None

    # ------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the previous batch's loss: the next gradual target is ``-m``."""
        self.prev_loss = None

    def state_dict(self) -> dict[str, Any]:
        return {"prev_loss": self.prev_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        prev = state.get("prev_loss")
        self.prev_loss = None if prev is None else float(prev)

    # ------------------------------------------------------------ targets
    def gradual_margin(self, loss_fn: Any) -> float:
        """``m``: the ``margin`` parameter, else the loss's numeric ``margin``."""
        if self.margin is not None:
            return self.margin
        m = getattr(loss_fn, "margin", None)
        if isinstance(m, bool) or not isinstance(m, Real) or not m > 0:
            raise ValueError(f"HardnessManipulation(gradual=True) needs the margin m of its target: the loss "
                             f"{type(loss_fn).__name__} has no positive numeric 'margin' (got {m!r}); pass margin=")
        return float(m)

    def gradual_target(self, loss_fn: Any) -> float:
        """The next batch's scalar destination hardness, ``-m * clip(prev_loss, 0, m) / m``."""
        m = self.gradual_margin(loss_fn)
        prev = m if self.prev_loss is None else self.prev_loss
        return -m * min(max(prev, 0.0), m) / m

    def _destination(self, clean: torch.Tensor, y: torch.Tensor, anchors: torch.Tensor,
                     dist: Any) -> torch.Tensor | None:
        """Per source triplet, the destination miner's hardness (see the class notes), or None."""
        da, dp, dn = mine_triplets(clean, y, self.destination_miner)
        if len(da) == 0:
            return None
        with torch.no_grad():
            d = distance_lookup(dist, clean, clean, len(da))
            h = d(da, dp) - d(da, dn)
            total = torch.zeros(len(clean), dtype=h.dtype, device=h.device).index_add(0, da, h)
            count = torch.zeros(len(clean), dtype=h.dtype, device=h.device).index_add(0, da, torch.ones_like(h))
            per_anchor = torch.where(count > 0, total / count.clamp_min(1), h.mean())
        return per_anchor[anchors]

    @staticmethod
    def et_objective(loss_fn: Any, slots: list[torch.Tensor], target: float | torch.Tensor,
                     n_copies: int) -> JointObjective:
        """The inner objective, to minimise: ``mean_t min(0, H_t - target)^2`` with
        ``H_t = d(e[a_t], e[p_t]) - d(e[a_t], e[n_t])`` over the copies' embeddings ``e``."""
        dist = loss_distance(loss_fn)
        sa, sp, sn = slots

        def et(e: torch.Tensor) -> torch.Tensor:
            d = distance_lookup(dist, e, e, len(sa))
            h = d(sa, sp) - d(sa, sn)
            return (h - target).clamp(max=0.0).square().mean()

        return JointObjective(et, n_copies)

    # ------------------------------------------------------------ the step
    def step_loss(self, model, x, y, loss_fn, miner, generator) -> tuple[torch.Tensor, int]:
        y = check_batch(x, y)
        with torch.set_grad_enabled(self.ics_weight > 0 and torch.is_grad_enabled()):
            emb = model(x)
        check_embeddings(emb, len(x))
        clean = emb.detach()
        triplets = select_triplets(mine_triplets(clean, y, miner), self.max_triplets, generator)
        if len(triplets[0]) == 0:
            return loss_fn(emb if emb.requires_grad else model(x), y, triplets), 0
        dist = loss_distance(loss_fn)
        target = (self.gradual_target(loss_fn) if self.gradual
                  else self._destination(clean, y, triplets[0], dist))
        member, slots = make_copies(triplets, (0, 1, 2), self.copies)
        x_adv, made = x[member], 0
        if target is not None:
            made = len(member)
            x_adv = self._perturb(model, x_adv, self.et_objective(loss_fn, slots, target, len(member)), generator,
                                  random_start=self.random_start, keep="last", stop_tol=self.stop_tol)
        adv = model(x_adv)
        loss = loss_fn(adv, y[member], tuple(slots))
        if self.gradual:
            self.prev_loss = float(loss.detach())
        if self.ics_weight > 0:
            ia, ip, T = triplets[0], triplets[1], len(triplets[0])
            ics = (distance_lookup(dist, emb, adv, T)(ia, slots[0])
                   - distance_lookup(dist, emb, emb, T)(ia, ip)).clamp(min=0.0).mean()
            loss = loss + self.ics_weight * ics
        return loss, made

    def __repr__(self) -> str:
        miner = self.destination_miner
        described = {} if miner is None else {"destination_miner": json.dumps(hyperparameters(miner), sort_keys=True)}
        return self._full_repr(("eps", "steps", "norm", "step_size", "random_start", "gradual", "destination_miner",
                                "margin", "ics_weight", "copies", "stop_tol", "max_triplets"), described)
