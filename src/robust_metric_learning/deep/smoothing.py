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
most ``L ||delta||``, ``L = sqrt(2/pi) / sigma``. Its 1-NN stays in its class (p, the nearest
same-class item, or another one that overtakes it) while ``d(q', p) < d(q', n)`` for every
other-class n, which holds if
``d_hat(q, n) - d_hat(q, p) - 4 e > 2 L ||delta||``: the certified radius is
``(min_n d_hat(q, n) - min_p d_hat(q, p) - 4 e) / (2 L)`` where positive (0, not certified,
otherwise). Every distance has to move for this one, so it is loose: on MNIST it certified
nothing at 0.1, where the next certificate (of another object, the smoothed label decision)
certifies most queries.

:func:`smoothed_top1_certificate` certifies a **smoothed decision** instead: the gallery is
embedded once by the model, clean, and the decision for a query is the label its nearest gallery
item most often has under noise on the query; Cohen et al.'s certificate for smoothed
classifiers bounds the l2 radius within which that label cannot change.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .._parallel import eval_mode
from .._validation import (
    check_bool,
    check_eps,
    check_model_output,
    check_positive_int,
    check_real,
    check_seed,
    retrieval_label_codes,
)
from .training import _apply, _check_module, _device_of, _inputs

__all__ = ["SmoothedEmbedding", "monte_carlo_error", "smoothed_certified_retrieval", "smoothed_lipschitz",
           "smoothed_top1_certificate"]


def monte_carlo_error(n_samples: int, alpha: float) -> float:
    """A bound ``e`` with ``P(||mean - E f|| > e) <= alpha`` for the mean of ``n_samples`` i.i.d.
    vectors of norm at most 1: ``(1 + sqrt(2 ln(1 / alpha))) / sqrt(n_samples)``, computed in
    logarithms (any positive float ``alpha``, any int ``n_samples``).

    Examples
    --------
    >>> round(monte_carlo_error(10000, 0.001), 4)
    0.0472
    """
    n = check_positive_int(n_samples, name="n_samples")
    a = check_real(alpha, name="alpha", low=0.0, low_open=True, high=1.0, high_open=True)
    # -log(a), not log(1 / a): 1 / a overflows for a subnormal alpha; an int n beyond the float range
    # takes exp(-log(n) / 2)
    root = 1.0 / math.sqrt(n) if n < 2**1000 else math.exp(-0.5 * math.log(n))
    return (1.0 + math.sqrt(-2.0 * math.log(a))) * root


def smoothed_lipschitz(sigma: float) -> float:
    """``sqrt(2 / pi) / sigma``: the l2 Lipschitz constant of a smoothed embedding of norm <= 1."""
    s = check_real(sigma, name="sigma", low=0.0, low_open=True)
    return math.sqrt(2.0 / math.pi) / s


def _noisy_batches(x: torch.Tensor, sigma: float, n: int, rng: np.random.Generator,
                   batch_size: int) -> Iterator[torch.Tensor]:
    """``n`` noisy copies ``x + sigma Z`` of one input, ``batch_size`` at a time, drawn from ``rng``
    (on the CPU, in ``x``'s dtype)."""
    left = n
    while left:
        b = min(left, batch_size)
        yield x + sigma * torch.from_numpy(rng.standard_normal((b, *x.shape))).to(x.dtype)
        left -= b


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
        self.random_state = check_seed(random_state, name="random_state")
        self.normalize = check_bool(normalize, name="normalize")

    @property
    def lipschitz(self) -> float:
        """:func:`smoothed_lipschitz` of ``sigma``."""
        return smoothed_lipschitz(self.sigma)

    def _forward(self, x: torch.Tensor, *, first: bool = False) -> torch.Tensor:
        """The model's embeddings of the noisy copies ``x``, checked (``first``: the first batch, where a
        model that cannot take ``X``'s rows gets a clear error)."""
        out = _apply(self.model, x, self.model) if first else self.model(x)
        check_model_output(out, n_rows=x.shape[0])
        if self.normalize:
            return torch.nn.functional.normalize(out, dim=1)
        norms = out.detach().norm(dim=1)
        if not bool(torch.isfinite(norms).all()) or float(norms.max()) > 1 + 1e-6:
            raise ValueError(f"the smoothing certificate needs embeddings of norm at most 1; the model returned "
                             f"norms up to {float(norms.max()):.4g} (pass normalize=True)")
        # norms within 1e-6 above 1 are brought to 1 (to rounding), as the bounds assume
        return out / norms.clamp_min(1.0)[:, None].to(out.dtype)

    def estimate(self, X: Any) -> torch.Tensor:
        """The estimates of ``g`` at the rows of ``X`` (``X`` in [0, 1]; each estimate in the unit
        ball), float64, on the CPU."""
        X = _inputs(self.model, X)
        device = _device_of(self.model)
        out = []
        with eval_mode(self.model):
            with torch.no_grad():
                for i in range(len(X)):
                    rng = np.random.default_rng([self.random_state, i])  # one stream per row, split freely
                    total = None
                    for noisy in _noisy_batches(X[i], self.sigma, self.n_samples, rng, self.batch_size):
                        emb = self._forward(noisy.to(device), first=total is None and i == 0).double().sum(0)
                        total = emb if total is None else total + emb
                    out.append((total / self.n_samples).cpu())
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
        Labels of at least 2 classes.
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
    a = check_real(alpha, name="alpha", low=0.0, low_open=True, high=1.0, high_open=True)
    smoother = SmoothedEmbedding(model, sigma, n_samples=n_samples, batch_size=batch_size,
                                 random_state=random_state, normalize=normalize)
    X = _inputs(model, X)
    if len(X) < 2:
        raise ValueError(f"X must have at least 2 rows (each query needs a gallery), got {len(X)}")
    codes = retrieval_label_codes(y, len(X))
    e = monte_carlo_error(smoother.n_samples, a / len(X))  # one estimate per row, all at once
    if e >= 0.5:
        need = math.ceil(4 * (1 + math.sqrt(2 * (math.log(len(X)) - math.log(a)))) ** 2)
        raise ValueError(f"n_samples={smoother.n_samples} is too few for alpha={a:g} over {len(X)} estimates: the "
                         f"Monte Carlo error bound is {e:.3g} (>= 0.5, nothing can be certified); use more than "
                         f"{need} samples")
    G = smoother.estimate(X)
    d = torch.cdist(G, G)
    d.fill_diagonal_(torch.inf)
    same = codes[:, None] == codes[None, :]
    near_same = torch.where(same, d, torch.inf).amin(1)
    near_other = torch.where(same, torch.inf, d).amin(1)
    L = smoother.lipschitz
    radius = ((near_other - near_same - 4 * e) / (2 * L)).clamp_min(0.0)
    radius = torch.where(torch.isfinite(radius), radius, torch.zeros_like(radius))  # a class of one
    return {"radius": radius.numpy(), "radii": radii_list,
            "certified_recall_at_1": [float((radius > r).double().mean()) for r in radii_list],
            "recall_at_1": float((near_same < near_other).double().mean()), "error": e, "lipschitz": L,
            "sigma": smoother.sigma, "n_samples": smoother.n_samples, "alpha": a}


def _clean_gallery(model, X: torch.Tensor, batch_size: int, normalize: bool) -> torch.Tensor:
    """The gallery the smoothed top-1 decision compares against: the model's clean embeddings of
    ``X`` (float64, unit-normalised with ``normalize``)."""
    from .training import embed

    with torch.no_grad():
        gallery = embed(model, X, batch_size=batch_size).double()
    return torch.nn.functional.normalize(gallery, dim=1) if normalize else gallery


def _top1_labels(model, x: torch.Tensor, gallery: torch.Tensor, g_codes: torch.Tensor, own: int, sigma: float,
                 n: int, rng: np.random.Generator, batch_size: int, normalize: bool) -> torch.Tensor:
    """Counts, per label code, of the top-1 gallery item's label over ``n`` noisy copies of ``x``."""
    counts = torch.zeros(int(g_codes.max()) + 1, dtype=torch.long)
    device = _device_of(model)
    for noisy in _noisy_batches(x, sigma, n, rng, batch_size):
        emb = model(noisy.to(device))
        check_model_output(emb, n_rows=len(noisy), what="noisy copies of a query")
        emb = emb.double().cpu()
        if normalize:
            emb = torch.nn.functional.normalize(emb, dim=1)
        d = torch.cdist(emb, gallery)
        if own >= 0:
            d[:, own] = torch.inf
        counts += torch.bincount(g_codes[d.argmin(1)], minlength=len(counts))
    return counts


def smoothed_top1_certificate(model: torch.nn.Module, X: Any, y: Any, *, sigma: float,
                              radii: float | Sequence[float] = (0.1, 0.25, 0.5, 1.0), n_samples: int = 10000,
                              n_select: int = 100, alpha: float = 0.001, queries: Any = None,
                              normalize: bool = False, random_state: int = 0,
                              batch_size: int = 1000) -> dict[str, Any]:
    """Certified Recall@1 of the smoothed top-1 label: Cohen et al.'s certificate (ICML 2019) for
    the classifier "label of the query's nearest gallery item", smoothed over the query.

    The gallery (every row of ``X`` but the query's own) is embedded once by the model, clean;
    only the query is noised. The smoothed decision is the label that the nearest gallery item
    of ``f(x + sigma Z)`` most often has. Per query: ``n_select`` noisy copies pick the top label
    ``c``; ``n_samples`` fresh copies count it, and ``p`` is the one-sided Clopper-Pearson lower
    bound on its probability at level ``alpha``. If ``p > 1/2``, no l2 perturbation of norm below
    ``sigma * Phi^-1(p)`` changes the smoothed decision (Cohen et al., Theorem 1), with
    probability at least ``1 - alpha`` over the sampling; otherwise the query abstains (radius
    0). The guarantee is per query, as Cohen et al.'s: among N queries the expected number of
    wrong certificates is at most ``alpha N`` (not all at once with ``1 - alpha``, as for
    :func:`smoothed_certified_retrieval`; pass ``alpha / N`` for that). Certified at radius r:
    the smoothed decision is the query's label and its radius exceeds r. This is the Recall@1
    of the smoothed label decision (the label of the top-1 item, voted over noise), not of a
    retrieval by smoothed embeddings.

    Parameters
    ----------
    model : torch.nn.Module
    X : array or tensor of shape (n, ...), values in [0, 1]
    y : array of shape (n,)
        Labels of at least 2 classes.
    sigma : float
    radii : float or sequence of float, default=(0.1, 0.25, 0.5, 1.0)
    n_samples, n_select : int
        Noisy copies per query for the bound and for choosing the label.
    alpha : float, default=0.001
    queries : array of int, default=None (every row)
    normalize : bool, default=False
        L2-normalise the model's output (the nearest item is the same either way for a model
        whose output is unit-norm).
    random_state, batch_size
        As for :class:`SmoothedEmbedding`.

    Returns
    -------
    dict
        ``queries`` (the rows certified), ``radius`` (per query; 0 where it abstains or the
        decision is wrong), ``decision``
        (label code of the smoothed decision, -1 where it abstains), ``certified_recall_at_1``
        (per radius), ``recall_at_1`` (the smoothed decision's with abstentions wrong: the
        certified value at radius 0, so a lower-confidence figure), ``radii``,
        ``sigma``, ``normalize``, ``n_samples``, ``alpha``.
    """
    from scipy.stats import beta, norm

    from .._validation import check_query_rows

    radii_list = [float(r) for r in check_eps(radii, name="radii")]
    sigma = check_real(sigma, name="sigma", low=0.0, low_open=True)
    n = check_positive_int(n_samples, name="n_samples")
    n0 = check_positive_int(n_select, name="n_select")
    a = check_real(alpha, name="alpha", low=0.0, low_open=True, high=1.0, high_open=True)
    if a ** (1.0 / n) <= 0.5:  # the bound after n hits of n
        raise ValueError(f"n_samples={n} is too few for alpha={a:g}: even {n} hits of {n} give a lower bound "
                         f"of at most 1/2, so no query can be certified")
    batch_size = check_positive_int(batch_size, name="batch_size")
    seed = check_seed(random_state, name="random_state")
    normalize = check_bool(normalize, name="normalize")
    _check_module(model)
    X = _inputs(model, X)
    if len(X) < 2:
        raise ValueError(f"X must have at least 2 rows (each query needs a gallery), got {len(X)}")
    codes = retrieval_label_codes(y, len(X))
    rows = check_query_rows(queries, len(X))
    with eval_mode(model):
        gallery = _clean_gallery(model, X, batch_size, normalize)
        with torch.no_grad():
            radius, decision = np.zeros(len(rows)), np.full(len(rows), -1)
            for k, i in enumerate(rows.tolist()):
                rng = np.random.default_rng([seed, i])
                sel = _top1_labels(model, X[i], gallery, codes, i, sigma, n0, rng, batch_size, normalize)
                c = int(sel.argmax())
                hits = int(_top1_labels(model, X[i], gallery, codes, i, sigma, n, rng, batch_size, normalize)[c])
                p_low = float(beta.ppf(a, hits, n - hits + 1)) if hits > 0 else 0.0
                if p_low > 0.5:
                    decision[k] = c
                    if c == int(codes[i]):
                        radius[k] = sigma * float(norm.ppf(p_low))
    right = decision == codes[rows].numpy()
    return {"queries": rows.numpy(), "radius": radius, "decision": decision, "radii": radii_list,
            "certified_recall_at_1": [float(((radius > r) & right).mean()) for r in radii_list],
            "recall_at_1": float(right.mean()), "sigma": sigma, "normalize": normalize, "n_samples": n, "alpha": a}
