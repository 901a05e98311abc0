"""Randomized smoothing of embedding models, and the retrieval it certifies (l2 threat model).

The smoothed embedding of a model ``f`` whose embeddings have norm at most 1 is
``g(x) = E f(x + sigma Z)``, ``Z ~ N(0, I)``. Two facts make a certificate:

1. **g is Lipschitz with constant sqrt(2/pi) / sigma** (l2 to l2), whatever the network. For a
   unit vector u, ``h = u . f`` takes values in [-1, 1] and Stein's lemma gives ``grad (u . g)(x)
   = E[h(x + sigma Z) Z] / sigma``; for a unit v, ``|v . grad| <= E|v . Z| / sigma = sqrt(2 /
   pi) / sigma``. So ``|u . (g(x + delta) - g(x))| <= sqrt(2/pi) ||delta|| / sigma`` for every
   unit u, which bounds ``||g(x + delta) - g(x)||``. The bound is attained by a two-point model
   (``f = +-u`` on either side of a hyperplane).
2. **The Monte Carlo mean of n samples is within e of g(x)** with probability at least
   ``1 - a``, ``e = (1 + sqrt(2 ln(1 / a))) / sqrt(n)`` (:func:`monte_carlo_error`): the norm of
   the mean's deviation has expectation at most ``sqrt(E||f||^2 / n) <= 1 / sqrt(n)`` and
   changes by at most ``2 / n`` when one sample changes, so McDiarmid's inequality bounds its
   excess over the expectation by ``sqrt(2 ln(1 / a) / n)``.

:func:`smoothed_certified_retrieval` certifies the **smoothed retrieval**: queries and gallery
both embedded by g (exact expectations), each query's 1-NN among the other gallery items. With
estimates within e of every g used (all of them at once with probability at least ``1 - alpha``,
by a union bound over the estimates), the distances between true smoothed embeddings are within
``2 e`` of the estimated ones; a query perturbed by ``delta`` moves its smoothed embedding by at
most ``L ||delta||``, ``L = sqrt(2/pi) / sigma``. Its 1-NN stays the nearest same-class item p
while ``d(q', p) < d(q', n)`` for every other-class n, which holds if
``d_hat(q, n) - d_hat(q, p) - 4 e > 2 L ||delta||``: the certified radius is
``(min_n d_hat(q, n) - min_p d_hat(q, p) - 4 e) / (2 L)`` where positive (0, not certified,
otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._validation import check_eps, check_labels, check_nonnegative_int, check_positive_int, check_real
from .training import _check_module, _inputs

__all__ = ["SmoothedEmbedding", "monte_carlo_error", "smoothed_certified_retrieval", "smoothed_lipschitz"]


def monte_carlo_error(n_samples: int, alpha: float) -> float:
    """A bound ``e`` with ``P(||mean - E f|| > e) <= alpha`` for the mean of ``n_samples`` i.i.d.
    vectors of norm at most 1: ``(1 + sqrt(2 ln(1 / alpha))) / sqrt(n_samples)``.

    Examples
    --------
    >>> round(monte_carlo_error(10000, 0.001), 4)
    0.0472
    """
    n = check_positive_int(n_samples, name="n_samples")
    a = check_real(alpha, name="alpha", low=0.0, low_open=True)
    if not a < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return (1.0 + math.sqrt(2.0 * math.log(1.0 / a))) / math.sqrt(n)


def smoothed_lipschitz(sigma: float) -> float:
    """``sqrt(2 / pi) / sigma``: the l2 Lipschitz constant of a smoothed embedding of norm <= 1."""
    s = check_real(sigma, name="sigma", low=0.0, low_open=True)
    return math.sqrt(2.0 / math.pi) / s


class SmoothedEmbedding:
    """Monte Carlo estimates of ``g(x) = E f(x + sigma Z)``.

    Parameters
    ----------
    model : torch.nn.Module
        Embeddings of norm at most 1 (checked on every sample), or any with ``normalize``.
    sigma : float
        Noise level (> 0), in the units of the inputs.
    n_samples : int, default=10000
    batch_size : int, default=1000
        Noisy copies forwarded at once.
    random_state : int, default=0
        Row ``i`` of an input set draws its noise from ``numpy.random.default_rng([random_state,
        i])``: the same estimate whatever the batching or the device.
    normalize : bool, default=False
        L2-normalise the model's output before averaging.
    """

    def __init__(self, model: torch.nn.Module, sigma: float, *, n_samples: int = 10000, batch_size: int = 1000,
                 random_state: int = 0, normalize: bool = False):
        _check_module(model)
        self.model = model
        self.sigma = check_real(sigma, name="sigma", low=0.0, low_open=True)
        self.n_samples = check_positive_int(n_samples, name="n_samples")
        self.batch_size = check_positive_int(batch_size, name="batch_size")
        self.random_state = check_nonnegative_int(random_state, name="random_state")
        if not isinstance(normalize, (bool, np.bool_)):
            raise ValueError(f"normalize must be True or False, got {normalize!r}")
        self.normalize = bool(normalize)

    @property
    def lipschitz(self) -> float:
        """:func:`smoothed_lipschitz` of ``sigma``."""
        return smoothed_lipschitz(self.sigma)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"model must return a 2-D tensor of embeddings with one row per input, got {got}")
        if self.normalize:
            return torch.nn.functional.normalize(out, dim=1)
        norms = out.detach().norm(dim=1)
        if not bool(torch.isfinite(norms).all()) or float(norms.max()) > 1 + 1e-6:
            raise ValueError(f"the smoothing certificate needs embeddings of norm at most 1; the model returned "
                             f"norms up to {float(norms.max()):.4g} (pass normalize=True)")
        return out

    def estimate(self, X: Any) -> torch.Tensor:
        """The estimates of ``g`` at the rows of ``X`` (values in [0, 1]), float64, on the CPU."""
        X = _inputs(self.model, X)
        p = next(self.model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        was = self.model.training
        self.model.eval()
        out = []
        try:
            with torch.no_grad():
                for i in range(len(X)):
                    rng = np.random.default_rng([self.random_state, i])  # one stream per row, split freely
                    total, left = None, self.n_samples
                    while left:
                        b = min(left, self.batch_size)
                        noise = torch.from_numpy(rng.standard_normal((b, *X.shape[1:]))).to(X.dtype)
                        emb = self._forward((X[i] + self.sigma * noise).to(device)).double().sum(0)
                        total = emb if total is None else total + emb
                        left -= b
                    out.append((total / self.n_samples).cpu())
        finally:
            self.model.train(was)
        return torch.stack(out)


def smoothed_certified_retrieval(model: torch.nn.Module, X: Any, y: Any, *, sigma: float,
                                 radii: float | Sequence[float] = (0.1, 0.25, 0.5, 1.0), n_samples: int = 10000,
                                 alpha: float = 0.001, normalize: bool = True, random_state: int = 0,
                                 batch_size: int = 1000) -> dict[str, Any]:
    """Certified Recall@1 of the smoothed retrieval (module docstring), leave-one-out on ``X``.

    Parameters
    ----------
    model : torch.nn.Module
    X : array or tensor of shape (n, ...), values in [0, 1], n >= 2
        Queries and gallery.
    y : array of shape (n,)
    sigma : float
        Noise level (> 0).
    radii : float or sequence of float, default=(0.1, 0.25, 0.5, 1.0)
        l2 input radii at which certified R@1 is reported.
    n_samples : int, default=10000
        Noise samples per estimate.
    alpha : float, default=0.001
        Every certificate holds together with probability at least ``1 - alpha`` over the noise.
    normalize, random_state, batch_size
        As for :class:`SmoothedEmbedding`.

    Returns
    -------
    dict
        ``radius`` (per query, l2; 0 where not certified), ``certified_recall_at_1`` (per
        radius: the fraction of queries whose radius exceeds it), ``recall_at_1`` (of the
        estimated smoothed retrieval, not certified), ``radii``, ``error`` (e), ``lipschitz``,
        ``sigma``, ``n_samples``, ``alpha``.
    """
    radii_list = [float(r) for r in check_eps(radii, name="radii")]
    a = check_real(alpha, name="alpha", low=0.0, low_open=True)
    if not a < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    smoother = SmoothedEmbedding(model, sigma, n_samples=n_samples, batch_size=batch_size,
                                 random_state=random_state, normalize=normalize)
    X = _inputs(model, X)
    labels = check_labels(y, n_samples=len(X), name="y")
    if len(X) < 2:
        raise ValueError(f"X must have at least 2 rows (each query needs a gallery), got {len(X)}")
    e = monte_carlo_error(smoother.n_samples, a / len(X))  # one estimate per row, all at once
    if e >= 0.5:
        need = math.ceil(4 * (1 + math.sqrt(2 * math.log(len(X) / a))) ** 2)
        raise ValueError(f"n_samples={smoother.n_samples} is too few for alpha={a:g} over {len(X)} estimates: the "
                         f"Monte Carlo error bound is {e:.3g} (>= 0.5, nothing can be certified); use more than "
                         f"{need} samples")
    G = smoother.estimate(X)
    codes = torch.as_tensor(np.unique(labels, return_inverse=True)[1].reshape(-1))
    d = torch.cdist(G, G)
    d.fill_diagonal_(torch.inf)
    same = codes[:, None] == codes[None, :]
    near_same = torch.where(same, d, torch.inf).amin(1)
    near_other = torch.where(same, torch.inf, d).amin(1)
    L = smoother.lipschitz
    radius = ((near_other - near_same - 4 * e) / (2 * L)).clamp_min(0.0)
    radius = torch.where(torch.isfinite(radius), radius, torch.zeros_like(radius))  # a class of one, or one class
    return {"radius": radius.numpy(), "radii": radii_list,
            "certified_recall_at_1": [float((radius > r).double().mean()) for r in radii_list],
            "recall_at_1": float((near_same < near_other).double().mean()), "error": e, "lipschitz": L,
            "sigma": smoother.sigma, "n_samples": smoother.n_samples, "alpha": a}
