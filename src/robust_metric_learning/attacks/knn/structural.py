"""The structural attack on a Mahalanobis K-NN classifier, any K.

With ``s = K//2 + 1``, :class:`StructuralAttack` pulls ``s`` training points of one other class
``t`` into the neighbourhood (or, with three or more classes, fewer points of ``t`` plus a
neighbourhood in which ``t`` still wins the vote). Each such template is a least-distance QP
over a polyhedron (:mod:`._region`). Candidate templates are visited in increasing order of a
cheap lower bound, the best is improved by a local search (templates read off the adversarial
point, one-point swaps guided by the QP's multipliers), and the smallest perturbation that
really flips ``predict`` is returned.

Speed: a QP stops as soon as a lower bound of its optimum reaches the best radius found (the
working set's optimum, and ``sqrt(|delta|^2 + d^2)`` with ``d`` the distance from the working
set's optimum ``delta`` to a violated half-space); the lower bounds of all target classes come
from one GEMM; each point's work runs single-threaded (use ``n_jobs`` for more cores).
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ..._validation import Interval
from ...margin import vote
from ._compiled import _greedy_compiled
from ._region import _flips, _Point, _region_qp_fast
from .base import MinimizationAttack, _Target
from .exact import ExactAttack

__all__ = ["StructuralAttack"]

#: Relative tightening of the QP constraints (strict inequalities), and the retry value.
_TIGHTEN = (1e-8, 1e-5)
#: Local search starts from every one of the best templates within this factor of the best.
_RESTART = 1.25
#: A template whose region holds no point within this factor of the distance to its farthest
#: member counts as empty (the least-distance solver verifies that before it says so).
_FAR = 1e6


# ------------------------------------------------------------------ structural attack
#
# A template (members, rivals, excused) asks that every member be closer to x + delta than every
# rival outside ``excused``. Two kinds guarantee a vote for class t:
#   majority:  members = s points of class t, excused = K - s rivals (t gets >= s votes);
#   plurality: members = A (a < s points of t) + B (K - a points of other classes, few enough
#              per class that t wins the vote A + B), rivals = all points not of class t,
#              excused = B (then the neighbourhood is A, B's survivors and more points of t).
# With rivals = the true class only (majority), the template is cheaper but not a guarantee;
# its result is kept only if ``predict`` flips, like every other. Rivals are given by kind:
# (t, False) = every point not of class t, (y, True) = the points of the true class y.


def _top_positions(values: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` smallest ``values``, ascending (ties: smaller position)."""
    n = min(n, values.size)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(values, n - 1)[:n] if n < values.size else np.arange(values.size)
    return part[np.lexsort((part, values[part]))]


def _kth_largest(w: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th largest (1-based) along the last axis of ``w``; 0 where it has fewer entries."""
    if k > w.shape[-1]:
        return np.zeros(w.shape[:-1])
    return -np.partition(-w, k - 1, axis=-1)[..., k - 1]


def _greedy(viol: np.ndarray, size: int, n_keep: int, base: np.ndarray | None = None) -> np.ndarray:
    """Grow a set of rows of ``viol`` (shape ``(..., P, S)``: one problem per leading index) one
    at a time, each time the row that keeps the bound (``n_keep + 1``-th largest column-wise
    maximum) smallest; ties go to the smaller row. Returns the sorted rows, shape ``(..., size)``."""
    lead, (n_p, n_s) = viol.shape[:-2], viol.shape[-2:]
    V = np.ascontiguousarray(viol, dtype=np.float64).reshape(-1, n_p, n_s)
    B = np.zeros((V.shape[0], n_s)) if base is None else \
        np.ascontiguousarray(np.broadcast_to(base, lead + (n_s,)), dtype=np.float64).reshape(-1, n_s)
    return _greedy_compiled(V, size, n_keep, B).reshape(lead + (size,))


def _member_sets(viol: np.ndarray, pool_d2: np.ndarray, s: int, n_keep: int, n_clusters: int,
                 greedy: np.ndarray | None = None) -> np.ndarray:
    """Candidate sets of ``s`` pool positions, one per row: nearest, easiest, greedy (given or
    computed), and clusters (a pool point and its ``s - 1`` nearest pool neighbours)."""
    h = _kth_largest(viol, n_keep + 1)  # each point alone, its worst n_keep rivals excused
    sets = [np.arange(s), np.sort(np.argsort(h, kind="stable")[:s]),
            _greedy(viol, s, n_keep) if greedy is None else greedy]
    n_c = min(n_clusters, viol.shape[0])
    clusters = np.sort(np.argsort(pool_d2[:n_c], axis=1, kind="stable")[:, :s], axis=1)
    return np.vstack([np.stack(sets), clusters])


def _class_rank(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """For each position, how many earlier positions hold the same class."""
    by = np.argsort(codes, kind="stable")
    first = np.r_[0, np.cumsum(np.bincount(codes, minlength=n_classes))]
    rank = np.empty(codes.size, dtype=np.int64)
    rank[by] = np.arange(codes.size) - first[codes[by]]
    return rank


def _capped_fill(codes: np.ndarray, rank: np.ndarray, t: int, a: int, need: int, n_classes: int) -> np.ndarray | None:
    """First ``need`` positions (in order) whose classes stay below the caps that let class ``t``
    with ``a`` votes win (ties go to the smaller code); None if they run out. ``rank``:
    ``_class_rank(codes)``."""
    caps = np.where(np.arange(n_classes) < t, a - 1, a)
    out = np.flatnonzero(rank < caps[codes])[:need]
    return out if out.size == need else None


def _candidates(pt: _Point, s: int, n_pool: int, n_screen: int, n_targets: int) -> list[tuple]:
    """Templates ``(lower bound, members, kind, excused)`` for a point of class ``y``, by
    increasing lower bound (the distance from ``x`` to the farthest single half-space among the
    nearest ``n_screen + K`` rivals). Only the ``n_targets`` classes with the smallest greedy
    bound get every kind of template. One GEMM gives the half-spaces of every class's pool
    against every screen; the greedy bounds of all classes run as one batch."""
    target, y = pt.target, pt.y
    geo, K, C = target.geo, target.k, target.n_classes
    n_keep, m = K - s, n_screen + K
    out: dict[tuple, tuple] = {}

    def add(lb, members, kind, excused, tag):
        key = (np.sort(members).tobytes(), np.sort(excused).tobytes(), tag)
        if key not in out or out[key][0] > lb:
            out[key] = (lb, members, kind, excused)

    # each class's points in distance order: positions of ``order`` grouped by class
    by_class = np.argsort(pt.codes_o.astype(np.int16 if C < 2**15 else np.int64), kind="stable")  # radix sort
    first = np.r_[0, np.cumsum(np.bincount(pt.codes_o, minlength=C))]
    classes = [t for t in range(C) if t != y and first[t + 1] > first[t]]
    if not classes:
        return []
    pools = [pt.order[by_class[first[t]:min(first[t + 1], first[t] + max(n_pool, s))]] for t in classes]
    screens = [pt.nearest((t, False), m) for t in classes]
    screen_y = pt.order[by_class[first[y]:min(first[y + 1], first[y] + m)]] if C > 2 else None
    cols, inv = np.unique(np.concatenate(screens + ([screen_y] if C > 2 else [])), return_inverse=True)
    H = pt.half_space(np.concatenate(pools), cols)
    row0 = np.r_[0, np.cumsum([p.size for p in pools])]
    col0 = np.r_[0, np.cumsum([sc.size for sc in screens])]
    modes = []  # per class: [(tag, kind, screen, viol)], the cheapest (last) bounds both
    for i, t in enumerate(classes):
        rows = H[row0[i]:row0[i + 1]]
        mode = [("all", (t, False), screens[i], rows[:, inv[col0[i]:col0[i + 1]]])]
        if C > 2:
            mode.append(("y", (y, True), screen_y, rows[:, inv[col0[-1]:]]))
        modes.append(mode)
    # greedy bound of every class at once (pools padded with never-chosen rows)
    P = max(p.size for p in pools)
    V = np.full((len(classes), P, modes[0][-1][3].shape[1]), np.inf)
    for i, mode in enumerate(modes):
        V[i, :pools[i].size] = mode[-1][3]  # one screen width: screen_y, or the only class's
    ok = np.array([p.size >= s for p in pools])
    greedy = _greedy(V, s, n_keep) if ok.any() and P >= s else np.zeros((len(classes), s), dtype=np.int64)
    cur = np.take_along_axis(V, greedy[:, :, None], axis=1).max(1)
    score = np.where(ok, _kth_largest(cur, n_keep + 1), 0.0)
    for i in np.argsort(score, kind="stable")[:n_targets]:
        t, pool = classes[i], pools[i]
        Zp = geo.Z[pool]
        pool_d2 = np.maximum((Zp * Zp).sum(1)[:, None] + (Zp * Zp).sum(1)[None, :] - 2.0 * (Zp @ Zp.T), 0.0)
        for tag, kind, screen, viol in modes[i]:
            if pool.size >= s:  # majority templates
                sets = _member_sets(viol, pool_d2, s, n_keep, n_clusters=8,
                                    greedy=greedy[i] if tag == modes[i][-1][0] else None)
                w = viol[sets].max(1)  # (n_sets, |screen|)
                n_ex = min(n_keep, w.shape[1])
                worst = np.argsort(-w, axis=1, kind="stable")[:, :n_keep]
                nearest = np.broadcast_to(np.arange(n_ex), (len(sets), n_ex))
                members = pool[sets]
                lbs = []
                for ex in (worst, nearest):
                    kept = w.copy()
                    np.put_along_axis(kept, ex, -np.inf, axis=1)
                    lbs.append(np.maximum(kept.max(1), 0.0) if w.shape[1] > n_ex else np.zeros(len(sets)))
                for j in range(len(sets)):
                    add(float(lbs[0][j]), members[j], kind, screen[worst[j]], tag)
                    add(float(lbs[1][j]), members[j], kind, screen[nearest[j]], tag)
            if tag != "all" or C < 3:
                continue
            sc_codes = geo.codes[screen]
            rank = _class_rank(sc_codes, C)
            for a in range(1, min(s, pool.size + 1)):  # plurality templates
                B = _capped_fill(sc_codes, rank, t, a, K - a, C)
                if B is None:
                    continue
                keep = np.ones(screen.size, dtype=bool)
                keep[B] = False
                base = pt.half_space(screen[B], screen[keep]).max(0)
                vk = viol[:, keep]
                for A in (np.arange(a), _greedy(vk, a, 0, base)):
                    lb = float(np.maximum(base, vk[A].max(0)).max()) if keep.any() else 0.0
                    add(lb, np.concatenate([pool[A], screen[B]]), kind, screen[B], "p")
    return sorted(out.values(), key=lambda c: c[0])


def _recentred(pt: _Point, z: np.ndarray, dz: np.ndarray, s: int) -> list[tuple]:
    """Templates read off an adversarial point ``z`` (``dz``: its squared distances): its own
    nearest sets. Each region holds ``z`` (up to ties), so its QP is never worse than ``||z - x||``.
    The sets come from an exact prefix of the (distance, index) order at ``z`` (every point at
    most as far as the ``16 K``-th), the whole order where a class runs short there."""
    target = pt.target
    geo, K, y = target.geo, target.k, pt.y
    codes = geo.codes
    m = min(dz.size, 16 * K)
    kth = np.partition(dz, m - 1)[m - 1]
    pre = np.flatnonzero(dz <= kth)
    pre = pre[np.lexsort((pre, dz[pre]))]

    def first(mask_fn, idx_full, n):
        got = pre[mask_fn(codes[pre])][:n]
        return got if got.size == n or pre.size == dz.size else idx_full[_top_positions(dz[idx_full], n)]

    nb = pre[:K]
    t = int(vote(codes[nb][None, :], target.n_classes)[0])
    A = first(lambda c: c == t, target.class_index[t], s)
    out = []
    if A.size == s:
        out.append((A, (t, False), first(lambda c: c != t, target.other_index[t], K - s)))
        if target.n_classes > 2:
            out.append((A, (y, True), first(lambda c: c == y, target.class_index[y], K - s)))
    if (codes[nb] == t).sum() < s:
        out.append((nb, (t, False), nb[codes[nb] != t]))
    return out


def _swaps(target: _Target, dz: np.ndarray, tmpl: tuple, duals: tuple, n_swap: int) -> list[tuple]:
    """One-point changes of template ``tmpl`` that relieve its most expensive constraints (largest
    multipliers ``duals`` at its optimum): excuse a binding rival in place of the excused rival
    farthest from the adversarial point (same class in a plurality template, so the vote is
    unchanged), or replace a binding chosen point by one of the ``n_swap`` points of its class
    nearest to the adversarial point (``dz``: squared distances from it). Most promising first."""
    members, kind, excused = tmpl
    W_m, W_o, lam = duals
    codes = target.geo.codes
    in_exc = np.isin(members, excused)
    plural = bool(in_exc.any())
    weight_o: dict[int, float] = {}
    weight_m: dict[int, float] = {}
    for m, o, v in zip(W_m.tolist(), W_o.tolist(), lam.tolist()):
        if v > 0:
            weight_o[o] = weight_o.get(o, 0.0) + v
            weight_m[m] = weight_m.get(m, 0.0) + v
    excuse_moves, member_moves = [], []
    exc_far = excused[np.argsort(-dz[excused], kind="stable")]
    binding = [o for o, _ in sorted(weight_o.items(), key=lambda kv: -kv[1])[:n_swap]]
    for rank in range(2):  # every binding rival against the farthest excused one, then the next
        for o in binding:
            same = exc_far[(codes[exc_far] == codes[o]) if plural else slice(None)]
            if rank < same.size:
                e = same[rank]
                ex = np.where(excused == e, o, excused)
                excuse_moves.append((np.where(members == e, o, members) if plural else members, kind, ex))
    chosen = set(members[~in_exc].tolist())
    T = target.class_index[int(codes[members[~in_exc][0]])]
    free_t = T[~np.isin(T, members)]
    alternatives = free_t[_top_positions(dz[free_t], n_swap)]
    for m, _ in sorted(weight_m.items(), key=lambda kv: -kv[1])[:2]:
        if m in chosen:
            member_moves += [(np.where(members == m, c, members), kind, excused) for c in alternatives]
    out = []  # alternate the two kinds, each most promising first
    for i in range(max(len(excuse_moves), len(member_moves))):
        out += [moves[i] for moves in (excuse_moves, member_moves) if i < len(moves)]
    return out


class StructuralAttack(MinimizationAttack):
    """Geometry-based attack on a K-NN classifier under a Mahalanobis metric (any K).

    With ``s = K//2 + 1``: choose ``s`` training points of one other class ``t`` and find the
    smallest perturbation that brings all of them closer than every rival point but ``K - s``,
    so that ``t`` holds a strict majority of the neighbours; with three or more classes, also
    ``a < s`` points of ``t`` plus a set of other-class neighbours small enough per class that
    ``t`` wins the vote (ties go to the smallest code). Each choice is a least-distance QP;
    candidates are visited in increasing order of a lower bound, the best is then improved by
    a local search. Only perturbations that flip ``predict`` are kept. For K = 1 this is
    :class:`ExactAttack` (with this search where the exact point cannot be pushed across).

    Parameters
    ----------
    n_pool : int, default=16
        Nearest points of each other class from which the chosen points are drawn.
    n_screen : int, default=32
        Nearest rivals used by the lower bounds that order (and prune) the candidate QPs.
    max_qp : int, default=24
        Most candidate QPs solved per point.
    n_targets : int, default=3
        Other classes explored with every kind of template (those with the smallest bounds).
    n_refine : int, default=4
        Rounds of local search from the best template: the sets read off its adversarial point,
        and ``n_swap_qp`` one-point swaps that relieve its most binding constraints (of
        ``n_swap`` binding rivals, or alternatives to a binding chosen point).
    n_swap, n_swap_qp : int, default=6 and 4
    n_starts : int, default=1
        Best templates (within 25% of the best) from which the local search starts; 3 finds
        slightly shorter perturbations (0.4% on average on pendigits) in 1.5x the time.
    line_search : bool, default=True
        Also try shorter multiples of the best perturbation (kept only if ``predict`` flips).
    n_jobs, chunk_size, random_state, progress : see :class:`KNNAttack`.

    Examples
    --------
    >>> import numpy as np
    >>> from robust_metric_learning.neighbors import MahalanobisKNN
    >>> X = np.array([[0.], [0.2], [0.4], [2.], [2.2], [2.4]]); y = [0, 0, 0, 1, 1, 1]
    >>> res = StructuralAttack()(MahalanobisKNN(3).fit(X, y), [[0.1]], [0])
    >>> bool(res.success[0])
    True
    """

    name = "structural"

    _parameter_constraints = {
        **MinimizationAttack._parameter_constraints,
        **{name: [Interval(Integral, 1, None)] for name in ("n_pool", "n_screen", "max_qp", "n_targets", "n_swap",
                                                            "n_starts")},
        **{name: [Interval(Integral, 0, None)] for name in ("n_refine", "n_swap_qp")},
        "line_search": [bool],
    }

    def __init__(self, *, n_pool: int = 16, n_screen: int = 32, max_qp: int = 24, n_targets: int = 3,
                 n_refine: int = 4, n_swap: int = 6, n_swap_qp: int = 4, n_starts: int = 1,
                 line_search: bool = True, n_jobs: int | None = None, chunk_size: int = 16,
                 random_state: int | None = None, progress: bool | None = None):
        super().__init__(n_jobs=n_jobs, chunk_size=chunk_size, random_state=random_state, progress=progress)
        self.n_pool = n_pool
        self.n_screen = n_screen
        self.max_qp = max_qp
        self.n_targets = n_targets
        self.n_refine = n_refine
        self.n_swap = n_swap
        self.n_swap_qp = n_swap_qp
        self.n_starts = n_starts
        self.line_search = line_search

    def _run(self, target: _Target, X: np.ndarray, codes: np.ndarray) -> np.ndarray:
        if target.k != 1:
            return super()._run(target, X, codes)
        out = ExactAttack(n_jobs=self.n_jobs, progress=self.progress)._run(target, X, codes)
        # the exact point cannot be pushed across where the nearest other-class point ties (under M)
        # with a same-class one that wins by index: search the other negatives' regions there
        failed = np.flatnonzero((out == X).all(1))
        if failed.size:
            out[failed] = super()._run(target, X[failed], codes[failed])
        return out

    def _run_chunk(self, target, X, codes, rng, extra):
        D = target.geo.sq_dist(X)
        mx_norm = np.sqrt(target.geo.MX_sq)
        out = X.copy()
        # the work per point is many tiny products: threads only add wake-up latency (the
        # caller restores torch's thread count; use n_jobs to occupy more cores)
        torch.set_num_threads(1)
        with threadpool_limits(limits=1):
            for r in range(len(X)):
                delta = self._attack_point(_Point(target, X[r], D[r], int(codes[r]), mx_norm))
                if delta is not None:
                    out[r] = X[r] + delta
        return out

    @staticmethod
    def _solve(pt: _Point, members: np.ndarray, kind: tuple, excused: np.ndarray, best: float) -> tuple | None:
        """The template's QP: ``(delta, duals)`` if shorter than ``best`` and ``predict`` flips."""
        scale = float(pt.euclid(members).max())
        bound = min(best, _FAR * scale)
        for rel in _TIGHTEN:
            res = _region_qp_fast(pt, members, kind, excused, tau=rel * scale, tol=1e-10 * scale, bound=bound)
            if res is None or np.linalg.norm(res[0]) >= best:
                return None
            if _flips(pt, res[0]):
                return res
        return None

    def _promising(self, pt: _Point, moves: list, r: float) -> list:
        """The first ``n_swap_qp`` of ``moves`` whose lower bound (over each template's nearest
        rivals) is below ``r``."""
        out = []
        for members, kind, excused in moves[:3 * self.n_swap_qp]:
            if len(out) >= self.n_swap_qp:
                break
            near = pt.nearest(kind, self.n_screen, excused)
            if near.size == 0 or pt.max_half_space(members, near) < r * (1 - 1e-7):
                out.append((members, kind, excused))
        return out

    def _attack_point(self, pt: _Point) -> np.ndarray | None:
        target, x, y = pt.target, pt.x, pt.y
        s = target.k // 2 + 1
        seen: set = set()
        starts: list[tuple] = []  # verified solutions: (radius, delta, duals, template)

        def key(tmpl):
            return np.sort(tmpl[0]).tobytes(), np.sort(tmpl[2]).tobytes(), tmpl[1]

        def best_r():
            return starts[0][0] if starts else np.inf

        for n_solved, (lb, *tmpl) in enumerate(_candidates(pt, s, self.n_pool, self.n_screen, self.n_targets)):
            slack = _RESTART if self.n_starts > 1 else 1.0
            if n_solved >= self.max_qp or lb * (1 - 1e-9) >= slack * best_r():
                break
            seen.add(key(tmpl))
            bound = starts[self.n_starts - 1][0] if len(starts) >= self.n_starts else np.inf
            res = self._solve(pt, *tmpl, min(bound, slack * best_r()))
            if res is not None:
                starts.append((float(np.linalg.norm(res[0])), res[0], res[1], tuple(tmpl)))
                starts.sort(key=lambda v: v[0])
                del starts[self.n_starts:]
        # local search from the best few templates (those not far behind the best)
        best, best_delta = best_r(), None
        for r, delta, duals, tmpl in starts:
            if r > _RESTART * best:
                break
            for _ in range(self.n_refine):
                z = x + delta
                dz = pt.sq_dist_from(z)
                tried = _recentred(pt, z, dz, s)
                tried += self._promising(pt, _swaps(target, dz, tmpl, duals, self.n_swap), r)
                improved = False
                for t in tried:
                    if key(t) in seen:
                        continue
                    seen.add(key(t))
                    res = self._solve(pt, *t, r * (1 - 1e-7))
                    if res is not None:
                        r, (delta, duals), tmpl, improved = float(np.linalg.norm(res[0])), res, t, True
                if not improved:
                    break
            if best_delta is None or r < best:
                best, best_delta = r, delta
        if best_delta is not None and self.line_search:
            alphas = np.array([0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99])
            flipped = target.predict_codes(x + alphas[:, None] * best_delta) != y
            if flipped.any():
                best_delta = alphas[np.argmax(flipped)] * best_delta
        return best_delta
