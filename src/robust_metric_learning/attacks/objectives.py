"""What an attack on an embedding model maximises (DESIGN §3).

An objective is a small object called on the embeddings of the perturbed inputs of one batch
and their row numbers ``index`` in the full input set the attack was called on::

    scores = objective(emb_adv, index)          # Tensor[B], to MAXIMISE
    hit = objective.success(emb_adv, index)     # BoolTensor[B]

``index`` lets the objective look up per-sample context (clean embeddings, labels, triplet
partners). Context is stored detached; it is copied once to each device and dtype it is used on.

=========================  ==============================================================
``EmbeddingShift``         ``||f(x + delta) - f(x)||_2``
``RetrievalObjective``     away from the nearest same-class gallery item, towards the nearest
                           other-class one; success = the 1-NN has another label
``RetrievalCrossEntropy``  cross-entropy of a softmax over the negative gallery distances,
                           summed per label; the same success
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

from .._validation import check_labels

__all__ = [
    "DISTANCES",
    "EmbeddingShift",
    "Objective",
    "RetrievalCrossEntropy",
    "RetrievalObjective",
    "TripletRoleObjective",
]


# ------------------------------------------------------------------------- distances


def _safe_sqrt(sq: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (sub)gradient where the argument is 0 (coincident points)."""
    pos = sq > 0
    return torch.where(pos, torch.where(pos, sq, 1.0).sqrt(), 0.0)


def _sq_matrix(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    sq = (q * q).sum(1, keepdim=True) + (g * g).sum(1)[None, :] - 2.0 * (q @ g.T)
    return sq.clamp_min(0.0)


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
    if x is None:
        raise ValueError(f"{name} must be a 2-D tensor of embeddings (n, dim), got None")
    try:
        t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    except Exception as exc:
        raise ValueError(f"{name} must be a 2-D tensor of embeddings: {exc}") from None
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
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
        gl = check_labels(np.asarray(gallery_labels) if not isinstance(gallery_labels, torch.Tensor)
                          else gallery_labels.cpu().numpy(), n_samples=n_gallery, name="gallery_labels")
        ql = np.asarray(query_labels) if not isinstance(query_labels, torch.Tensor) else query_labels.cpu().numpy()
        if ql.ndim != 1 or ql.shape[0] == 0:
            raise ValueError(f"query_labels must be a non-empty 1-D array of labels, got shape {ql.shape}")
        if (gl.dtype.kind in "USO") != (ql.dtype.kind in "USO"):
            raise ValueError(f"query_labels have dtype {ql.dtype}, gallery_labels have {gl.dtype}")
        classes, codes = np.unique(np.concatenate([gl, ql]), return_inverse=True)
        g_codes, q_codes = codes[:n_gallery], codes[n_gallery:]
        n_queries = ql.shape[0]
        if query_in_gallery is None:
            qig = np.full(n_queries, -1, dtype=np.int64)
        else:
            qig = np.asarray(query_in_gallery.cpu() if isinstance(query_in_gallery, torch.Tensor) else query_in_gallery)
            if qig.dtype.kind not in "iu" or qig.ndim != 1 or qig.shape[0] != n_queries:
                raise ValueError(f"query_in_gallery must be 1-D integer gallery rows, one per query ({n_queries}), "
                                 f"got {qig.dtype} array of shape {qig.shape}")
            qig = qig.astype(np.int64)
            if qig.size and (qig.min() < -1 or qig.max() >= n_gallery):
                raise ValueError(f"query_in_gallery must hold gallery rows in [0, {n_gallery}) or -1, "
                                 f"got values in [{qig.min()}, {qig.max()}]")
            inside = qig >= 0
            wrong = inside & (g_codes[np.where(inside, qig, 0)] != q_codes)
            if wrong.any():
                i = int(np.flatnonzero(wrong)[0])
                raise ValueError(f"query_in_gallery[{i}] = {qig[i]} points at a gallery item labelled "
                                 f"{gl[qig[i]].tolist()!r}, but query {i} is labelled {ql[i].tolist()!r}")
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
        self._set_context(gallery=g, g_codes=torch.from_numpy(g_codes.astype(np.int64)),
                          q_codes=torch.from_numpy(q_codes.astype(np.int64)), qig=torch.from_numpy(qig))

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
        idx = [(t if isinstance(t, torch.Tensor) else torch.as_tensor(np.asarray(t))).to("cpu", torch.int64)
               for t in triplets]
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
        g = groups.cpu() if isinstance(groups, torch.Tensor) else torch.as_tensor(np.asarray(groups))
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
