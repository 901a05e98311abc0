"""Triplet miners for the pair batches of :class:`~robust_metric_learning.deep.sampler.PairBatchSampler`."""

from __future__ import annotations

from typing import Any

import torch

from .._validation import batch_labels, real_tensor

__all__ = ["PairedRandomTripletMiner", "PairedSoftHardTripletMiner"]


class PairedRandomTripletMiner:
    """One triplet per anchor-positive pair of a batch ordered ``[a_0, p_0, a_1, p_1, ...]``:
    ``(2i, 2i + 1, n_i)`` with ``n_i`` drawn uniformly from the batch rows of another label
    (RobRank's "spc2-random"). Called as pytorch-metric-learning miners are, ``miner(embeddings,
    labels)``; draws from torch's global generator (which :func:`~.training.train_embedding`
    seeds per epoch). Pairs whose anchor has no other-label row in the batch are left out.
    ``labels`` may be any class labels (integer tensors are used as they are; others, strings
    included, are coded by :func:`~robust_metric_learning._validation.batch_labels`).

    Examples
    --------
    >>> y = torch.tensor([0, 0, 1, 1, 1, 1])
    >>> a, p, n = PairedRandomTripletMiner()(torch.zeros(6, 2), y)
    >>> a.tolist(), p.tolist(), bool((y[n] != y[a]).all())
    ([0, 2, 4], [1, 3, 5], True)
    """

    @staticmethod
    def _check(embeddings: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The embeddings (a 2-D floating tensor), the labels (integer, on their device) and the
        anchors (rows ``0, 2, 4, ...``) of a pair batch, or a clear error."""
        emb = real_tensor(embeddings, name="embeddings", what="a 2-D tensor of embeddings (batch, dim)")
        if emb.ndim != 2:
            raise ValueError(f"embeddings must be a 2-D tensor of embeddings (batch, dim), "
                             f"got shape {tuple(emb.shape)}")
        y = batch_labels(labels, len(emb), device=emb.device)
        if len(y) == 0 or len(y) % 2:
            raise ValueError(f"labels must be 1-D, one per embedding and of even length (anchor-positive pairs, "
                             f"at least one), got {len(y)} for {len(emb)} embeddings")
        a = torch.arange(0, len(y), 2, device=y.device)
        if not bool((y[a] == y[a + 1]).all()):
            raise ValueError("labels of each anchor-positive pair (rows 2i, 2i + 1) must agree; the batch is not "
                             "one of PairBatchSampler")
        return emb, y, a

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        _, y, a = self._check(embeddings, labels)
        return self._draw(y, a)

    @staticmethod
    def _draw(y: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The triplets of the checked labels ``y`` and anchors ``a``."""
        p = a + 1
        other = y[a][:, None] != y[None, :]
        keep = other.any(1)
        a, p, other = a[keep], p[keep], other[keep]
        u = torch.rand(other.shape, device=y.device)
        n = torch.where(other, u, -1.0).argmax(1)
        return a, p, n

    def __repr__(self) -> str:
        return "PairedRandomTripletMiner()"


class PairedSoftHardTripletMiner(PairedRandomTripletMiner):
    """One "soft-hard" triplet per anchor of a pair batch ``[a_0, p_0, a_1, p_1, ...]`` (the
    source miner of the published hardness-manipulation defence): for anchor ``2i``, a negative
    drawn uniformly from the other-label rows nearer to it than its farthest same-label row (any
    other-label row if none is), and a positive drawn uniformly from the same-label rows farther
    from it than its nearest other-label row (any same-label row, itself included, if none is).
    Euclidean distances between the given embeddings; torch's global generator. Anchors with no
    other-label row in the batch are left out.

    Examples
    --------
    >>> emb = torch.tensor([[0.0], [0.1], [3.0], [3.1], [0.05], [2.9]])
    >>> a, p, n = PairedSoftHardTripletMiner()(emb, torch.tensor([0, 0, 1, 1, 1, 1]))
    >>> a.tolist(), n[0].item()   # row 4 (label 1) is nearer to row 0 than row 1 is
    ([0, 2, 4], 4)
    """

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        embeddings, y, a = self._check(embeddings, labels)
        a, _, _ = self._draw(y, a)  # the anchors kept (and the random miner's draws, as before)
        with torch.no_grad():
            d = torch.cdist(embeddings[a].double(), embeddings.double())  # (A, n)
        same = y[a][:, None] == y[None, :]
        far_same = torch.where(same, d, -torch.inf).amax(1, keepdim=True)
        near_other = torch.where(same, torch.inf, d).amin(1, keepdim=True)
        neg_pool = ~same & (d < far_same)
        neg_pool = torch.where(neg_pool.any(1, keepdim=True), neg_pool, ~same)
        pos_pool = same & (d > near_other)
        pos_pool = torch.where(pos_pool.any(1, keepdim=True), pos_pool, same)
        n = torch.where(neg_pool, torch.rand(d.shape, device=d.device), -1.0).argmax(1)
        p = torch.where(pos_pool, torch.rand(d.shape, device=d.device), -1.0).argmax(1)
        return a, p, n

    def __repr__(self) -> str:
        return "PairedSoftHardTripletMiner()"
