"""The margin formula: vectorised equals a loop reference; gradients equal finite differences."""

import numpy as np
import torch

from robust_metric_learning.margin import margin, margin_from_distances


def test_margin_equals_halfspace_distance_loop():
    rng = np.random.default_rng(0)
    z, xp, xn = rng.normal(size=(3, 50, 4))
    A = rng.normal(size=(4, 4))
    M = A.T @ A
    got = margin(*(torch.from_numpy(a) for a in (z, xp, xn)), torch.from_numpy(M)).numpy()
    for t in range(50):
        # distance from z to the hyperplane {u : d_M(u, xn) = d_M(u, xp)}, signed
        w = 2 * M @ (xp[t] - xn[t])
        c = xp[t] @ M @ xp[t] - xn[t] @ M @ xn[t]
        ref = (w @ z[t] - c) / np.linalg.norm(w)  # d(u,x-) - d(u,x+) = w.u - c
        assert np.isclose(got[t], ref, rtol=1e-10, atol=1e-12)
        # and moving z by exactly that distance along -w lands on the plane
        u = z[t] - ref * w / np.linalg.norm(w)
        assert np.isclose((u - xn[t]) @ M @ (u - xn[t]), (u - xp[t]) @ M @ (u - xp[t]), rtol=1e-9, atol=1e-9)


def test_margin_scale_invariant_and_floor():
    rng = np.random.default_rng(1)
    z, xp, xn = (torch.from_numpy(a) for a in rng.normal(size=(3, 10, 3)))
    M = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(margin(z, xp, xn, M), margin(z, xp, xn, 1e3 * M), rtol=1e-12)
    # coincident x+ and x-: zero margin, no NaN
    assert margin(z, xp, xp, M).abs().max() == 0
    np.testing.assert_array_equal(margin_from_distances(np.ones(2), np.ones(2), np.zeros(2)), [0.0, 0.0])


def test_margin_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    z, xp, xn = (torch.tensor(a, requires_grad=True) for a in rng.normal(size=(3, 5, 3)))
    A = torch.tensor(rng.normal(size=(3, 3)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda z, xp, xn, A: margin(z, xp, xn, A.T @ A), (z, xp, xn, A))
