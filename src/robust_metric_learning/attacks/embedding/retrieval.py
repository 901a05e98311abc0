"""Retrieval objectives: attacked queries against a clean gallery.

- :class:`RetrievalObjective`: the margin, distance to the nearest same-class gallery item minus
  distance to the nearest other-class one; success = the 1-NN has another label.
- :class:`RetrievalCrossEntropy`: a cross-entropy over the gallery, the same success.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..._validation import check_labels, check_self_rows, paired_label_codes
from .objectives import Objective, _Distance, _embeddings

__all__ = ["RetrievalCrossEntropy", "RetrievalObjective"]


class RetrievalObjective(Objective):
    """Retrieval attack on queries against a clean gallery.

    Score of query i at its perturbed embedding q': ``d(q', nearest same-class gallery item)
    - d(q', nearest other-class gallery item)``, both minima taken at q' (so the nearest items
    may change during the attack). The gallery row that is the query itself
    (``query_in_gallery[i]``) is always excluded: a query is never its own neighbour. A query
    with no other same-class item scores ``-d(q', nearest other-class item)``.

    Success: the 1-NN of q' in the gallery (itself excluded; ties go to the smaller gallery
    row) has another label, recomputed in float64.

    Parameters
    ----------
    gallery : tensor of shape (n_gallery, dim)
        Clean gallery embeddings (detached).
    gallery_labels : array-like of shape (n_gallery,)
    query_labels : array-like of shape (n_queries,)
        Labels of the inputs the attack will be called on (one per input).
    query_in_gallery : array-like of int of shape (n_queries,), default=None
        Gallery row of each query itself, -1 where it is not in the gallery; None: no query
        is in the gallery.
    distance : str or pytorch-metric-learning distance, default="euclidean"

    Examples
    --------
    >>> g = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    >>> obj = RetrievalObjective(g, [0, 0, 1], [0], query_in_gallery=[0])
    >>> obj(torch.tensor([[0.5, 0.0]]), torch.tensor([0]))   # 0.5 - 2.5
    tensor([-2.])
    """

    def __init__(self, gallery: Any, gallery_labels: Any, query_labels: Any, *,
                 query_in_gallery: Any = None, distance: Any = "euclidean"):
        g = _embeddings(gallery, name="gallery")
        n_gallery = g.shape[0]
        ql = check_labels(query_labels, n_samples=np.shape(query_labels)[0] if np.ndim(query_labels) else 0,
                          name="query_labels", rows="query_labels")
        if len(ql) == 0:
            raise ValueError("query_labels must be a non-empty 1-D array of labels, got shape (0,)")
        n_queries = len(ql)
        q_codes, g_codes, classes = paired_label_codes(ql, gallery_labels, n_query=n_queries, n_gallery=n_gallery)
        q_codes, g_codes = q_codes.numpy(), g_codes.numpy()
        qig = check_self_rows(query_in_gallery, n=n_queries, n_gallery=n_gallery, name="query_in_gallery").numpy()
        inside = qig >= 0
        wrong = inside & (g_codes[np.where(inside, qig, 0)] != q_codes)
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            raise ValueError(f"query_in_gallery[{i}] = {qig[i]} points at a gallery item labelled "
                             f"{classes[g_codes[qig[i]]].tolist()!r}, but query {i} is labelled "
                             f"{classes[q_codes[i]].tolist()!r}")
        counts = np.bincount(g_codes, minlength=classes.size)
        no_other = counts.sum() - counts[q_codes] == 0
        if no_other.any():
            i = int(np.flatnonzero(no_other)[0])
            raise ValueError(f"the gallery has no item of another class than query {i} (label "
                             f"{ql[i].tolist()!r}); a retrieval attack needs at least two classes in the gallery")
        self.distance = distance
        self._dist = _Distance(distance)
        self.n_samples, self.embedding_dim = n_queries, g.shape[1]
        self.n_gallery = n_gallery
        self.classes_ = classes
        self._set_context(gallery=g, g_codes=torch.from_numpy(g_codes), q_codes=torch.from_numpy(q_codes),
                          qig=torch.from_numpy(qig))

    def _masks(self, like: torch.Tensor, index: torch.Tensor):
        q = self._ctx("q_codes", like)[index]
        same = q[:, None] == self._ctx("g_codes", like)[None, :]
        own = self._ctx("qig", like)[index]
        self_mask = torch.zeros_like(same)
        rows = torch.nonzero(own >= 0).squeeze(1)
        self_mask[rows, own[rows]] = True
        return same, self_mask

    def __call__(self, emb_adv, index):
        D = self._dist.matrix(emb_adv, self._ctx("gallery", emb_adv))
        same, self_mask = self._masks(emb_adv, index)
        inf = torch.tensor(float("inf"), dtype=D.dtype, device=D.device)
        d_same = torch.where(same & ~self_mask, D, inf).amin(1)
        d_other = torch.where(~same & ~self_mask, D, inf).amin(1)
        has_same = torch.isfinite(d_same)
        return torch.where(has_same, d_same, 0.0) - d_other

    def gallery_scale(self) -> float:
        """The median distance from a gallery item to its nearest other gallery item (1.0 where
        that is 0 or the gallery has one item): the scale of the margin, computed once."""
        scale = self.__dict__.get("_gallery_scale")
        if scale is None:
            g = self._context["gallery"]
            nearest = []
            for s in range(0, len(g), 1024):
                D = self._dist.matrix(g[s:s + 1024], g)
                D[torch.arange(len(D)), torch.arange(s, s + len(D))] = float("inf")
                nearest.append(D.amin(1))
            scale = float(torch.cat(nearest).median()) if len(g) > 1 else 1.0
            if not (np.isfinite(scale) and scale > 0):  # duplicated gallery items
                scale = 1.0
            self._gallery_scale = scale
        return scale

    def nearest(self, emb_adv: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Gallery row of the 1-NN of each perturbed query (itself excluded; float64; ties: smaller row)."""
        with torch.no_grad():
            e = emb_adv.detach().to(torch.float64)
            D = self._dist.matrix(e, self._ctx("gallery", e))
            _, self_mask = self._masks(e, index)
            D = D.masked_fill(self_mask, float("inf"))
            return D.argmin(1)

    def success(self, emb_adv, index):
        nn = self.nearest(emb_adv, index)
        return self._ctx("g_codes", emb_adv)[nn] != self._ctx("q_codes", emb_adv)[index]


class RetrievalCrossEntropy(RetrievalObjective):
    """Retrieval attack with a cross-entropy loss: the gallery items are the logits, summed per label.

    Score of query i at q': ``-log P(label of i)`` where ``P(c)`` is the softmax mass of the
    logits ``-d(q', g_j) / T`` over the gallery items j of label c (the query itself excluded),
    i.e. ``logsumexp_j(-d_j / T) - logsumexp_{j same class}(-d_j / T)``. Unlike the margin of
    :class:`RetrievalObjective` every gallery item pulls or pushes. Success is the same: the
    1-NN has another label.

    Parameters
    ----------
    gallery, gallery_labels, query_labels, query_in_gallery, distance
        As for :class:`RetrievalObjective`.
    temperature : float, default=0.1
        ``T`` relative to the gallery's scale: ``temperature_ = temperature * s`` with ``s``
        the median distance from a gallery item to its nearest other gallery item (scale-free;
        a small T makes the loss close to a soft version of the margin, 0.1 measured best on
        MNIST retrieval).

    Attributes
    ----------
    temperature_ : float
        ``T`` in units of the distance.

    Examples
    --------
    >>> g = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    >>> obj = RetrievalCrossEntropy(g, [0, 0, 1], [0], query_in_gallery=[0], temperature=0.5)
    >>> obj.temperature_   # 0.5 * median(1, 1, 2)
    0.5
    >>> round(float(obj(torch.tensor([[0.5, 0.0]]), torch.tensor([0]))), 4)   # log(1 + e^-4)
    0.0181
    """

    def __init__(self, gallery: Any, gallery_labels: Any, query_labels: Any, *,
                 query_in_gallery: Any = None, distance: Any = "euclidean", temperature: float = 0.1):
        super().__init__(gallery, gallery_labels, query_labels, query_in_gallery=query_in_gallery,
                         distance=distance)
        self._set_temperature(temperature)

    @classmethod
    def from_objective(cls, objective: RetrievalObjective, *, temperature: float = 0.1) -> "RetrievalCrossEntropy":
        """The cross-entropy on the gallery, labels and distance of a :class:`RetrievalObjective`."""
        if not isinstance(objective, RetrievalObjective):
            raise ValueError(f"objective must be a RetrievalObjective, got {type(objective).__name__}")
        obj = cls.__new__(cls)
        obj.__dict__.update({k: v for k, v in objective.__dict__.items() if k != "_cache"})
        obj._cache = {}
        obj._set_temperature(temperature)
        return obj

    def _set_temperature(self, temperature: float) -> None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or \
                not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        scale = self.gallery_scale()
        self.temperature = float(temperature)
        self.temperature_ = float(temperature) * scale

    def __call__(self, emb_adv, index):
        D = self._dist.matrix(emb_adv, self._ctx("gallery", emb_adv))
        same, self_mask = self._masks(emb_adv, index)
        logits = (-D / self.temperature_).masked_fill(self_mask, -torch.inf)
        has_same = (same & ~self_mask).any(1)
        # rows without another same-class item: a finite stand-in (never used), so no NaN gradient
        same_logits = torch.where((same & ~self_mask) | ~has_same[:, None], logits, -torch.inf)
        same_logits = torch.where(has_same[:, None], same_logits, 0.0)
        lse_all = torch.logsumexp(logits, dim=1)
        return torch.where(has_same, lse_all - torch.logsumexp(same_logits, dim=1), lse_all)
