"""Mini-batch samplers: class-balanced (``classes_per_batch`` classes, ``m`` samples of each),
and anchor-positive pairs (every sample once as an anchor per epoch, with a random positive)."""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from .._validation import (
    check_nonnegative_int,
    check_positive_int,
    check_seed,
    label_classes,
)

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
        classes, codes = _classes(labels)
        self.m = check_positive_int(m, name="m")
        if self.m < 2:
            raise ValueError(f"m must be >= 2 (each sample needs a positive), got {m}")
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
        self.n_batches = (max(1, len(codes) // (self.m * c)) if n_batches is None
                          else check_positive_int(n_batches, name="n_batches"))
        self.seed = check_seed(seed, name="seed")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (an integer >= 0) whose batches the next iteration yields."""
        self.epoch = check_nonnegative_int(epoch, name="epoch")

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
        (for the last batch, earlier) one of another class, so every batch has two classes
        where the labels allow it (:meth:`require_two_classes` checks that they do).
    seed : int, default=0

    Examples
    --------
    >>> s = PairBatchSampler([0, 0, 1, 1, 2, 2], pairs=4)
    >>> [len(b) for b in s]
    [8, 4]
    """

    def __init__(self, labels, *, pairs: int = 128, seed: int = 0):
        classes, codes = _classes(labels)
        if len(classes) < 2:
            raise ValueError(f"labels must contain at least 2 classes, got {len(classes)}")
        self.pairs = check_positive_int(pairs, name="pairs")
        if self.pairs < 2:
            raise ValueError(f"pairs must be >= 2 (a batch of one pair has one class), got {pairs}")
        self.codes = codes
        self.members = [np.flatnonzero(codes == k) for k in range(len(classes))]
        self.seed = check_seed(seed, name="seed")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (an integer >= 0) whose batches the next iteration yields."""
        self.epoch = check_nonnegative_int(epoch, name="epoch")

    def _starts(self) -> list[int]:
        return _pair_batch_starts(len(self.codes), self.pairs)

    def __len__(self) -> int:
        return len(self._starts())

    def require_two_classes(self, *, name: str = "labels") -> None:
        """Raise unless every batch can hold two classes, as a metric loss needs: each batch needs
        an anchor outside the largest class, so at least :func:`len` samples must be outside it
        (then :meth:`__iter__` gives every batch two classes). The message names ``pairs`` and
        the labels (``name``) and says which ``pairs`` would do."""
        n, n_batches = len(self.codes), len(self)
        outside = n - int(np.bincount(self.codes).max())
        if outside >= n_batches:
            return
        fits = next(p for p in range(max(2, n // (outside + 1)), n + 1) if len(_pair_batch_starts(n, p)) <= outside)
        raise ValueError(
            f"pairs={self.pairs} makes {n_batches} batches per epoch of the {n} samples of {name}, and each batch "
            f"needs an anchor outside the largest class of {name} to hold two classes, but only {outside} samples "
            f"are outside it: pass pairs >= {fits}, or {name} with more samples outside its largest class")

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


def _classes(labels) -> tuple[np.ndarray, np.ndarray]:
    """The sorted classes of ``labels`` (a non-empty 1-D array of finite class labels) and each
    label's index among them, or a clear error naming ``labels``."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array of class labels, got shape {y.shape}")
    classes, codes = label_classes(y, n_samples=len(y), name="labels", rows="labels")
    return classes, codes.numpy()


def _pair_batch_starts(n: int, pairs: int) -> list[int]:
    """The first anchor of each batch of ``pairs`` pairs over ``n`` anchors."""
    starts = list(range(0, n, pairs))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()  # a lone pair (one class) joins the batch before it
    return starts
