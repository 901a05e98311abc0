"""What an attack on an embedding model maximises.

An objective is a small object called on the embeddings of the perturbed inputs of one batch
and their row numbers ``index`` in the full input set the attack was called on::

    scores = objective(emb_adv, index)          # Tensor[B], to MAXIMISE
    hit = objective.success(emb_adv, index)     # BoolTensor[B]

``index`` lets the objective look up per-sample context (clean embeddings, labels, triplet
partners). Context is stored detached; it is copied once to each device and dtype it is used on.

=========================  ==============================================================
``EmbeddingShift``         ``||f(x + delta) - f(x)||_2``
``RetrievalObjective``     away from the nearest same-class gallery item, towards the nearest
                           other-class one; success = the 1-NN has another label (:mod:`.retrieval`)
``RetrievalCrossEntropy``  cross-entropy of a softmax over the negative gallery distances,
                           summed per label; the same success (:mod:`.retrieval`)
``TripletRoleObjective``   one member of each triplet perturbed against the clean other two;
                           success = the triplet is violated
=========================  ==============================================================

Distances (``distance=``) are ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"``
(``1 - cos``) or a pytorch-metric-learning distance object (``LpDistance``,
``CosineSimilarity``, ...; similarities are negated, so smaller is always closer).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..._validation import as_tensor, real_tensor
from ...margin import exact_near_sq_distances

__all__ = ["DISTANCES", "SHIFT_NUDGE", "EmbeddingShift", "Objective", "TripletRoleObjective"]


# ------------------------------------------------------------------------- distances


def _safe_sqrt(sq: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (sub)gradient where the argument is 0 (coincident points)."""
    pos = sq > 0
    return torch.where(pos, torch.where(pos, sq, 1.0).sqrt(), 0.0)


def _sq_matrix(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return exact_near_sq_distances(q, g)


def _cos_matrix(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return 1.0 - torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).T


def _cos_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1.0 - (torch.nn.functional.normalize(a, dim=1) * torch.nn.functional.normalize(b, dim=1)).sum(1)


#: Distance names: name -> (matrix(q, g) -> (B, N), pairs(a, b) -> (B,)).
DISTANCES: dict[str, tuple[Any, Any]] = {
    "euclidean": (lambda q, g: _safe_sqrt(_sq_matrix(q, g)),
                  lambda a, b: _safe_sqrt(((a - b) ** 2).sum(1))),
    "squared_euclidean": (_sq_matrix, lambda a, b: ((a - b) ** 2).sum(1)),
    "cosine": (_cos_matrix, _cos_pairs),
}


class _Distance:
    """A distance by name or a pytorch-metric-learning distance object (smaller = closer)."""

    def __init__(self, spec: Any, *, name: str = "distance"):
        self.spec = spec
        if isinstance(spec, str) and spec in DISTANCES:
            self._matrix, self._pairs = DISTANCES[spec]
            return
        if callable(spec) and hasattr(spec, "is_inverted") and hasattr(spec, "pairwise_distance"):
            sign = -1.0 if spec.is_inverted else 1.0

            def matrix(q, g):
                return sign * spec(q, g)

            def pairs(a, b):
                a, b = spec.maybe_normalize(a), spec.maybe_normalize(b)
                d = spec.pairwise_distance(a, b)
                return sign * (d ** spec.power if spec.power != 1 else d)

            self._matrix, self._pairs = matrix, pairs
            return
        raise ValueError(f"{name} must be one of {', '.join(map(repr, DISTANCES))} or a "
                         f"pytorch-metric-learning distance object, got {spec!r}")

    def matrix(self, q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self._matrix(q, g)

    def pairs(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self._pairs(a, b)


# ------------------------------------------------------------------------- base


def _embeddings(x: Any, *, name: str) -> torch.Tensor:
    """A detached, finite, non-empty 2-D floating tensor (CPU or not), or a clear error."""
    t = real_tensor(x.detach() if isinstance(x, torch.Tensor) else x, name=name,
                    what="a 2-D tensor of embeddings (n, dim)")
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D tensor of embeddings (n, dim), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinity")
    return t


class Objective:
    """Base of the attack objectives.

    Subclasses set ``n_samples`` (rows of context, i.e. the number of inputs the attack must be
    called on; None if any) and ``embedding_dim`` (None if any), and write ``__call__`` and
    ``success``; ``self._ctx(name, like)`` gives a context tensor on ``like``'s device.
    """

    n_samples: int | None = None
    embedding_dim: int | None = None

    def __call__(self, emb_adv: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Per-sample scores to maximise, shape (B,), differentiable in ``emb_adv``."""
        raise NotImplementedError

    def success(self, emb_adv: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Whether the attack reached its goal on each sample, BoolTensor of shape (B,)."""
        raise NotImplementedError

    # ------------------------------------------------------------ context on devices
    def _set_context(self, **tensors: torch.Tensor) -> None:
        self._context = dict(tensors)
        self._cache: dict[tuple, torch.Tensor] = {}

    def _ctx(self, name: str, like: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Context tensor ``name`` on ``like``'s device (floating context in ``dtype``, by default
        ``like``'s dtype; integer context keeps its dtype)."""
        src = self._context[name]
        dt = (dtype or like.dtype) if src.is_floating_point() else src.dtype
        key = (name, like.device, dt)
        out = self._cache.get(key)
        if out is None:
            out = src.to(device=like.device, dtype=dt)
            self._cache[key] = out
        return out


# ------------------------------------------------------------------------- objectives


#: How far an attack that starts at the input moves the reference of :class:`EmbeddingShift`
#: (along a random sign vector): the shift's gradient vanishes at the input itself
SHIFT_NUDGE = 1e-4


class EmbeddingShift(Objective):
    """Push each embedding away from its clean value: score ``||f(x + delta) - f(x)||_2``.

    Parameters
    ----------
    clean_embeddings : tensor of shape (n, dim)
        ``f(x)`` of the n inputs the attack will be called on (detached).
    threshold : float or None, default=None
        Success means a shift ``>= threshold`` (embedding-space l2 units); None: never (the
        attack then only reports the shift, through the scores).

    Examples
    --------
    >>> obj = EmbeddingShift(torch.zeros(2, 3), threshold=1.0)
    >>> obj(torch.tensor([[0.0, 3.0, 4.0], [0.0, 0.0, 0.5]]), torch.tensor([0, 1]))
    tensor([5.0000, 0.5000])
    """

    def __init__(self, clean_embeddings: Any, *, threshold: float | None = None):
        clean = _embeddings(clean_embeddings, name="clean_embeddings")
        if threshold is not None and (isinstance(threshold, bool) or not np.isfinite(threshold) or threshold < 0):
            raise ValueError(f"threshold must be None or a finite number >= 0, got {threshold!r}")
        self.threshold = None if threshold is None else float(threshold)
        self.n_samples, self.embedding_dim = clean.shape
        self._set_context(clean=clean)

    def __call__(self, emb_adv, index):
        clean = self._ctx("clean", emb_adv)[index]
        return torch.linalg.vector_norm(emb_adv - clean, ord=2, dim=1)

    def success(self, emb_adv, index):
        if self.threshold is None:
            return torch.zeros(emb_adv.shape[0], dtype=torch.bool, device=emb_adv.device)
        with torch.no_grad():
            return self(emb_adv, index) >= self.threshold


_ROLES = ("anchor", "positive", "negative")


class TripletRoleObjective(Objective):
    """Perturb one member (role) of each triplet against the clean other two (robust training).

    Scores to maximise, per triplet, with ``d`` the distance:

    - ``role="positive"``: ``d(a, p')``
    - ``role="negative"``: ``-d(a, n')``
    - ``role="anchor"``: ``d(a', p) - d(a', n)``

    The attack is called on the inputs of the perturbed members, ``index`` giving each input's
    row. By default there is one input per triplet; with ``groups``, triplet ``t`` is served by
    input ``groups[t]`` (several triplets can share one perturbed member, e.g. a positive with
    several anchors), whose score is the mean of its triplets' terms. Success: one of the
    input's triplets is violated, ``d(a, p) >= d(a, n)`` with the perturbed member (float64).

    Parameters
    ----------
    anchor, positive, negative : tensor of shape (n_triplets, dim)
        Clean embeddings of the triplet members (detached; the perturbed role's is unused
        except for its shape).
    role : {"positive", "negative", "anchor"}, default="positive"
    distance : str or pytorch-metric-learning distance, default="euclidean"
        Use the loss's distance (pytorch-metric-learning's default ``LpDistance`` is euclidean
        on L2-normalised embeddings).
    groups : array of int of shape (n_triplets,), default=None
        Input row of each triplet's perturbed member; every row 0..max must serve a triplet.

    Examples
    --------
    >>> a, p, n = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    >>> obj = TripletRoleObjective(a, p, n, role="positive")
    >>> obj(torch.tensor([[3.0, 0.0]]), torch.tensor([0])), obj.success(torch.tensor([[3.0, 0.0]]), torch.tensor([0]))
    (tensor([3.]), tensor([True]))
    """

    def __init__(self, anchor: Any, positive: Any, negative: Any, *, role: str = "positive",
                 distance: Any = "euclidean", groups: Any = None):
        if not isinstance(role, str) or role not in _ROLES:
            raise ValueError(f"role must be one of {', '.join(map(repr, _ROLES))}, got {role!r}")
        a = _embeddings(anchor, name="anchor")
        p = _embeddings(positive, name="positive")
        n = _embeddings(negative, name="negative")
        if not (a.shape == p.shape == n.shape):
            raise ValueError(f"anchor, positive and negative must have the same shape (n_triplets, dim), got "
                             f"{tuple(a.shape)}, {tuple(p.shape)} and {tuple(n.shape)}")
        g = self._groups(groups, len(a))
        self.role = role
        self.distance = distance
        self._dist = _Distance(distance)
        self.n_samples = int(g.max()) + 1 if len(g) else 0
        self.embedding_dim = a.shape[1]
        self._set_context(anchor=a, positive=p, negative=n, groups=g)

    @classmethod
    def from_batch(cls, clean: Any, triplets: Any, *, role: str = "positive", groups: Any = None,
                   distance: Any = "euclidean") -> "TripletRoleObjective":
        """The same objective with the triplets given as rows ``(a, p, n)`` of the clean batch
        embeddings ``clean`` (shape (batch, dim)). Scores and success are those of the
        per-triplet form, computed from one (inputs x batch) distance matrix and gathered, so
        the cost does not grow with the embedding size times the number of triplets.
        """
        if not isinstance(role, str) or role not in _ROLES:
            raise ValueError(f"role must be one of {', '.join(map(repr, _ROLES))}, got {role!r}")
        c = _embeddings(clean, name="clean")
        if len(triplets) != 3:
            raise ValueError(f"triplets must be (anchors, positives, negatives), got {len(triplets)} arrays")
        idx = [as_tensor(t).to("cpu", torch.int64) for t in triplets]
        T = len(idx[0])
        if any(t.shape != (T,) for t in idx) or (T and any(int(t.min()) < 0 or int(t.max()) >= len(c) for t in idx)):
            raise ValueError(f"triplets must be three 1-D arrays of equal length with rows of clean (0..{len(c) - 1})")
        obj = cls.__new__(cls)
        obj.role, obj.distance, obj._dist = role, distance, _Distance(distance)
        g = obj._groups(groups, T)
        obj.n_samples, obj.embedding_dim = (int(g.max()) + 1 if T else 0), c.shape[1]
        obj._set_context(clean=c, ia=idx[0], ip=idx[1], iin=idx[2], groups=g)
        obj._from_batch = True
        return obj

    @staticmethod
    def _groups(groups: Any, n_triplets: int) -> torch.Tensor:
        if groups is None:
            return torch.arange(n_triplets)
        g = as_tensor(groups).cpu()
        if g.dtype == torch.bool or g.is_floating_point() or g.shape != (n_triplets,):
            raise ValueError(f"groups must be integers of shape ({n_triplets},), got dtype {g.dtype} and "
                             f"shape {tuple(g.shape)}")
        g = g.to(torch.int64)
        if len(g) and (int(g.min()) < 0 or torch.bincount(g).min() == 0):
            raise ValueError("groups must number the inputs 0..n_inputs-1, each serving a triplet")
        return g

    _from_batch = False

    def _rows(self, e: torch.Tensor, index: torch.Tensor):
        """Triplets served by the inputs ``index`` and the batch row of each."""
        groups = self._ctx("groups", e)
        pos = torch.full((self.n_samples,), -1, dtype=torch.int64, device=e.device)
        pos[index] = torch.arange(len(index), device=e.device)
        t = torch.nonzero(pos[groups] >= 0).flatten()
        return t, pos[groups[t]]

    def _terms(self, emb_adv: torch.Tensor, index: torch.Tensor, dtype: torch.dtype | None = None):
        """Per-triplet (a, p, n) with the perturbed member, for the triplets served by ``index``,
        and the batch row of each."""
        e = emb_adv if dtype is None else emb_adv.to(dtype)
        t, rows = self._rows(e, index)
        get = {r: (e[rows] if r == self.role else self._ctx(r, e)[t]) for r in _ROLES}
        return get["anchor"], get["positive"], get["negative"], rows

    def _distances(self, emb_adv: torch.Tensor, index: torch.Tensor, dtype: torch.dtype | None = None):
        """``(d(a, p), d(a, n))`` of each served triplet with the perturbed member, and its row."""
        e = emb_adv if dtype is None else emb_adv.to(dtype)
        if not self._from_batch:
            a, p, n, rows = self._terms(e, index)
            return self._dist.pairs(a, p), self._dist.pairs(a, n), rows
        t, rows = self._rows(e, index)
        clean = self._ctx("clean", e)
        D = self._dist.matrix(e, clean)  # perturbed inputs x clean batch
        ia, ip, iin = (self._ctx(k, e)[t] for k in ("ia", "ip", "iin"))
        if self.role == "anchor":
            return D[rows, ip], D[rows, iin], rows
        other = self._dist.pairs(clean[ia], clean[iin] if self.role == "positive" else clean[ip])
        if self.role == "positive":
            return D[rows, ia], other, rows
        return other, D[rows, ia], rows

    def __call__(self, emb_adv, index):
        d_ap, d_an, rows = self._distances(emb_adv, index)
        if self.role == "positive":
            term = d_ap
        elif self.role == "negative":
            term = -d_an
        else:
            term = d_ap - d_an
        total = torch.zeros(len(index), dtype=term.dtype, device=term.device).index_add(0, rows, term)
        count = torch.zeros(len(index), dtype=term.dtype, device=term.device).index_add(0, rows, torch.ones_like(term))
        return total / count.clamp_min(1)

    def success(self, emb_adv, index):
        with torch.no_grad():
            d_ap, d_an, rows = self._distances(emb_adv.detach(), index, torch.float64)
            hit = (d_ap >= d_an).to(torch.int64)
            return torch.zeros(len(index), dtype=torch.int64, device=hit.device).index_add(0, rows, hit) > 0
