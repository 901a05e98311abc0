"""Compiled (numba) kernels of the structural attack: the region QP's fast path, the
one-point K-NN predict it checks its answers with, and the greedy choice of template members.

Each has a Python caller that validates its inputs and falls back to the checked reference
where a kernel reports a numerical failure (:mod:`._region`, :mod:`.structural`).
"""

from __future__ import annotations

import numba
import numpy as np

from ..._solver import nnls_compiled

#: Compiled dot products may be reordered (vectorised) and fused; infinities keep their meaning.
_FAST = {"reassoc", "contract"}


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _max_half_space_compiled(MX, MX_sq, d, P, Q, floor):  # pragma: no cover - compiled
    best = 0.0
    for p in P:
        for q in Q:
            nrm = np.sqrt(max(MX_sq[p] + MX_sq[q] - 2.0 * (MX[p] @ MX[q]), 0.0))
            best = max(best, (d[p] - d[q]) / (2.0 * max(nrm, floor)))
    return best


# ------------------------------------------------- the region QP, compiled (the fast path)
#
# The same constraint generation as ``_region_qp``, compiled: the scan of the rivals within reach,
# the shortlist, the exact pair norms, and the least-distance problem of the working set through
# Lawson and Hanson's NNLS (E = [-U^T; -b^T]), warm started from the previous round (adding
# columns to E leaves the old solution optimal on its support). Where NNLS or the final
# feasibility check fails, it reports so and the caller reruns the reference ``_region_qp``
# (the checked solver). Where NNLS finds the working set empty, it returns the working set and
# the Farkas candidate; the caller accepts the verdict only if the certificate verifies.

_QP_DONE, _QP_NONE, _QP_NUMERIC, _QP_EMPTY = 0, 1, 2, 3


@numba.njit(cache=True, nogil=True)
def _top_stable(v, k):  # pragma: no cover - compiled
    """``np.argsort(-v, kind="stable")[:k]`` by selection: the ``k`` largest, ties by index."""
    n = v.size
    if n <= k:
        return np.argsort(-v, kind="mergesort")
    thr = np.partition(v, n - k)[n - k]  # the k-th largest value
    idx = np.empty(k, dtype=np.int64)
    c = 0
    for i in range(n):
        if v[i] > thr:
            idx[c] = i
            c += 1
    for i in range(n):
        if c == k:
            break
        if v[i] == thr:
            idx[c] = i
            c += 1
    return idx[np.argsort(-v[idx], kind="mergesort")]


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _region_qp_compiled(MX, MX_sq, Lm, has_L, d, members, riv, root, excused, mx_norm, mag, tau, tol, bound,
                        max_rounds, per_round, floor, q_local, near_tie, tie):  # pragma: no cover - compiled
    """See ``_region_qp``; the rounds first scan only the ``q_local`` nearest rivals (their QP is a
    lower bound, often enough to stop at ``bound``), then all within reach. Returns
    ``(status, delta, W_m, W_o, lam)``."""
    n, dim = MX.shape
    k = members.size
    d_m = np.empty(k)
    nrm_m = np.empty(k)
    for i in range(k):
        d_m[i] = d[members[i]]
        nrm_m[i] = mx_norm[members[i]]
    reach0 = np.sqrt(d_m.max())
    slack = (tau + tol) * 2.0 * mx_norm.max()
    cap = 32
    U = np.empty((cap, dim))
    b = np.empty(cap)
    Wm = np.empty(cap, dtype=np.int64)
    Wo = np.empty(cap, dtype=np.int64)
    u = np.zeros(cap)
    nw = 0
    delta = np.zeros(dim)
    lam = np.zeros(0)
    used = np.zeros((k, 64), dtype=np.bool_)
    local = q_local > 0
    for _ in range(max_rounds):
        if has_L:
            L_delta = np.sqrt(((Lm @ delta) ** 2).sum())
        else:
            L_delta = np.sqrt((delta ** 2).sum())
        q_reach = np.searchsorted(root, (reach0 + 2.0 * L_delta) * (1 + 1e-9), side="right")
        q = min(q_reach, q_local) if local else q_reach
        if q > used.shape[1]:
            grown = np.zeros((k, max(q, 2 * used.shape[1])), dtype=np.bool_)
            grown[:, :used.shape[1]] = used
            used = grown
        md = np.zeros(k)
        if nw > 0:
            for i in range(k):
                acc = 0.0
                for t in range(dim):
                    acc += MX[members[i], t] * delta[t]
                md[i] = acc
        dd = delta @ delta
        skip = np.zeros(q, dtype=np.bool_)
        for e in range(excused.size):
            for j in range(q):
                if riv[j] == excused[e]:
                    skip[j] = True
        # pairs whose constraint g <= -tau ||M (x_o - x_m)|| may be violated, scanned rival by
        # rival (nearest first) and then put in row-major order. A surely violated pair (g > 0)
        # whose half-space is so far from delta that it proves the optimum >= bound (see below)
        # ends the QP; its exact norm is computed only where |(|M x_m| - |M x_o|)|, a lower
        # bound of that norm, leaves this possible
        cand_i = np.empty(k * q, dtype=np.int64)
        cand_j = np.empty(k * q, dtype=np.int64)
        cand_g = np.empty(k * q)
        per_i = np.zeros(k + 1, dtype=np.int64)
        cnt = 0
        for j in range(q):
            if skip[j]:
                continue
            o = riv[j]
            mo = 0.0
            if nw > 0:
                for t in range(dim):
                    mo += MX[o, t] * delta[t]
            for i in range(k):
                if used[i, j]:
                    continue
                g = -0.5 * (d[o] - d_m[i]) + (mo - md[i])
                if g > -slack:
                    cand_i[cnt], cand_j[cnt], cand_g[cnt] = i, j, g
                    per_i[i + 1] += 1
                    cnt += 1
                    gap = abs(nrm_m[i] - mx_norm[o])  # <= ||M (x_o - x_m)||: g / gap + tau bounds its distance
                    if g > 0 and (g + tau * gap) ** 2 >= (bound * bound - dd) * gap * gap:
                        acc = 0.0  # could prove the bound: its exact distance to the half-space
                        m_ = members[i]
                        for t in range(dim):
                            acc += (MX[m_, t] - MX[o, t]) ** 2  # by subtraction: no cancellation
                        nr = np.sqrt(acc)
                        if nr > tie * (mag[m_] + mag[o]):
                            v = g / nr + tau
                            if dd + v * v >= bound * bound:
                                return _QP_NONE, delta, Wm[:nw].copy(), Wo[:nw].copy(), lam
        for i in range(k):
            per_i[i + 1] += per_i[i]
        pm = np.empty(cnt, dtype=np.int64)
        po = np.empty(cnt, dtype=np.int64)
        gv = np.empty(cnt)
        for c in range(cnt):
            at = per_i[cand_i[c]]
            pm[at], po[at], gv[at] = cand_i[c], cand_j[c], cand_g[c]
            per_i[cand_i[c]] += 1
        if cnt == 0:
            if q < q_reach:  # the nearest rivals are satisfied: now all of them
                local = False
                continue
            return _QP_DONE, delta, Wm[:nw].copy(), Wo[:nw].copy(), lam
        if cnt > 8 * per_round:  # exact norms for a shortlist: the largest g / (norm bound)
            key = np.empty(cnt)
            for c in range(cnt):
                key[c] = gv[c] / (nrm_m[pm[c]] + mx_norm[riv[po[c]]])
            short = _top_stable(key, 8 * per_round)
            if (gv[short] > 0).any():
                pm, po, gv = pm[short], po[short], gv[short]
                cnt = short.size
        viol = np.empty(cnt)
        norms = np.empty(cnt)
        max_viol = 0.0
        for c in range(cnt):
            m_, o_ = members[pm[c]], riv[po[c]]
            acc = 0.0
            for t in range(dim):
                acc += MX[m_, t] * MX[o_, t]
            nr = np.sqrt(max(MX_sq[m_] + MX_sq[o_] - 2.0 * acc, 0.0))
            size = mag[m_] + mag[o_]
            if nr <= near_tie * size:  # as margin.repair_pair_norms: recompute by subtraction
                acc = 0.0
                for t in range(dim):
                    acc += (MX[m_, t] - MX[o_, t]) ** 2
                nr = np.sqrt(acc)
            norms[c] = nr
            if nr <= tie * size:  # tied under M: the index rule decides, not delta
                if o_ < m_:  # a rival always ranks before a member: the template cannot be met
                    return _QP_NONE, delta, Wm[:nw].copy(), Wo[:nw].copy(), lam
                used[pm[c], po[c]] = True
                viol[c] = -np.inf
            else:
                viol[c] = gv[c] / nr + tau
                max_viol = max(max_viol, viol[c])
        # delta is the nearest point of the working set's polyhedron, so every point of it is at
        # least sqrt(|delta|^2 + dist(delta, H)^2) from the origin for each violated half-space H
        if (delta @ delta) + max_viol * max_viol >= bound * bound:
            return _QP_NONE, delta, Wm[:nw].copy(), Wo[:nw].copy(), lam
        top = _top_stable(viol, per_round)
        n_new = 0
        for c in top:
            if viol[c] > tol:
                n_new += 1
        if n_new == 0:
            if q < q_reach:
                local = False
                continue
            return _QP_DONE, delta, Wm[:nw].copy(), Wo[:nw].copy(), lam
        if nw + n_new > cap:
            cap2 = max(2 * cap, nw + n_new)
            U2 = np.empty((cap2, dim))
            U2[:nw] = U[:nw]
            b2 = np.empty(cap2)
            b2[:nw] = b[:nw]
            Wm2 = np.empty(cap2, dtype=np.int64)
            Wm2[:nw] = Wm[:nw]
            Wo2 = np.empty(cap2, dtype=np.int64)
            Wo2[:nw] = Wo[:nw]
            u2 = np.zeros(cap2)
            u2[:nw] = u[:nw]
            U, b, Wm, Wo, u, cap = U2, b2, Wm2, Wo2, u2, cap2
        for c in top:
            if viol[c] <= tol:
                continue
            m_, o_ = members[pm[c]], riv[po[c]]
            used[pm[c], po[c]] = True
            U[nw] = (MX[o_] - MX[m_]) / norms[c]
            b[nw] = (d[o_] - d[m_]) / (2.0 * max(norms[c], floor)) - tau
            Wm[nw], Wo[nw] = m_, o_
            u[nw] = 0.0
            nw += 1
        uu, ok = nnls_compiled(U[:nw], b[:nw], u[:nw].copy(), 5 * nw + 100)
        if not ok:
            return _QP_NUMERIC, delta, Wm[:nw].copy(), Wo[:nw].copy(), lam
        u[:nw] = uu
        denom = 1.0 + b[:nw] @ uu
        if denom <= 1e-12:  # the region looks empty: uu is the Farkas candidate, checked by the caller
            return _QP_EMPTY, delta, Wm[:nw].copy(), Wo[:nw].copy(), uu
        lam = uu / denom
        delta = -(U[:nw].T @ lam)
        worst = np.inf
        for r in range(nw):
            worst = min(worst, b[r] - U[r] @ delta)
        if not np.isfinite(worst) or worst < -10 * tol:
            return _QP_NUMERIC, delta, Wm[:nw].copy(), Wo[:nw].copy(), lam
        if np.sqrt((delta ** 2).sum()) >= bound:
            return _QP_NONE, delta, Wm[:nw].copy(), Wo[:nw].copy(), lam
    return _QP_NONE, delta, Wm[:nw].copy(), Wo[:nw].copy(), lam


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _predict_one_compiled(Z, Z_sq, codes, zq, k, n_classes):  # pragma: no cover - compiled
    """The K-NN vote at one point (``zq``: its transformed coordinates), with the package's
    rules: nearer first, then the smaller index; a tied vote to the smaller code. One pass
    keeping the ``k`` best (distance, index) pairs in order."""
    n, r = Z.shape
    zz = 0.0
    for t in range(r):
        zz += zq[t] * zq[t]
    best_v = np.full(k, np.inf)
    best_i = np.full(k, -1, dtype=np.int64)
    for i in range(n):
        acc = 0.0
        for t in range(r):
            acc += Z[i, t] * zq[t]
        v = max(Z_sq[i] - 2.0 * acc + zz, 0.0)
        if v < best_v[k - 1]:  # strictly: at equal distance the earlier (smaller) index stays
            j = k - 1
            while j > 0 and best_v[j - 1] > v:
                best_v[j] = best_v[j - 1]
                best_i[j] = best_i[j - 1]
                j -= 1
            best_v[j] = v
            best_i[j] = i
    votes = np.zeros(n_classes, dtype=np.int64)
    for i in best_i:
        votes[codes[i]] += 1
    return np.argmax(votes)


@numba.njit(cache=True, nogil=True)
def _greedy_compiled(viol, size, n_keep, base):  # pragma: no cover - compiled
    """See ``_greedy``; ``viol`` of shape (B, P, S), ``base`` (B, S)."""
    n_b, n_p, n_s = viol.shape
    out = np.empty((n_b, size), dtype=np.int64)
    k = n_keep + 1
    lb = np.empty(n_p)
    top = np.empty(k)  # the k largest so far, descending
    for bi in range(n_b):
        cur = base[bi].copy()
        taken = np.zeros(n_p, dtype=np.bool_)
        for i in range(size):
            for r in range(n_p):
                if taken[r]:
                    lb[r] = np.inf
                elif k > n_s:
                    lb[r] = 0.0
                else:  # the k-th largest of max(cur, viol[bi, r])
                    top[:] = -np.inf
                    for c in range(n_s):
                        v = max(cur[c], viol[bi, r, c])
                        if v > top[k - 1]:
                            j = k - 1
                            while j > 0 and top[j - 1] < v:
                                top[j] = top[j - 1]
                                j -= 1
                            top[j] = v
                    lb[r] = top[k - 1]
            arg = 0
            for r in range(1, n_p):  # np.argmin: the first minimum
                if lb[r] < lb[arg]:
                    arg = r
            out[bi, i] = arg
            taken[arg] = True
            cur = np.maximum(cur, viol[bi, arg])
        out[bi] = np.sort(out[bi])
    return out
