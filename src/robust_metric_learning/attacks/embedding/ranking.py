"""Ranking attacks on retrieval (the suite of Zhou et al., "Adversarial ranking attack and
defense", ECCV 2020, and its sequels): objectives against a clean gallery, and how their
targets are chosen.

Every objective is to maximise (the attacker's loss negated); the perturbed input is the
query, except for the candidate attacks, where it is a gallery item (the candidate) and the
targets are queries. Distances are Euclidean between the embeddings (the model's output; for
the published protocol, L2-normalised), except :class:`TargetedMismatch`'s cosine.

=========================  ================================================================
``CandidateRank`` (CA+/-)  raise (+) or lower (-) the candidate in the rankings of its
                           target queries; metric: its rank percentile among the gallery
``QueryRank`` (QA+/-)      raise (+) or lower (-) the target candidates in the query's
                           ranking; metric: their mean rank percentile
``TargetedMismatch`` (TMA) the query's embedding towards a random gallery item's (cosine)
``LearningToMisrank`` (LTM) every other-class item nearer than the nearest same-class one
``TopOneMisrank`` (GTM)    the query towards the nearest item of another class than its
                           top-1 neighbour's
``TopOneTranslocation``    the query's top-1 neighbour pushed out of its top ranks
(GTT)
=========================  ================================================================

:func:`select_targets` picks the targets as the suite does: ``n`` uniformly random gallery
rows (with replacement) for CA+, QA+ and TMA; for CA- ``n`` drawn with replacement from the
query's 1 % nearest gallery rows and for QA- ``n`` without replacement from them (the row of
the item itself excluded); the top-1 neighbour for GTT; for GTM the nearest row whose label
differs from the top-1 neighbour's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..._validation import (
    as_tensor,
    check_index,
    check_positive_int,
    check_real,
    check_self_rows,
    label_codes,
    paired_label_codes,
)
from .objectives import Objective, _embeddings, _safe_sqrt, _sq_matrix

__all__ = ["RANKING_KINDS", "CandidateRank", "LearningToMisrank", "QueryRank", "TargetedMismatch",
           "TopOneMisrank", "TopOneTranslocation", "select_targets"]

#: target kinds of :func:`select_targets`
RANKING_KINDS = ("CA+", "CA-", "QA+", "QA-", "TMA", "GTM", "GTT")


#: distances closer than this many ulps of the embeddings' size are equal (a tie)
_TIE = 64


def _dist(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return _safe_sqrt(_sq_matrix(q, g))


def _rows(x: Any, *, n_gallery: int, name: str, ndim: int) -> torch.Tensor:
    t = as_tensor(x).cpu()
    if t.dtype not in (torch.int32, torch.int64) or t.ndim != ndim or t.shape[0] == 0 or (ndim == 2 and t.shape[1] == 0):
        shape = "(n,)" if ndim == 1 else "(n, k)"
        raise ValueError(f"{name} must be a non-empty integer array of shape {shape} of gallery rows, "
                         f"got {t.dtype} of shape {tuple(t.shape)}")
    t = t.long()
    if int(t.min()) < 0 or int(t.max()) >= n_gallery:
        raise ValueError(f"{name} must hold gallery rows in [0, {n_gallery}), got values in "
                         f"[{int(t.min())}, {int(t.max())}]")
    return t


class _GalleryObjective(Objective):
    """Context: the clean gallery and one row of targets per attacked input."""

    def __init__(self, gallery: Any, targets: Any, *, ndim: int):
        g = _embeddings(gallery, name="gallery")
        t = _rows(targets, n_gallery=g.shape[0], name="targets", ndim=ndim)
        self.n_samples, self.embedding_dim = int(t.shape[0]), int(g.shape[1])
        self.gallery_dtype = g.dtype  # its precision, whatever dtype the context is read in
        self._set_context(gallery=g, targets=t)

    def success(self, emb_adv: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Rank attacks have no success event; never stops an attack early."""
        return torch.zeros(len(index), dtype=torch.bool, device=emb_adv.device)

    def _measured(self, emb_adv: Any, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs of a metric (:meth:`rank`, :meth:`retained`, ``top1_correct``), checked:
        embeddings of the gallery's dimension, one context row per embedding."""
        emb = _embeddings(emb_adv, name="emb_adv")
        if emb.shape[1] != self.embedding_dim:
            raise ValueError(f"emb_adv must have the gallery's dimension {self.embedding_dim}, got {emb.shape[1]}")
        idx = check_index(index, n_rows=emb.shape[0], size=self.n_samples).to(emb.device)
        return emb, idx


class _RankObjective(_GalleryObjective):
    """A hinge on distance pairs ``(a, b)`` (:meth:`_terms`): score ``-mean relu(s (a - b))``,
    metric the fraction with ``a > b`` (a rank percentile); ``s`` the direction."""

    def __init__(self, gallery: Any, targets: Any, *, direction: int = 1):
        if direction not in (1, -1):
            raise ValueError(f"direction must be 1 or -1, got {direction!r}")
        super().__init__(gallery, targets, ndim=2)
        self.direction = direction

    def _terms(self, emb_adv: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _gap(self, emb: torch.Tensor, index: torch.Tensor, precision: torch.dtype | None = None) -> torch.Tensor:
        """``a - b`` per pair, exactly 0 (no gradient) where the two distances are equal to the
        embeddings' rounding: ``|a^2 - b^2|`` within ``64 eps`` of their size squared (squared
        distances carry a rounding error of that form whatever their size), ``eps`` that of the
        coarser of the gallery's and the embeddings' dtype (``precision``; default ``emb``'s). A
        candidate that has not moved ties with its own clean row, but the two embeddings come
        from different batches (and the gallery may be float32): without this, its hinge term's
        gradient and its rank would follow the rounding."""
        g = self._ctx("gallery", emb)
        a, b = self._terms(emb, index)
        gap = a - b
        if gap.numel() == 0:
            return gap
        eps = max(float(torch.finfo(precision or emb.dtype).eps), float(torch.finfo(self.gallery_dtype).eps))
        size = float(emb.detach().norm(dim=1).max()) + float(g.norm(dim=1).max())
        tie = (gap.detach() * (a + b).detach()).abs() <= _TIE * eps * size ** 2
        return torch.where(tie, torch.zeros_like(gap), gap)

    def __call__(self, emb_adv, index):
        return -torch.relu(self.direction * self._gap(emb_adv, index)).mean((1, 2))

    def rank(self, emb_adv: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The rank percentile of each input (CA) or of its targets (QA), in [0, 1]; equal
        distances (see :meth:`_gap`) are a tie, not a pair ranked below."""
        emb_adv, index = self._measured(emb_adv, index)
        with torch.no_grad():
            return (self._gap(emb_adv.double(), index, emb_adv.dtype) > 0).double().mean((1, 2))


class CandidateRank(_RankObjective):
    """CA+ / CA-: the perturbed input is a candidate, moved up (``direction=+1``) or down
    (``-1``) in the rankings of its target queries (clean gallery rows).

    Score of candidate c' with queries q_1..q_W: ``-mean_{x, w} relu(s (d(c', q_w) - d(X_x,
    q_w)))`` over every gallery row x (the candidate's own clean row included, as published), s
    the direction. :meth:`rank` is the metric: the fraction of (gallery row, query) pairs with
    ``d(X_x, q_w) < d(c', q_w)``, the candidate's rank percentile (the attacker of CA+ drives it
    to 0, of CA- to 1).

    Parameters
    ----------
    gallery : tensor of shape (n_gallery, dim)
    targets : array of int of shape (n, W)
        The queries of each candidate, gallery rows.
    direction : {+1, -1}
    """

    def _terms(self, emb_adv, index):
        g = self._ctx("gallery", emb_adv)
        q = g[self._ctx("targets", emb_adv)[index]]  # (B, W, dim)
        a = _safe_sqrt(((emb_adv[:, None, :] - q) ** 2).sum(-1))  # (B, W)
        b = torch.stack([_dist(q[:, w], g) for w in range(q.shape[1])], 1)  # (B, W, G)
        return a[:, :, None], b


class QueryRank(_RankObjective):
    """QA+ / QA-: the perturbed input is a query; its target candidates (gallery rows) are
    moved up (``direction=+1``) or down (``-1``) in its ranking.

    Score of q' with candidates c_1..c_M: ``-mean_{x, m} relu(s (d(q', c_m) - d(q', X_x)))``
    over every gallery row x (the query's own clean row included, as published).
    :meth:`rank`: the mean over m of the fraction of gallery rows nearer to q' than c_m (the
    candidates' rank percentile; the attacker of QA+ drives it to 0, of QA- to 1).
    """

    def _terms(self, emb_adv, index):
        g = self._ctx("gallery", emb_adv)
        d = _dist(emb_adv, g)  # (B, G)
        a = torch.gather(d, 1, self._ctx("targets", emb_adv)[index])  # (B, M)
        return a[:, :, None], d[:, None, :]


class TargetedMismatch(_GalleryObjective):
    """TMA: the query's embedding turned towards a target gallery item's; score and metric
    ``cos(q', X_t)`` (the attacker drives it to 1)."""

    def __init__(self, gallery: Any, targets: Any):
        super().__init__(gallery, targets, ndim=1)

    def __call__(self, emb_adv, index):
        t = self._ctx("gallery", emb_adv)[self._ctx("targets", emb_adv)[index]]
        return torch.nn.functional.cosine_similarity(emb_adv, t, dim=1)


class _LabelledObjective(_GalleryObjective):
    """Gallery, labels of gallery and inputs, and each input's own gallery row (excluded)."""

    def __init__(self, gallery: Any, gallery_labels: Any, labels: Any, targets: Any, *, self_index: Any,
                 ndim: int = 1):
        super().__init__(gallery, targets, ndim=ndim)
        n_gallery = self._context["gallery"].shape[0]
        q_codes, g_codes, _ = paired_label_codes(labels, gallery_labels, n_query=self.n_samples, n_gallery=n_gallery,
                                              query_name="labels", query_rows="the inputs")
        self._context.update(g_codes=g_codes, q_codes=q_codes,
                             self_rows=check_self_rows(self_index, n=self.n_samples, n_gallery=n_gallery))

    def _masked(self, emb_adv, index, *, dtype=None):
        """Distances to the gallery with each input's own row at +inf, and the same-label mask."""
        g = self._ctx("gallery", emb_adv, dtype=dtype)
        d = _dist(emb_adv.to(g.dtype), g)
        own = self._ctx("self_rows", emb_adv)[index]
        rows = torch.nonzero(own >= 0).flatten()
        d = d.index_put((rows, own[rows]), torch.tensor(torch.inf, dtype=d.dtype, device=d.device))
        same = self._ctx("g_codes", emb_adv)[None, :] == self._ctx("q_codes", emb_adv)[index][:, None]
        return d, same

    def top1_correct(self, emb_adv: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Whether the nearest gallery row (its own excluded; ties to the smaller row) has the
        input's label: the R@1 indicator."""
        emb_adv, index = self._measured(emb_adv, index)
        with torch.no_grad():
            d, same = self._masked(emb_adv, index, dtype=torch.float64)
            return torch.gather(same, 1, d.argmin(1, keepdim=True)).flatten()


class LearningToMisrank(_LabelledObjective):
    """LTM: score ``-relu(max_{other label} d(q', X_x) - min_{same label} d(q', X_x))``, the
    input's own gallery row excluded (every other-class item pulled nearer than the nearest
    same-class one). Metric: :meth:`top1_correct`.

    Parameters
    ----------
    gallery, gallery_labels
    labels : array of shape (n,)
        Labels of the attacked inputs.
    self_index : array of int of shape (n,) or None
        Each input's own gallery row (-1: none).
    """

    def __init__(self, gallery: Any, gallery_labels: Any, labels: Any, *, self_index: Any = None):
        # no targets: a placeholder row per input (the labels give the count)
        n = int(np.asarray(labels).reshape(-1).shape[0]) if np.ndim(labels) <= 1 else -1
        if n < 1:
            raise ValueError(f"labels must be a non-empty 1-D array (one per attacked input), got shape "
                             f"{np.shape(labels)}")
        super().__init__(gallery, gallery_labels, labels, np.zeros(n, dtype=np.int64), self_index=self_index)

    def __call__(self, emb_adv, index):
        d, same = self._masked(emb_adv, index)
        far_other = torch.where(same, -torch.inf, d).amax(1)
        near_same = torch.where(same & torch.isfinite(d), d, torch.inf).amin(1)
        gap = torch.where(torch.isfinite(near_same), far_other - near_same, far_other)
        return -torch.relu(gap)


class TopOneMisrank(_LabelledObjective):
    """GTM: the query pulled towards its target (the nearest clean gallery row of another
    label than its top-1 neighbour's, :func:`select_targets`); score ``-d(q', X_t)``. Metric:
    :meth:`top1_correct`."""

    def __call__(self, emb_adv, index):
        t = self._ctx("gallery", emb_adv)[self._ctx("targets", emb_adv)[index]]
        return -_safe_sqrt(((emb_adv - t) ** 2).sum(1))


class TopOneTranslocation(_LabelledObjective):
    """GTT: the query's clean top-1 neighbour (its target) pushed down its ranking; score
    ``-mean_x relu(d(q', X_x) - d(q', X_t))`` over the gallery rows other than its own.
    Metric: :meth:`retained`."""

    def __init__(self, gallery: Any, gallery_labels: Any, labels: Any, targets: Any, *, self_index: Any):
        super().__init__(gallery, gallery_labels, labels, targets, self_index=self_index)
        t, own = self._context["targets"], self._context["self_rows"]
        clash = torch.nonzero((own >= 0) & (t == own)).flatten()
        if len(clash):  # the own row is never ranked: such a target would count as lost at once
            i = int(clash[0])
            raise ValueError(f"targets must not be an input's own gallery row (self_index); input {i} has "
                             f"target {int(t[i])}, its own row ({len(clash)} such inputs)")

    def __call__(self, emb_adv, index):
        d, _ = self._masked(emb_adv, index)
        t = torch.gather(d, 1, self._ctx("targets", emb_adv)[index][:, None])
        keep = torch.isfinite(d)
        return -torch.where(keep, torch.relu(d - t), 0.0).sum(1) / keep.sum(1)

    def retained(self, emb_adv: torch.Tensor, index: torch.Tensor, *, k: int = 4) -> torch.Tensor:
        """Whether the target is still among the ``k`` nearest rows (own row excluded)."""
        k = check_positive_int(k, name="k")
        emb_adv, index = self._measured(emb_adv, index)
        with torch.no_grad():
            d, _ = self._masked(emb_adv, index, dtype=torch.float64)
            top = d.topk(min(k, d.shape[1]), dim=1, largest=False).indices
            return (top == self._ctx("targets", emb_adv)[index][:, None]).any(1)


def select_targets(kind: str, queries: torch.Tensor, gallery: torch.Tensor, gallery_labels: Any, *,
                   self_index: Any = None, n: int = 1, near_fraction: float = 0.01,
                   generator: torch.Generator | None = None, block: int = 1024) -> torch.Tensor:
    """The targets of one ranking attack for each query (or candidate), as the suite picks them.

    Parameters
    ----------
    kind : {"CA+", "CA-", "QA+", "QA-", "TMA", "GTM", "GTT"}
    queries : tensor of shape (n_queries, dim)
        Clean embeddings of the attacked inputs.
    gallery : tensor of shape (n_gallery, dim)
    gallery_labels : array of shape (n_gallery,)
    self_index : array of int of shape (n_queries,) or None
        Each input's own gallery row (-1: none); never a near target.
    n : int, default=1
        Targets per input (W for CA, M for QA; 1 for the others).
    near_fraction : float in (0, 1], default=0.01
        CA- and QA- draw from the ``max(1, int(near_fraction * n_gallery))`` nearest rows
        (the input's own row left out).
    generator : torch.Generator or None
    block : int, default=1024
        Inputs whose gallery distances are computed at once.

    Returns
    -------
    LongTensor of shape (n_queries, n) for CA and QA, (n_queries,) for the others.
    """
    if kind not in RANKING_KINDS:
        raise ValueError(f"kind must be one of {list(RANKING_KINDS)}, got {kind!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    near_fraction = check_real(near_fraction, name="near_fraction", low=0.0, low_open=True, high=1.0)
    block = check_positive_int(block, name="block")
    q, g = _embeddings(queries, name="queries").double(), _embeddings(gallery, name="gallery").double()
    n_q, n_g = q.shape[0], g.shape[0]
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} dimensions, the gallery {g.shape[1]}")
    if kind in ("CA+", "QA+", "TMA"):
        shape = (n_q,) if kind == "TMA" else (n_q, int(n))
        return torch.randint(n_g, shape, generator=generator)
    codes = label_codes(np.asarray(gallery_labels), n_samples=n_g, name="gallery_labels", rows="gallery")
    own = check_self_rows(self_index, n=n_q, n_gallery=n_g)
    near = max(1, int(near_fraction * n_g))
    k = min(near, n_g - int(bool((own >= 0).any())))
    if k < 1:
        raise ValueError(f"{kind} needs a gallery row other than the input's own; the gallery has {n_g}")
    if kind == "QA-" and n > k:
        raise ValueError(f"n must be at most the {k} near rows QA- draws from without replacement, got {n}")
    out = []
    for s in range(0, n_q, block):
        d = _dist(q[s:s + block], g)
        o = own[s:s + block]
        rows = torch.nonzero(o >= 0).flatten()
        d[rows, o[rows]] = torch.inf
        order = d.topk(k, dim=1, largest=False).indices
        if kind == "GTT":
            out.append(order[:, 0])
        elif kind == "GTM":
            other = codes[None, :].to(d.device) != codes.to(d.device)[order[:, 0]][:, None]
            lone = ~(other & torch.isfinite(d)).any(1)
            if bool(lone.any()):
                raise ValueError(f"GTM needs a gallery row of another label than each input's top-1 neighbour's; "
                                 f"input {s + int(torch.nonzero(lone)[0])} has none (gallery_labels hold "
                                 f"{int(codes.max()) + 1} label(s))")
            out.append(torch.where(other, d, torch.inf).argmin(1))
        elif kind == "CA-":
            out.append(torch.gather(order, 1, torch.randint(order.shape[1], (len(order), int(n)), generator=generator)))
        else:  # QA-
            perm = torch.argsort(torch.rand(order.shape, generator=generator, dtype=torch.float64), dim=1)[:, :int(n)]
            out.append(torch.gather(order, 1, perm))
    return torch.cat(out)
