"""The margin formula: vectorised equals a loop reference; gradients equal finite differences."""

import numpy as np
import pytest
import torch

from robust_metric_learning.margin import class_neighbors, components_from_metric, margin, margin_from_distances


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("budget", [1, 2**30])
def test_class_neighbors_equals_sorted_brute_force(dtype, budget):
    """Small integer coordinates: every distance is exact, so the lists must equal the brute
    force ones entry by entry, ties (duplicated points) broken by index. A budget of 1 byte
    forces 64 x 64 tiles: classes span several tiles, diagonal tiles included."""
    rng = np.random.default_rng(0)
    sizes = [150, 70, 5, 90]
    y = rng.permutation(np.repeat(np.arange(4), sizes))
    X = rng.integers(-3, 4, size=(y.size, 3)).astype(float)  # many exact duplicates
    X[7] = X[8]
    Z, codes = torch.tensor(X, dtype=dtype), torch.as_tensor(y)
    same, other = class_neighbors(Z, codes, 4, 9, memory_budget=budget)
    D = ((X[:, None] - X[None]) ** 2).sum(-1)
    idx = np.arange(y.size)
    for i in range(y.size):
        for got, mask, k in ((same, (y == y[i]) & (idx != i), 4), (other, y != y[i], 9)):
            cand = idx[mask]
            expect = cand[np.lexsort((cand, D[i, cand]))][:k]
            np.testing.assert_array_equal(got[i].numpy(), expect)


def test_class_neighbors_rejects_k_beyond_class_sizes():
    codes = torch.tensor([0, 0, 0, 1, 1])
    Z = torch.randn(5, 2)
    with pytest.raises(ValueError, match="k_same=2"):
        class_neighbors(Z, codes, 2, 1)
    with pytest.raises(ValueError, match="k_other=3"):
        class_neighbors(Z, codes, 1, 3)


def test_components_from_metric():
    rng = np.random.default_rng(1)
    B = rng.standard_normal((3, 6))
    M = B.T @ B  # rank 3
    L = components_from_metric(M)
    np.testing.assert_allclose(L.T @ L, M, atol=1e-12)
    norms = np.linalg.norm(L, axis=1)  # row norms are sqrt(eigenvalues), decreasing
    assert (np.diff(norms) <= 1e-12).all() and L.shape == (6, 6)
    assert (L[np.arange(6), np.abs(L).argmax(1)] >= 0).all()
    Lr = components_from_metric(M, drop_null=True)
    assert Lr.shape == (3, 6)
    np.testing.assert_allclose(Lr.T @ Lr, M, atol=1e-12)
    assert components_from_metric(np.zeros((2, 2)), drop_null=True).shape == (1, 2)


@pytest.mark.parametrize("dtype, delta, tol", [(torch.float64, 1e-7, 1e-6), (torch.float32, 1e-3, 1e-3)])
def test_exact_near_sq_distances_exact_at_coincident_and_near_pairs(dtype, delta, tol):
    """Rows at distance 0 give exactly 0 and near pairs keep their relative accuracy (the expanded
    square alone gives ~1e-8 for a row against itself in float64, with a kernel-dependent sign
    of the error); far pairs and the gradient match the subtraction formula."""
    from robust_metric_learning.margin import exact_near_sq_distances

    gen = torch.Generator().manual_seed(0)
    A = torch.nn.functional.normalize(torch.randn(40, 16, generator=gen, dtype=torch.float64), dim=1) * 7.0
    B = torch.cat([A[:10], A[10:20] + delta * torch.randn(10, 16, generator=gen, dtype=torch.float64),
                   torch.randn(20, 16, generator=gen, dtype=torch.float64)])
    A, B = A.to(dtype).requires_grad_(True), B.to(dtype)
    D = exact_near_sq_distances(A, B)
    ref = ((A[:, None, :].double() - B[None, :, :].double()) ** 2).sum(-1)
    assert torch.equal(D.diagonal()[:10], torch.zeros(10, dtype=dtype))
    near = ref.detach() < 1e-3
    rel = ((D.double() - ref).abs() / ref.clamp_min(1e-300)).detach()
    assert float(rel[near & (ref.detach() > 0)].max()) < tol
    assert float(rel[~near].max()) < 10 * float(torch.finfo(dtype).eps) ** 0.5
    D.sum().backward()
    g = A.grad.clone()
    A.grad = None
    ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1).sum().backward()
    assert torch.allclose(g, A.grad, rtol=1e-4 if dtype == torch.float32 else 1e-10,
                          atol=1e-3 if dtype == torch.float32 else 1e-9)
