"""An l2 attack on the smoothed top-1 decision: the soundness check of its certificate.

:func:`smoothed_top1_certificate` claims that no l2 perturbation of norm below a query's radius
changes the smoothed decision (the label the query's nearest gallery item most often has under
noise on the query). :func:`attack_smoothed_top1` tries to change it anyway: projected gradient
descent on the perturbation, through a Monte Carlo estimate of a soft version of the decision
(expectation over the noise, fresh samples every step), within ``scale`` times each certified
radius. At scale 1 a sound certificate is never beaten; at larger scales the attack shows that it
can beat the decision where no certificate forbids it.

The soft decision of one noisy copy is the probability the softmax of ``-d^2 / T`` over the
gallery gives to the items of the certified label (``d``: distances from the noisy copy's
embedding to the gallery); ``T`` is set per query from the gap between the nearest other-label
and nearest same-label squared distances of the clean noisy copies, so that the softmax is
neither flat nor saturated. A perturbation counts as breaking the certificate only if a fresh
estimate at the perturbed point shows the certified label's probability significantly below 1/2
(its one-sided Clopper-Pearson upper bound at level ``alpha``), refuting what the certificate
claims within its radius (a probability above 1/2; with more than two labels the label can
still be the most frequent one). The majority flips are reported too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._parallel import eval_mode
from .._validation import (
    as_tensor,
    check_bool,
    check_eps,
    check_model_output,
    check_positive_int,
    check_query_rows,
    check_real,
    check_seed,
    real_tensor,
    retrieval_label_codes,
)
from .smoothing import _clean_gallery, _top1_labels
from .training import _check_module, _device_of, _inputs

__all__ = ["attack_smoothed_top1"]


def _noisy_sq_distances(model, x, gallery, own, sigma, m, gen, normalize) -> torch.Tensor:
    """Squared distances from the embeddings of ``m`` noisy copies ``x + sigma Z`` to the gallery,
    the query's own row at infinity (differentiable in ``x``)."""
    noise = torch.randn((m, *x.shape), generator=gen, dtype=x.dtype)
    emb = model((x + sigma * noise).to(_device_of(model)))
    check_model_output(emb, n_rows=m, what="noisy copies of an attacked query")
    emb = emb.double().cpu()
    if normalize:
        emb = torch.nn.functional.normalize(emb, dim=1)
    d2 = torch.cdist(emb, gallery).square()
    d2[:, own] = torch.inf
    return d2


def _soft_loss(model, x, delta, gallery, g_codes, own, label, sigma, m, T, gen, normalize):
    """Mean over ``m`` noisy copies of ``log P(certified label)`` under the soft decision."""
    logp = torch.log_softmax(-_noisy_sq_distances(model, x + delta, gallery, own, sigma, m, gen, normalize) / T,
                             dim=1)
    mine = torch.where(g_codes[None, :] == label, logp, torch.full_like(logp, -torch.inf))
    return torch.logsumexp(mine, dim=1).mean()


def _temperature(model, x, gallery, g_codes, own, label, sigma, m, gen, normalize) -> float:
    """A quarter of the median gap between the nearest other-label and nearest same-label squared
    distances of ``m`` clean noisy copies (at least 1e-6)."""
    with torch.no_grad():
        d2 = _noisy_sq_distances(model, x, gallery, own, sigma, m, gen, normalize)
        same = g_codes[None, :] == label
        gap = torch.where(same, torch.inf, d2).amin(1) - torch.where(same, d2, torch.inf).amin(1)
        gap = gap[torch.isfinite(gap)].abs()
    return max(float(gap.median()) / 4.0 if len(gap) else 1.0, 1e-6)


def attack_smoothed_top1(model: torch.nn.Module, X: Any, y: Any, certificate: dict, *, sigma: float | None = None,
                         scales: float | Sequence[float] = (1.0, 2.0, 4.0), steps: int = 100,
                         n_grad_samples: int = 64, n_check: int = 2000, alpha: float = 0.001,
                         max_queries: int | None = None, normalize: bool | None = None, random_state: int = 0,
                         batch_size: int = 1000) -> dict[str, Any]:
    """Attack the certified queries of a smoothed top-1 certificate within ``scale`` x their radii.

    Parameters
    ----------
    model, X, y, batch_size
        As given to :func:`~robust_metric_learning.deep.smoothed_top1_certificate`.
    certificate : dict
        Its result (``queries``: rows of ``X``; ``radius``: one finite radius >= 0 per query;
        ``decision``: one label code or -1 per query; ``sigma``, ``normalize``); the queries with a
        positive radius (certified and right) are attacked.
    sigma, normalize : default=None
        The certificate's (given values must agree with it).
    scales : float or sequence of float, default=(1.0, 2.0, 4.0)
        Distinct budgets as multiples of each query's radius; 1 is the soundness check.
    steps : int, default=100
        Gradient steps (step ``2.5 * budget / steps``, normalised l2 gradient).
    n_grad_samples : int, default=64
        Noisy copies per gradient step.
    n_check : int, default=2000
        Noisy copies for the decision at the perturbed point (and at the clean point).
    alpha : float, default=0.001
        Level of the test that refutes a certificate (the certified label's probability below 1/2).
    max_queries : int, default=None
        Attack only the first this many certified queries.
    random_state : int, default=0

    Returns
    -------
    dict
        ``n_attacked``, ``scales``, and per scale: ``broken`` (queries whose certificate is
        refuted at ``alpha``), ``flipped`` (whose majority label changed), ``p_clean`` and
        ``p_attacked`` (mean estimated probability of the certified label before and after; None
        when no query was attacked, ``n_attacked`` 0: no radius is positive).
    """
    from scipy.stats import beta

    needed = {"queries", "radius", "decision", "sigma", "normalize"}
    if not isinstance(certificate, dict) or not needed <= set(certificate):
        raise ValueError("certificate must be the dict smoothed_top1_certificate returns (with "
                         f"{sorted(needed)}), got {type(certificate).__name__}")
    for name, given in (("sigma", sigma), ("normalize", normalize)):
        if given is not None and given != certificate[name]:
            raise ValueError(f"{name}={given!r} differs from the certificate's {certificate[name]!r}: the attack "
                             "must target the smoothed decision that was certified")
    sigma = check_real(certificate["sigma"], name="sigma", low=0.0, low_open=True)
    normalize = check_bool(certificate["normalize"], name="normalize")
    scale_list = [float(s) for s in check_eps(scales, name="scales")]
    if len({f"{s:g}" for s in scale_list}) != len(scale_list) or min(scale_list) <= 0:
        raise ValueError(f"scales must be distinct positive numbers, got {scales!r}")
    steps = check_positive_int(steps, name="steps")
    m = check_positive_int(n_grad_samples, name="n_grad_samples")
    n_check = check_positive_int(n_check, name="n_check")
    a = check_real(alpha, name="alpha", low=0.0, low_open=True, high=1.0, high_open=True)
    if 0.5 ** n_check >= a:  # even 0 hits of n_check give an upper bound of at least 1/2
        raise ValueError(f"n_check={n_check} is too few for alpha={a:g}: no estimate could refute a certificate "
                         "(it needs 0.5 ** n_check < alpha)")
    seed = check_seed(random_state, name="random_state")
    batch_size = check_positive_int(batch_size, name="batch_size")
    _check_module(model)
    X = _inputs(model, X)
    codes = retrieval_label_codes(y, len(X))
    rows = check_query_rows(certificate["queries"], len(X), name="certificate['queries']").numpy()
    radius = real_tensor(certificate["radius"], name="certificate['radius']",
                         what=f"an array of one radius per query ({len(rows)})").double().numpy()
    if radius.shape != rows.shape:
        raise ValueError(f"certificate['radius'] must hold one radius per query ({len(rows)}), got shape "
                         f"{radius.shape}")
    bad = np.flatnonzero(~np.isfinite(radius) | (radius < 0))
    if len(bad):
        raise ValueError(f"certificate['radius'] must hold finite radii >= 0, got {float(radius[bad[0]])!r} for "
                         f"query row {int(rows[bad[0]])} ({len(bad)} of {len(rows)} radii)")
    n_classes = int(codes.max()) + 1
    what = (f"certificate['decision'] must be an integer array of shape ({len(rows)},) (one per query) of label "
            f"codes of y in [0, {n_classes}) or -1 (abstained)")
    try:
        decision = as_tensor(certificate["decision"]).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:  # strings, ragged lists
        raise ValueError(f"{what}: {exc}") from None
    if decision.dtype == torch.bool or decision.is_floating_point() or decision.is_complex() or \
            tuple(decision.shape) != rows.shape:
        raise ValueError(f"{what}, got {decision.dtype} of shape {tuple(decision.shape)}")
    decision = decision.to(torch.int64).numpy()
    if int(decision.min()) < -1 or int(decision.max()) >= n_classes:
        raise ValueError(f"{what}, got values in [{int(decision.min())}, {int(decision.max())}]")
    chosen = np.flatnonzero(radius > 0)
    wrong = chosen[decision[chosen] != codes.numpy()[rows[chosen]]]
    if len(wrong):
        raise ValueError(f"certificate does not fit y: {len(wrong)} queries with a positive radius have a decision "
                         f"other than their label code (first: query row {int(rows[wrong[0]])})")
    if max_queries is not None:
        chosen = chosen[:check_positive_int(max_queries, name="max_queries")]
    out = {s: {"broken": 0, "flipped": 0, "p_clean": [], "p_attacked": []} for s in scale_list}
    with eval_mode(model):
        gallery = _clean_gallery(model, X, batch_size, normalize)
        for k in chosen.tolist():
            i, c, r = int(rows[k]), int(decision[k]), float(radius[k])
            x = X[i]
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
            T = _temperature(model, x, gallery, codes, i, c, sigma, m, gen, normalize)
            with torch.no_grad():
                p0 = float(_top1_labels(model, x, gallery, codes, i, sigma, n_check, _clean_stream(seed, i),
                                        batch_size, normalize)[c])
            for j, s in enumerate(scale_list):  # each scale its own streams: results do not depend on the others
                gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, i, j + 1]).generate_state(1)[0]))
                rng = np.random.default_rng([seed, i, j + 1])
                budget = s * r
                delta = torch.zeros_like(x)
                for _ in range(steps):
                    delta.requires_grad_(True)
                    loss = _soft_loss(model, x, delta, gallery, codes, i, c, sigma, m, T, gen, normalize)
                    (grad,) = torch.autograd.grad(loss, delta)
                    with torch.no_grad():
                        delta = delta - 2.5 * budget / steps * grad / grad.norm().clamp_min(1e-12)
                        delta = delta * min(1.0, budget / max(float(delta.norm()), 1e-12))
                with torch.no_grad():
                    counts = _top1_labels(model, x + delta, gallery, codes, i, sigma, n_check, rng, batch_size,
                                          normalize)
                hits = int(counts[c])
                upper = float(beta.ppf(1.0 - a, hits + 1, n_check - hits)) if hits < n_check else 1.0
                out[s]["broken"] += int(upper < 0.5)
                out[s]["flipped"] += int(int(counts.argmax()) != c)
                out[s]["p_clean"].append(p0 / n_check)
                out[s]["p_attacked"].append(hits / n_check)
    return {"n_attacked": len(chosen), "scales": scale_list,
            **{f"scale_{s:g}": {"broken": v["broken"], "flipped": v["flipped"],
                                "p_clean": float(np.mean(v["p_clean"])) if v["p_clean"] else None,
                                "p_attacked": float(np.mean(v["p_attacked"])) if v["p_attacked"] else None}
               for s, v in out.items()}}


def _clean_stream(seed: int, row: int) -> np.random.Generator:
    """The noise of the clean check of query ``row``: a child of ``[seed, row]``, so it shares no
    draw with the certificate's stream (``[seed, row]``, equal to ``[seed, row, 0]``: seed
    sequences pad with zeros) nor with the scales' (``[seed, row, j + 1]``)."""
    return np.random.default_rng(np.random.SeedSequence([seed, row]).spawn(1)[0])
