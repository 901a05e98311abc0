"""Triplet miners for the pair batches of :class:`~robust_metric_learning.deep.sampler.PairBatchSampler`."""

from __future__ import annotations

import torch

__all__ = ["PairedRandomTripletMiner"]


class PairedRandomTripletMiner:
    """One triplet per anchor-positive pair of a batch ordered ``[a_0, p_0, a_1, p_1, ...]``:
    ``(2i, 2i + 1, n_i)`` with ``n_i`` drawn uniformly from the batch rows of another label
    (RobRank's "spc2-random"). Called as pytorch-metric-learning miners are, ``miner(embeddings,
    labels)``; draws from torch's global generator (which :func:`~.training.train_embedding`
    seeds per epoch). Pairs whose anchor has no other-label row in the batch are left out.

    Examples
    --------
    >>> y = torch.tensor([0, 0, 1, 1, 1, 1])
    >>> a, p, n = PairedRandomTripletMiner()(torch.zeros(6, 2), y)
    >>> a.tolist(), p.tolist(), bool((y[n] != y[a]).all())
    ([0, 2, 4], [1, 3, 5], True)
    """

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = torch.as_tensor(labels)
        if y.ndim != 1 or len(y) != len(embeddings) or len(y) % 2:
            raise ValueError(f"labels must be 1-D, one per embedding and of even length (anchor-positive pairs), "
                             f"got shape {tuple(y.shape)} for {len(embeddings)} embeddings")
        a = torch.arange(0, len(y), 2, device=y.device)
        p = a + 1
        if not bool((y[a] == y[p]).all()):
            raise ValueError("labels of each anchor-positive pair (rows 2i, 2i + 1) must agree; the batch is not "
                             "one of PairBatchSampler")
        other = y[a][:, None] != y[None, :]
        keep = other.any(1)
        a, p, other = a[keep], p[keep], other[keep]
        u = torch.rand(other.shape, device=y.device)
        n = torch.where(other, u, -1.0).argmax(1)
        return a, p, n

    def __repr__(self) -> str:
        return "PairedRandomTripletMiner()"
