"""Retrieval metrics of embedding models: clean, adversarial and certified .

Clean metrics are pytorch-metric-learning's (Recall@1 = ``precision_at_1``, MAP@R, R-precision)
computed from neighbour lists we build ourselves, so that a query is never its own neighbour
even when its embedding is attacked (the gallery keeps the clean copy, excluded by index), and
NMI from scikit-learn's k-means. Adversarial versions attack only the queries correct at R@1,
against the clean gallery. Certified Recall@1 divides an embedding-space 1-NN margin bound by an
upper bound on the network's Lipschitz constant (:mod:`.lipschitz`).
"""

from __future__ import annotations

import os
import time
from typing import Any, Literal, Sequence

import numpy as np
import torch
from pytorch_metric_learning.utils import accuracy_calculator as pml_acc
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from .._validation import (
    check_bool,
    check_embeddings,
    check_eps,
    check_query_rows,
    check_seed,
    check_self_rows,
    label_codes,
    paired_label_codes,
    retrieval_label_codes,
)
from ..margin import exact_near_sq_distances, margin_from_distances, repair_pair_norms
from .checkpoints import (
    _EVAL_FORMAT,
    _check_checkpoint_arguments,
    _check_checkpoint_path,
    _evaluation_key,
    _read_evaluation,
    _resume,
    _save,
)
from .lipschitz import _body, certified_input_radius, lipschitz_bound
from .training import _inputs, embed

__all__ = ["neighbor_lists", "retrieval_metrics", "adversarial_retrieval", "certified_retrieval",
           "RETRIEVAL_METRICS"]


def _sq_dist(Q: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    return exact_near_sq_distances(Q, G)


def neighbor_lists(query: torch.Tensor, gallery: torch.Tensor, k: int, *, self_index: torch.Tensor | None = None,
                   batch_size: int = 512) -> torch.Tensor:
    """Indices of each query's ``k`` nearest gallery rows (l2), its own row excluded.

    ``self_index[i]`` is the gallery row that is query ``i`` (or -1 for none).
    """
    out = []
    for s in range(0, len(query), batch_size):
        d = _sq_dist(query[s:s + batch_size], gallery)
        if self_index is not None:
            rows = torch.arange(len(d))
            own = self_index[s:s + batch_size]
            has = own >= 0
            d[rows[has], own[has]] = float("inf")
        out.append(torch.topk(d, k, dim=1, largest=False).indices)
    return torch.cat(out)


def _knn_metrics(knn_labels: torch.Tensor, query_labels: torch.Tensor, gallery_labels: torch.Tensor,
                 self_in_gallery: bool) -> dict[str, float]:
    counts = pml_acc.get_label_match_counts(query_labels, gallery_labels, pml_acc.EQUALITY)
    args = (knn_labels, query_labels[:, None])
    return {
        "precision_at_1": pml_acc.precision_at_k(*args, 1, False, False, pml_acc.EQUALITY),
        "mean_average_precision_at_r": pml_acc.mean_average_precision(
            *args, self_in_gallery, counts, False, False, pml_acc.EQUALITY, at_r=True),
        "r_precision": pml_acc.r_precision(*args, self_in_gallery, counts, False, False, pml_acc.EQUALITY),
    }


def _nmi(emb: torch.Tensor, labels: torch.Tensor, seed: int) -> float:
    n_clusters = int(torch.unique(labels).numel())
    pred = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit_predict(emb.double().numpy())
    return float(normalized_mutual_info_score(labels.numpy(), pred))


#: metric name -> what it is; the selector :func:`retrieval_metrics` computes them all
RETRIEVAL_METRICS = {
    "precision_at_1": "Recall@1: the nearest gallery item has the query's label",
    "mean_average_precision_at_r": "MAP@R, R = number of same-class gallery items",
    "r_precision": "fraction of same-class items among the R nearest",
    "NMI": "normalised mutual information of k-means clusters (clean queries only)",
}


def _prepare(query, query_labels, gallery, gallery_labels, self_index):
    q = check_embeddings(query, name="query")
    g = check_embeddings(gallery, name="gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query and gallery must have the same width, got {tuple(q.shape)} and {tuple(g.shape)}")
    ql, gl, _ = paired_label_codes(query_labels, gallery_labels, n_query=len(q), n_gallery=len(g))
    if self_index is not None:
        self_index = check_self_rows(self_index, n=len(q), n_gallery=len(g))
    return q, ql, g, gl, self_index


def retrieval_metrics(query, query_labels, gallery, gallery_labels, *, self_index=None,
                      nmi: bool = False, seed: int = 0) -> dict[str, float]:
    """Recall@1, MAP@R and R-precision of ``query`` against ``gallery`` (and NMI if asked).

    Parameters
    ----------
    query : array or tensor of shape (n, dim)
    query_labels : array of shape (n,)
    gallery : array or tensor of shape (m, dim)
    gallery_labels : array of shape (m,)
    self_index : array of int of shape (n,), default=None
        ``self_index[i]`` is the gallery row of query i itself (never its neighbour), -1 if
        none. Queries whose class has no other gallery item are left out (as in
        pytorch-metric-learning).
    nmi : bool, default=False
        Also NMI of a k-means clustering of the queries.
    seed : int, default=0
        k-means seed.
    """
    nmi = check_bool(nmi, name="nmi")
    seed = check_seed(seed, name="seed")
    q, ql, g, gl, self_index = _prepare(query, query_labels, gallery, gallery_labels, self_index)
    same = (ql[:, None] == gl[None, :]).sum(1)
    if self_index is not None:
        same = same - (self_index >= 0).long()
    keep = same > 0
    if not bool(keep.any()):
        raise ValueError("no query has a same-class item in the gallery")
    k = int(same.max())
    idx = neighbor_lists(q[keep], g, k, self_index=None if self_index is None else self_index[keep])
    out = _knn_metrics(gl[idx], ql[keep], gl, self_index is not None)
    if nmi:
        out["NMI"] = _nmi(q, ql, seed)
    return out


def _recall_at_1_mask(q, ql, g, gl, self_index) -> torch.Tensor:
    return gl[neighbor_lists(q, g, 1, self_index=self_index)[:, 0]] == ql


def _check_attack_object(attack: Any, where: str, examples: str = "RetrievalEnsemble(), PGD()") -> None:
    """Raise unless ``attack`` is an embedding attack object (an instance, callable), naming ``where``
    and suggesting ``examples``."""
    if isinstance(attack, type):
        raise ValueError(f"The 'attack' parameter of {where} must be an attack object, an instance "
                         f"(e.g. {attack.__name__}()), got the class {attack.__name__}")
    if not callable(attack) or isinstance(attack, (str, bytes)):
        raise ValueError(f"The 'attack' parameter of {where} must be an embedding attack object "
                         f"(e.g. {examples}); got {attack!r}")


def _checked_attack_output(attack: Any, result: Any, x: torch.Tensor, eps: float) -> torch.Tensor:
    """The perturbed inputs (``result[1]``) of ``attack`` on ``x`` at ``eps``, or an error if they are
    not ``x``'s shape, leave the box [0, 1] or, for an attack with a ``norm``, its eps-ball."""
    from ..attacks.embedding.norms import get_norm

    name = getattr(attack, "name", type(attack).__name__)
    try:
        out = torch.as_tensor(result[1]).detach().to(x.device, x.dtype)
    except Exception as exc:
        raise ValueError(f"the attack {name} must return (raw, clipped, success); its clipped inputs could not "
                         f"be read: {exc}") from None
    if out.shape != x.shape:
        raise ValueError(f"the attack {name} returned inputs of shape {tuple(out.shape)} for {tuple(x.shape)}")
    if not bool(torch.isfinite(out).all()) or float(out.min()) < 0.0 or float(out.max()) > 1.0:
        raise ValueError(f"the attack {name} returned inputs outside [0, 1] (or not finite)")
    if getattr(attack, "norm", None) is not None:
        norm = get_norm(attack.norm)
        size = float(norm.measure(out - x).max()) if len(x) else 0.0
        if size > eps * (1 + 1e-5) + 1e-6:
            raise ValueError(f"the attack {name} perturbed an input by {size:.6g} in {norm.name}, beyond eps = {eps:g}")
    return out


class _PassCounter:
    """Counts the inputs ``model`` forwards (``forward``), and those forwarded with autograd on
    (``backward``: an attack's gradient passes), while in a ``with`` block."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.forward = self.backward = 0

    def _hook(self, module, inputs, output) -> None:
        n = int(inputs[0].shape[0]) if inputs and hasattr(inputs[0], "shape") else 0
        self.forward += n
        self.backward += n if torch.is_grad_enabled() else 0

    def __enter__(self) -> "_PassCounter":
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def adversarial_retrieval(model: torch.nn.Module, X: Any, y: Any, *, eps: float | Sequence[float],
                          attack: Any = None, queries: Any = None, batch_size: int = 1024,
                          checkpoint: str | os.PathLike | None = None,
                          resume: bool | Literal["compatible"] = True) -> dict[str, Any]:
    """Recall@1 and MAP@R with attacked queries against the clean gallery (leave-one-out).

    Every row of ``X`` is a gallery item and (or only the rows ``queries``) a query. Only queries correct at R@1 are
    attacked (the others stay as they are, counted as wrong); the attack pushes each away from
    its nearest same-class gallery item and towards the nearest other-class one
    (:class:`~robust_metric_learning.attacks.embedding.retrieval.RetrievalObjective`). With several
    budgets, a query broken at a smaller one stays broken at the larger ones (that perturbation
    is within them too; its embedding is the one scored, and it is not attacked again), so
    Recall@1 never rises with eps.

    Parameters
    ----------
    model : torch.nn.Module
    X : array or tensor of shape (n, ...), values in [0, 1]
    y : array of shape (n,)
        Labels of any type, at least 2 classes.
    eps : float or list of float
        Budgets (finite, >= 0), in the attack's norm.
    attack : attack object, default=RetrievalEnsemble(norm="linf", random_state=0)
        Called as ``attack(model, inputs, objective, eps=e)`` returning ``(raw, clipped, success)``;
        ``clipped`` is checked (the inputs' shape, within [0, 1] and, for an attack with a
        ``norm``, within eps in it) and embedded here.
        The default is the worst case over APGD on the retrieval margin, APGD on a
        cross-entropy over the gallery and PGD
        (:class:`~robust_metric_learning.attacks.RetrievalEnsemble`).
    queries : array of int, default=None
        Rows of ``X`` used as queries (default: all).
    batch_size : int, default=1024
        Rows embedded at a time.
    checkpoint : path, default=None
        Progress saved atomically, with its SHA-256, after each budget (budgets run in
        increasing order): a long evaluation that is stopped resumes at the first unfinished
        budget, with the same result (for a seeded attack) as one uninterrupted run. It is tied
        to the model's parameters, ``X``, ``y``, ``queries``, ``eps`` and the attack's ``repr``
        (so the attack's repr must identify it: a function's or an object's default repr,
        which holds a memory address, is refused). Checked to be writable before attacking.
    resume : bool or "compatible", default=True
        Continue from ``checkpoint`` if it exists. A checkpoint of another evaluation, a
        damaged one (truncated, corrupt, checksum mismatch) raises
        :class:`~robust_metric_learning.deep.CheckpointError` naming the file; ``"compatible"``
        starts afresh instead (with a warning when the file is damaged) and overwrites it;
        ``False`` does not read it.

    Returns
    -------
    dict
        ``eps``, and per eps lists ``precision_at_1``, ``mean_average_precision_at_r``,
        ``success`` (fraction of attacked queries whose R@1 flipped), ``flipped`` (per query,
        whether the attack broke it), plus the clean values and ``attacked`` (per query,
        whether it was attacked, i.e. correct at R@1), and ``cost``: per eps the ``seconds``
        spent attacking and embedding the attacked queries, the inputs the model forwarded
        (``forward``) and those with autograd on (``backward``), read from the checkpoint for
        the budgets finished before a resume (``restored``, per eps); with ``gallery_forward``
        (the rows embedded as the gallery), the totals are those of one uninterrupted run.
    """
    from ..attacks.embedding.ensemble import RetrievalEnsemble
    from ..attacks.embedding.retrieval import RetrievalObjective
    from .training import _check_module

    _check_module(model)
    path = _check_checkpoint_arguments(checkpoint, resume)
    eps_list = [float(e) for e in check_eps(eps)]
    X = _inputs(model, X)
    labels = retrieval_label_codes(y, len(X))  # any label type, at least 2 classes
    attack = RetrievalEnsemble(norm="linf", random_state=0) if attack is None else attack
    _check_attack_object(attack, "adversarial_retrieval")
    gallery = embed(model, X, batch_size=batch_size).double()
    qrows = check_query_rows(queries, len(X))
    q_labels = labels[qrows]
    correct = _recall_at_1_mask(gallery[qrows], q_labels, gallery, labels, qrows)
    clean = retrieval_metrics(gallery[qrows], q_labels, gallery, labels, self_index=qrows)
    hit = torch.nonzero(correct).flatten()  # positions (among the queries) attacked
    rows = qrows[hit]
    out: dict[str, Any] = {"eps": eps_list, "clean": clean, "attacked": correct.numpy(),
                           "precision_at_1": [], "mean_average_precision_at_r": [], "success": [],
                           "flipped": []}
    per_eps: dict[int, tuple] = {}
    broken = torch.zeros(len(rows), dtype=torch.bool)  # by some smaller budget so far
    broken_emb = gallery[rows].clone()  # per query: the perturbation that broke it, else the latest try
    order = sorted(range(len(eps_list)), key=lambda i: eps_list[i])
    key, done = None, 0
    if path is not None:
        key = _evaluation_key(model, X, labels, qrows, eps_list, attack)  # (refuses an unidentifiable attack)
        shape = (len(rows), len(qrows), gallery.shape[1], len(order))
        state = (_resume(lambda: _read_evaluation(path, key, *shape), resume, "the evaluation")
                 if resume and path.exists() else None)
        if state is not None:
            done, broken, broken_emb = state["done"], state["broken"], state["broken_emb"]
            per_eps = {r[0]: (r[1], r[2], r[3], r[4].numpy(), *r[5:]) for r in state["per_eps"]}
        if done < len(order):
            _check_checkpoint_path(path)
    for step, i in enumerate(order):
        if step < done:  # finished before the checkpoint was written
            continue
        e = eps_list[i]
        q_emb = gallery[qrows].clone()
        flipped = torch.zeros(len(qrows), dtype=torch.bool)
        todo = torch.nonzero(~broken).flatten()  # broken within a smaller budget: broken here too
        t0 = time.perf_counter()
        with _PassCounter(model) as passes:
            if e > 0 and len(todo):
                sub = rows[todo]
                objective = RetrievalObjective(gallery.float(), labels, labels[sub], query_in_gallery=sub)
                result = attack(model, X[sub], objective, eps=e)
                # the attack's perturbed inputs, checked (in its threat model) and embedded here: an
                # attack that left the eps-ball or the box would report a robustness that is not there
                adv_x = _checked_attack_output(attack, result, X[sub], e)
                adv = embed(model, adv_x, batch_size=batch_size).double()
        seconds = time.perf_counter() - t0
        if e > 0 and len(todo):
            now = ~_recall_at_1_mask(adv, labels[sub], gallery, labels, sub)
            broken_emb[todo] = adv  # this eps's perturbation (kept at larger ones where it broke)
            broken[todo[now]] = True
        if e > 0 and len(rows):
            q_emb[hit] = broken_emb  # the breaking perturbation, or this eps's attempt
            flipped[hit] = broken
        m = retrieval_metrics(q_emb, q_labels, gallery, labels, self_index=qrows)
        per_eps[i] = (m["precision_at_1"], m["mean_average_precision_at_r"],
                      float(flipped[hit].float().mean()) if len(rows) else 0.0, flipped.numpy(),
                      seconds, passes.forward, passes.backward)
        if path is not None:
            _save(path, {"key": key, "done": step + 1, "broken": broken, "broken_emb": broken_emb,
                         "per_eps": [[j, *map(float, per_eps[j][:3]), torch.from_numpy(per_eps[j][3]),
                                      float(per_eps[j][4]), *map(int, per_eps[j][5:])]
                                     for j in order[:step + 1]]}, kind=_EVAL_FORMAT)
    out["cost"] = {"seconds": [], "forward": [], "backward": [], "gallery_forward": int(len(X)),
                   "restored": [order.index(i) < done for i in range(len(eps_list))]}
    for i in range(len(eps_list)):
        for name, value in zip(("precision_at_1", "mean_average_precision_at_r", "success", "flipped"), per_eps[i]):
            out[name].append(value)
        for name, value in zip(("seconds", "forward", "backward"), per_eps[i][4:]):
            out["cost"][name].append(value)
    return out


def embedding_radius_bound(emb: torch.Tensor, labels: torch.Tensor, *, n_positives: int = 5,
                           batch_size: int = 256, queries: Any = None) -> torch.Tensor:
    """Lower bound on each item's leave-one-out 1-NN radius in embedding space (l2, float64).

    ``min over other-class j of max over the n_positives nearest same-class p of
    margin(z; g_p, g_j)`` (the Mahalanobis margin with M = I, a subset of the positives), clipped at 0:
    0 when the query is already wrong at R@1, or has no other item of its class; inf when
    there is no item of another class. Each row uses its own positives, so the result does
    not depend on ``batch_size``. With ``queries`` (rows of ``emb``), only those rows' bounds,
    in that order (every row stays in the gallery).
    """
    from .._validation import check_positive_int

    n_positives = check_positive_int(n_positives, name="n_positives")
    batch_size = check_positive_int(batch_size, name="batch_size")
    G = check_embeddings(emb, name="emb")
    labels = label_codes(labels, n_samples=len(G), name="labels", rows="emb").to(G.device)
    sq = (G * G).sum(1)
    qrows = check_query_rows(queries, len(G), of="emb")
    out = torch.empty(len(qrows), dtype=torch.float64)
    for s in range(0, len(qrows), batch_size):
        rows = qrows[s:s + batch_size]
        Q = G[rows]
        block = slice(s, s + len(rows))
        d = _sq_dist(Q, G)
        d[torch.arange(len(Q)), rows] = float("inf")
        same = labels[rows][:, None] == labels[None, :]
        d_pos_all = d.masked_fill(~same, float("inf"))
        # positives per row: its own class minus itself; rows with fewer than k get inf
        # distances in the padding, whose margins are -inf and never win the max
        k = min(n_positives, int(same.sum(1).max()) - 1)
        if k <= 0:  # no row of the block has a positive: wrong at R@1 (or alone: inf)
            out[block] = torch.where((~same).any(1), 0.0, float("inf")).double()
            continue
        d_pos, p_idx = torch.topk(d_pos_all, k, dim=1, largest=False)  # (b, k)
        P = G[p_idx]  # (b, k, dim)
        # ||g_p - g_j|| for every positive p of the query and every gallery row j
        pair = ((P * P).sum(-1, keepdim=True) + sq[None, None, :] - 2 * P @ G.T).clamp_min(0).sqrt()
        # near pairs: the expanded square cancels (a too small norm would inflate the margin)
        A, B = torch.broadcast_to(P[:, :, None, :], (*pair.shape, G.shape[1])), G[None, None].expand(*pair.shape, -1)
        pair = repair_pair_norms(pair, A, B, P.norm(dim=-1)[:, :, None].expand_as(pair),
                                 sq.sqrt()[None, None].expand_as(pair))
        m = margin_from_distances(d_pos[:, :, None], d[:, None, :], pair)  # (b, k, n)
        m = m.masked_fill(torch.isinf(d_pos)[:, :, None], float("-inf"))  # padding: no positive there
        best = m.max(dim=1).values.masked_fill(same, float("inf"))
        best[torch.arange(len(Q)), rows] = float("inf")
        out[block] = best.min(dim=1).values.clamp_min(0)
    return out


def certified_retrieval(model: torch.nn.Module, X: Any, y: Any, *, eps: float | Sequence[float],
                        norm: str = "linf", lipschitz: float | None = None, n_positives: int = 5,
                        queries: Any = None, batch_size: int = 1024) -> dict[str, Any]:
    """Certified Recall@1: the fraction of queries whose R@1 no perturbation of norm <= eps
    can change (leave-one-out on ``X``, clean gallery; every row of ``X`` is a gallery item and
    (or only the rows ``queries``) a query).

    The certified input radius of a query is its embedding-space margin bound
    (:func:`embedding_radius_bound`) converted by :func:`~.lipschitz.certified_input_radius`
    with ``lipschitz`` (default: :func:`~.lipschitz.lipschitz_bound` of the model).

    Parameters
    ----------
    model : torch.nn.Module
    X : array or tensor of shape (n, ...), values in [0, 1], n >= 2
    y : array of shape (n,)
        Labels of any type, at least 2 classes.
    eps : float or list of float
        Budgets (finite, >= 0), in ``norm``.
    norm : {"linf", "l2"}, default="linf"
    lipschitz : float, default=None
        An upper bound (finite, > 0) on the l2 Lipschitz constant of the model's body.
    n_positives : int, default=5
        Nearest same-class items used by the margin bound (more: tighter, slower).
    queries : array of int, default=None
        Rows of ``X`` used as queries (default: all), as in :func:`adversarial_retrieval`.
    batch_size : int, default=1024

    Returns
    -------
    dict
        ``eps``, ``certified_recall_at_1`` (one per eps), ``radii`` (per query, in the order of
        ``queries``, input norm),
        ``lipschitz``. A query whose class has no other item counts as not certified (radius
        0; :func:`retrieval_metrics` leaves such queries out); with a single class every
        query's radius is inf.
    """
    from .._validation import check_eps, check_positive_int, check_real
    from .training import _check_module

    _check_module(model)
    eps_list = [float(e) for e in check_eps(eps, name="eps")]
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if lipschitz is not None:
        lipschitz = check_real(lipschitz, name="lipschitz", low=0.0, low_open=True)
    n_positives = check_positive_int(n_positives, name="n_positives")
    batch_size = check_positive_int(batch_size, name="batch_size")
    X = _inputs(model, X)
    if len(X) < 2:
        raise ValueError(f"X must have at least 2 rows (leave-one-out: each query needs a gallery), got {len(X)}")
    labels = retrieval_label_codes(y, len(X))  # one class: no certificate would mean anything
    qrows = check_query_rows(queries, len(X))
    _, normalized = _body(model)
    emb = embed(model, X, batch_size=batch_size).double()
    if lipschitz is None:
        L = lipschitz_bound(model)
        if not (np.isfinite(L) and L > 0):
            raise ValueError(f"the model's Lipschitz bound is {L}: certified radii are undefined (all weights "
                             "zero, or an overflow); pass lipschitz= a finite bound > 0")
    else:
        L = lipschitz
    R = embedding_radius_bound(emb, labels, n_positives=n_positives, queries=qrows)
    norms = (embed(model, X[qrows], batch_size=batch_size, body=True).double().norm(dim=1).numpy()
             if normalized else None)
    radii = certified_input_radius(R.numpy(), norms, lipschitz=L,
                                   n_features=int(np.prod(X.shape[1:])), norm=norm, normalized=normalized)
    return {"eps": eps_list, "certified_recall_at_1": [float(np.mean(radii > e)) for e in eps_list],
            "radii": radii, "lipschitz": L}
