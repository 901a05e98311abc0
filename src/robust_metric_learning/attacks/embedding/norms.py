"""Threat-model norms for attacks on embedding models.

A norm object holds every norm-specific step of a gradient attack as a hook, so the attacks
themselves never branch on ``p``:

=================================  ===================================================
``random_start(shape, eps, gen)``  a point drawn uniformly in the ball of radius eps
``random_direction(shape, gen)``   a point drawn uniformly on the unit sphere
``normalize(grad)``                the steepest-ascent direction of unit norm
``project(delta, eps)``            the nearest point of the ball (per sample)
``measure(delta)``                 the norm of each sample's perturbation
=================================  ===================================================

Two steps built from them (a norm may override them, e.g. with an exact projection onto the
intersection of the ball and the box): ``feasible(x_adv, x, eps)``, back into the ball around
``x`` and the box [0, 1]; ``ascent(x_adv, x, grad, step, eps)``, one projected steepest-ascent
step of length ``step`` (PGD's and APGD's step).

The first axis is the sample axis; every other axis is flattened into one vector per sample.
``eps`` is a number or a tensor with one value per sample.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["Norm", "LinfNorm", "L2Norm", "NORMS", "get_norm"]


def _per_sample(eps: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``eps`` as a tensor broadcasting over ``like`` (shape (n, 1, 1, ...))."""
    e = torch.as_tensor(eps, dtype=like.dtype, device=like.device)
    if e.ndim == 0:
        return e
    if e.ndim != 1 or e.shape[0] != like.shape[0]:
        raise ValueError(f"eps must be a number or have one value per sample ({like.shape[0]}), "
                         f"got shape {tuple(e.shape)}")
    return e.reshape((-1,) + (1,) * (like.ndim - 1))


def _draw(fn, shape: Sequence[int], generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    """Draw on the generator's device (CPU when None) and move: same numbers on every device."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    out = fn(tuple(shape), generator=generator, device=gen_device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    return out.to(device=device, dtype=dtype)


class Norm:
    """Base of the threat-model norms: subclasses define the five hooks."""

    name: str = "norm"

    def random_start(self, shape: Sequence[int], eps: float | torch.Tensor, generator: torch.Generator | None = None,
                     *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A perturbation of ``shape`` drawn uniformly in the ball of radius ``eps`` (per sample)."""
        raise NotImplementedError

    def random_direction(self, shape: Sequence[int], generator: torch.Generator | None = None, *,
                         device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A perturbation of ``shape`` drawn uniformly on the unit sphere of the norm (per sample)."""
        raise NotImplementedError

    def normalize(self, grad: torch.Tensor) -> torch.Tensor:
        """The direction ``v`` with ``measure(v) <= 1`` maximising ``<grad, v>`` (0 where grad is 0)."""
        raise NotImplementedError

    def project(self, delta: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        """The point of the ball of radius ``eps`` nearest to ``delta`` (per sample)."""
        raise NotImplementedError

    def measure(self, delta: torch.Tensor) -> torch.Tensor:
        """The norm of each sample's perturbation, shape (n,)."""
        raise NotImplementedError

    def diameter(self, n_features: int) -> float:
        """The largest distance between two points of the box [0, 1]^n_features: a ball of this
        radius around any point of the box holds the whole box."""
        raise NotImplementedError

    def feasible(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        """``x_adv`` moved into the ball of radius ``eps`` around ``x`` (:meth:`project`), then
        clipped to the box [0, 1] (clipping only shrinks each coordinate's change)."""
        return (x + self.project(x_adv - x, eps)).clamp_(0.0, 1.0)

    def ascent(self, x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, step: float | torch.Tensor,
               eps: float | torch.Tensor) -> torch.Tensor:
        """One step of length ``step`` (per sample, units of the norm) from ``x_adv`` along
        :meth:`normalize` ``(grad)``, made :meth:`feasible`."""
        delta = self.project(x_adv - x + _per_sample(step, x_adv) * self.normalize(grad), eps)
        return (x + delta).clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


class LinfNorm(Norm):
    """The l-infinity norm: ``max_i |delta_i|`` per sample; steps follow the gradient's sign."""

    name = "linf"

    def random_start(self, shape, eps, generator=None, *, device=None, dtype=torch.float32):
        u = _draw(torch.rand, shape, generator, device, dtype)
        return (2 * u - 1) * _per_sample(eps, u)

    def random_direction(self, shape, generator=None, *, device=None, dtype=torch.float32):
        u = _draw(torch.rand, shape, generator, device, dtype)
        return torch.where(u < 0.5, -1.0, 1.0).to(dtype)

    def normalize(self, grad):
        return grad.sign()

    def project(self, delta, eps):
        e = _per_sample(eps, delta)
        return torch.maximum(torch.minimum(delta, e), -e)

    def measure(self, delta):
        return delta.reshape(delta.shape[0], -1).abs().amax(dim=1)

    def diameter(self, n_features):
        return 1.0


class L2Norm(Norm):
    """The l2 (Euclidean) norm of each sample's flattened perturbation."""

    name = "l2"

    def random_start(self, shape, eps, generator=None, *, device=None, dtype=torch.float32):
        direction = self.random_direction(shape, generator, device=device, dtype=dtype)
        n = direction[0].numel() if direction.shape[0] else 1
        # radius with density proportional to r^(n-1): uniform in the ball
        r = _draw(torch.rand, (direction.shape[0],), generator, device, dtype) ** (1.0 / n)
        r = r.reshape((-1,) + (1,) * (direction.ndim - 1))
        return direction * r * _per_sample(eps, direction)

    def random_direction(self, shape, generator=None, *, device=None, dtype=torch.float32):
        g = _draw(torch.randn, shape, generator, device, dtype)
        return self.normalize(g)

    def normalize(self, grad):
        norms = self.measure(grad).reshape((-1,) + (1,) * (grad.ndim - 1))
        return torch.where(norms > 0, grad / norms.clamp_min(torch.finfo(grad.dtype).tiny), 0.0)

    def project(self, delta, eps):
        e = _per_sample(eps, delta)
        norms = self.measure(delta).reshape((-1,) + (1,) * (delta.ndim - 1))
        factor = torch.where(norms > e, e / norms.clamp_min(torch.finfo(delta.dtype).tiny), 1.0)
        return delta * factor

    def measure(self, delta):
        return torch.linalg.vector_norm(delta.reshape(delta.shape[0], -1), ord=2, dim=1)

    def diameter(self, n_features):
        return math.sqrt(n_features)


#: Norm names accepted by :func:`get_norm` (and every ``norm=`` parameter).
NORMS: dict[str, type[Norm]] = {"linf": LinfNorm, "l2": L2Norm}


def get_norm(norm: str | Norm) -> Norm:
    """A norm object from its name (``"linf"`` or ``"l2"``); a norm object is returned as it is.

    Examples
    --------
    >>> get_norm("l2").measure(torch.tensor([[3.0, 4.0]]))
    tensor([5.])
    """
    if isinstance(norm, Norm):
        return norm
    if isinstance(norm, str) and norm in NORMS:
        return NORMS[norm]()
    raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))} or a Norm object, got {norm!r}")
