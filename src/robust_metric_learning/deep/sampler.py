"""Mini-batch samplers: class-balanced (``classes_per_batch`` classes, ``m`` samples of each),
and anchor-positive pairs (every sample once as an anchor per epoch, with a random positive)."""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from .._validation import check_nonnegative_int, check_positive_int

__all__ = ["BalancedBatchSampler", "PairBatchSampler"]


class BalancedBatchSampler(Sampler[list[int]]):
    """Yields lists of indices, each ``m`` samples from each of ``classes_per_batch`` classes.

    Every batch has at least two classes and at least two samples per class, so every
    sample of a batch has a positive and a negative (what triplet and pair losses need).
    Within a class, samples are drawn without replacement until the class is exhausted,
    then reshuffled. Deterministic given ``seed`` and the epoch (:meth:`set_epoch`), so a
    resumed run sees the same batches.

    Parameters
    ----------
    labels : array-like of shape (n,)
    m : int, default=4
        Samples per class in a batch (>= 2).
    classes_per_batch : int, default=None
        Classes per batch (>= 2); default: all classes.
    n_batches : int, default=None
        Batches per epoch; default: about one pass over the data, ``n // (m * classes_per_batch)``.
    seed : int, default=0

    Examples
    --------
    >>> s = BalancedBatchSampler([0, 0, 1, 1, 2, 2], m=2, classes_per_batch=2, n_batches=3)
    >>> [len(b) for b in s]
    [4, 4, 4]
    """

    def __init__(self, labels, *, m: int = 4, classes_per_batch: int | None = None,
                 n_batches: int | None = None, seed: int = 0):
        y = np.asarray(labels)
        if y.ndim != 1 or y.size == 0:
            raise ValueError(f"labels must be a non-empty 1-D array, got shape {y.shape}")
        self.m = check_positive_int(m, name="m")
        if self.m < 2:
            raise ValueError(f"m must be >= 2 (each sample needs a positive), got {m}")
        classes, codes = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"labels must contain at least 2 classes, got {len(classes)}")
        c = len(classes) if classes_per_batch is None else check_positive_int(classes_per_batch,
                                                                             name="classes_per_batch")
        if not 2 <= c <= len(classes):
            raise ValueError(f"classes_per_batch must be between 2 and the number of classes "
                             f"({len(classes)}), got {c}")
        counts = np.bincount(codes)
        if counts.min() < 2:
            raise ValueError(f"every class needs at least 2 samples; class {classes[counts.argmin()]!r} "
                             f"has {counts.min()}")
        self.classes_per_batch = c
        self.members = [np.flatnonzero(codes == k) for k in range(len(classes))]
        self.n_batches = (max(1, len(y) // (self.m * c)) if n_batches is None
                          else check_positive_int(n_batches, name="n_batches"))
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        pools = [rng.permutation(idx) for idx in self.members]
        pos = [0] * len(pools)
        for _ in range(self.n_batches):
            batch: list[int] = []
            for k in rng.choice(len(pools), size=self.classes_per_batch, replace=False):
                pool = pools[k]
                if len(pool) < self.m:  # fewer than m samples: draw with repetition
                    batch.extend(rng.choice(pool, size=self.m).tolist())
                    continue
                if pos[k] + self.m > len(pool):
                    pools[k] = pool = rng.permutation(self.members[k])
                    pos[k] = 0
                batch.extend(pool[pos[k]:pos[k] + self.m].tolist())
                pos[k] += self.m
            yield batch


class PairBatchSampler(Sampler[list[int]]):
    """Yields lists ``[a_0, p_0, a_1, p_1, ...]`` of ``pairs`` anchor-positive pairs: per epoch
    every sample is an anchor once (in a random order), each with a positive drawn uniformly
    from its class (itself included), as the ranking-attack literature trains (RobRank's
    "SPC-2" sampling). Pair with :class:`~robust_metric_learning.deep.miners.PairedRandomTripletMiner`.

    Parameters
    ----------
    labels : array-like of shape (n,)
    pairs : int, default=128
        Pairs per batch (>= 2; the last batch of an epoch may hold fewer; a single pair left
        over joins the batch before it, since one pair is one class and no metric loss). A
        batch whose anchors all fall in one class swaps its last anchor with the nearest later
        (for the last batch, earlier) one of another class, so every batch has two classes.
    seed : int, default=0

    Examples
    --------
    >>> s = PairBatchSampler([0, 0, 1, 1, 2, 2], pairs=4)
    >>> [len(b) for b in s]
    [8, 4]
    """

    def __init__(self, labels, *, pairs: int = 128, seed: int = 0):
        y = np.asarray(labels)
        if y.ndim != 1 or y.size == 0:
            raise ValueError(f"labels must be a non-empty 1-D array, got shape {y.shape}")
        classes, codes = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"labels must contain at least 2 classes, got {len(classes)}")
        self.pairs = check_positive_int(pairs, name="pairs")
        if self.pairs < 2:
            raise ValueError(f"pairs must be >= 2 (a batch of one pair has one class), got {pairs}")
        self.codes = codes
        self.members = [np.flatnonzero(codes == k) for k in range(len(classes))]
        self.seed = check_nonnegative_int(seed, name="seed")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.epoch = int(epoch)

    def _starts(self) -> list[int]:
        n = len(self.codes)
        starts = list(range(0, n, self.pairs))
        if len(starts) > 1 and n - starts[-1] == 1:
            starts.pop()  # a lone pair (one class) joins the batch before it
        return starts

    def __len__(self) -> int:
        return len(self._starts())

    def _swap_in_another_class(self, anchors: np.ndarray, s: int, e: int, starts: list[int], ends: list[int]) -> None:
        """Batch ``[s, e)`` has one class: swap its last anchor with the nearest later one of
        another class (later batches are checked after), else with an earlier one whose batch
        keeps two classes; a label set too unbalanced for either is left as it is."""
        c = self.codes[anchors]
        other = np.flatnonzero(c != c[s])
        later = other[other >= e]
        if len(later):
            j = int(later[0])
        else:
            j = None
            for k in other[::-1]:
                b = int(np.searchsorted(starts, k, side="right")) - 1
                rest = np.delete(c[starts[b]:ends[b]], k - starts[b])
                if (rest != c[s]).any():
                    j = int(k)
                    break
            if j is None:
                return
        anchors[[e - 1, j]] = anchors[[j, e - 1]]

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        anchors = rng.permutation(len(self.codes))
        draw = rng.random(len(anchors))
        starts = self._starts()
        ends = [*starts[1:], len(anchors)]
        for s, e in zip(starts, ends):
            own = self.codes[anchors[s:e]]
            if (own == own[0]).all():
                self._swap_in_another_class(anchors, s, e, starts, ends)
        sizes = np.array([len(m) for m in self.members])
        c = self.codes[anchors]
        positives = np.array([self.members[k][i] for k, i in zip(c, (draw * sizes[c]).astype(np.int64))])
        for s, e in zip(starts, ends):
            yield np.stack([anchors[s:e], positives[s:e]], 1).reshape(-1).tolist()
