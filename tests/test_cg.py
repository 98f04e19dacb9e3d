"""Tests of lml_sampler.math.cg.conjugate_gradient: accuracy vs dense solves, batching, complex correctness."""

import pytest
import torch

from lml_sampler.math.cg import batch_dot, conjugate_gradient


def _spd(B, n, complex_=False, cond=50.0, seed=0):
    """Random Hermitian positive definite matrices with eigenvalues in [1, cond] (B, n, n), float64/complex128."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.complex128 if complex_ else torch.float64
    q, _ = torch.linalg.qr(torch.randn(B, n, n, generator=g, dtype=torch.float64).to(dt)
                           + (1j * torch.randn(B, n, n, generator=g, dtype=torch.float64) if complex_ else 0))
    lam = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    return (q * lam.to(dt)) @ q.mH


def _matvec(M):
    return lambda v: torch.einsum("bij,bj->bi", M, v)


@pytest.mark.parametrize("complex_", [False, True])
def test_matches_dense_solve(complex_):
    B, n = 3, 24
    M = _spd(B, n, complex_)
    g = torch.Generator().manual_seed(1)
    b = torch.randn(B, n, generator=g, dtype=torch.float64)
    if complex_:
        b = torch.complex(b, torch.randn(B, n, generator=g, dtype=torch.float64))
    x, iters = conjugate_gradient(_matvec(M), b, max_iter=200, tol=1e-12)
    ref = torch.linalg.solve(M, b)
    # cond 50: 1e-12 relative residual -> <= 5e-11 relative error; 1e-9 leaves margin for round-off.
    assert ((x - ref).norm(dim=1) / ref.norm(dim=1)).max() < 1e-9
    assert x.dtype == b.dtype
    # Exact arithmetic needs <= n iterations; allow a few extra for round-off.
    assert int(iters.max()) <= n + 5 and int(iters.min()) >= 1


def test_unconjugated_inner_product_would_fail():
    """Guard that the test above can fail: COCG-like bilinear products give a different (wrong) answer here."""
    B, n = 1, 16
    M = _spd(B, n, True)
    b = torch.complex(torch.randn(B, n, dtype=torch.float64), torch.randn(B, n, dtype=torch.float64))

    def bilinear_cg(A, b, iters):
        x = torch.zeros_like(b)
        r = b.clone()
        p = r.clone()
        rs = (r * r).sum()
        for _ in range(iters):
            Ap = A(p)
            a = rs / (p * Ap).sum()
            x, r = x + a * p, r - a * Ap
            rs_new = (r * r).sum()
            p, rs = r + rs_new / rs * p, rs_new
        return x

    ref = torch.linalg.solve(M, b)
    ours, _ = conjugate_gradient(_matvec(M), b, max_iter=5, tol=0)
    bad = bilinear_cg(_matvec(M), b, 5)
    assert (ours - ref).norm() < (bad - ref).norm()


def test_batch_equals_one_by_one_with_early_stop():
    B, n = 4, 20
    M = torch.cat([_spd(1, n, False, cond=c, seed=s) for s, c in enumerate([2.0, 10.0, 100.0, 1000.0])])
    b = torch.randn(B, n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x0 = 0.1 * torch.randn(B, n, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def per_sample(mats):
        # Row-by-row matvec, so batched and single runs do bit-identical operator arithmetic (a batched einsum
        # differs at 1e-13, which CG on a cond-1000 system amplifies to 1e-7 and would blur the comparison).
        return lambda v: torch.stack([mats[i] @ v[i] for i in range(v.shape[0])])

    xb, ib = conjugate_gradient(per_sample(M), b, x0=x0, max_iter=12, tol=1e-6)
    for i in range(B):
        xi, ii = conjugate_gradient(per_sample(M[i : i + 1]), b[i : i + 1], x0=x0[i : i + 1], max_iter=12, tol=1e-6)
        assert int(ii) == int(ib[i])
        # Per-sample reductions: no coupling, so the result is identical up to summation order (<= 1e-14).
        assert ((xb[i] - xi[0]).norm() / xi.norm()) < 1e-14
    # The well-conditioned sample converged early and stopped; the ill-conditioned ones used all 12.
    assert int(ib[0]) < 12 and int(ib[3]) == 12


def test_converged_samples_do_not_change_and_zero_iterations():
    B, n = 2, 10
    M = _spd(B, n)
    x_true = torch.randn(B, n, dtype=torch.float64)
    b = _matvec(M)(x_true)
    x0 = x_true.clone()
    x0[1] = 0
    x, iters = conjugate_gradient(_matvec(M), b, x0=x0, max_iter=50, tol=1e-10)
    assert int(iters[0]) == 0 and torch.equal(x[0], x_true[0])
    assert int(iters[1]) > 0
    x, iters = conjugate_gradient(_matvec(M), b, x0=x0, max_iter=0)
    assert torch.equal(x, x0) and int(iters.sum()) == 0


def test_image_shaped_batches_and_float32():
    """Per-sample reductions over all non-batch dims, float32 working precision with float64 inner products."""
    g = torch.Generator().manual_seed(0)
    d = torch.rand(3, 2, 5, 5, generator=g) + 0.5  # diagonal SPD operator, different per sample
    b = torch.randn(3, 2, 5, 5, generator=g)
    x, _ = conjugate_gradient(lambda v: d * v, b, max_iter=100, tol=1e-6)
    assert x.dtype == torch.float32
    assert torch.allclose(x, b / d, rtol=1e-4, atol=1e-5)  # float32: ~1e-6 relative residual


def test_batch_dot_is_hermitian_and_per_sample():
    u = torch.tensor([[1 + 1j, 2], [0, 1j]], dtype=torch.complex128)
    assert torch.allclose(batch_dot(u, u), torch.tensor([6.0, 1.0], dtype=torch.float64))
    assert batch_dot(u, u).dtype == torch.float64


def test_errors():
    b = torch.randn(2, 3)
    with pytest.raises(ValueError, match="x0"):
        conjugate_gradient(lambda v: v, b, x0=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="max_iter"):
        conjugate_gradient(lambda v: v, b, max_iter=-1)
    with pytest.raises(TypeError, match="complex"):
        conjugate_gradient(lambda v: v, b, x0=torch.zeros(2, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="preserve"):
        conjugate_gradient(lambda v: v[:, :2], b, max_iter=3)


def test_tol_zero_stops_at_round_off_on_a_projection():
    """CG with tol=0 on AᴴA of single-coil MRI (an orthogonal projection) converges in one step; iterating on the
    round-off residual used to divide noise by noise and blow x up by 1e8."""
    from lml_sampler.operators import SingleCoilMRI, uniform1d_mask

    op = SingleCoilMRI(uniform1d_mask(32, 4, generator=torch.Generator().manual_seed(0)))
    x = op.random_input(2, torch.float32, torch.Generator().manual_seed(1))
    b = op.A_adjoint(op.A(x))
    sol, iters = conjugate_gradient(op.A_adjoint_A, b, max_iter=10, tol=0.0)
    assert torch.allclose(sol, b, atol=1e-5) and int(iters.max()) <= 2


def test_far_initial_guess_on_a_projection_stays_finite():
    """DDS starts CG at an early Tweedie x̂0, far larger than Aᴴy. On single-coil MRI's AᴴA (a projection) the
    residual after one exact step is round-off of ‖r0‖, above 4ε‖b‖; iterating on it took a direction from the null
    space (Rayleigh quotient ~1e-14) with a step of ~1e13 and returned x ~ 1e10 for 200 of 200 such draws before the
    round-off floor scaled with ‖r0‖ and null-space directions counted as a breakdown."""
    from lml_sampler.operators import SingleCoilMRI, uniform1d_mask

    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        op = SingleCoilMRI(uniform1d_mask(32, 4, 0.08, generator=g))
        truth = 0.3 * torch.randn(1, 1, 32, 32, generator=g, dtype=torch.complex64)
        x0 = 20 * torch.randn(1, 1, 32, 32, generator=g, dtype=torch.complex64)
        b = op.A_adjoint(op.A(truth))
        x, iters = conjugate_gradient(op.A_adjoint_A, b, x0=x0, max_iter=5, tol=1e-6)
        # the exact answer after one step: x0 with its range component replaced, x0 − P x0 + b
        exact = x0 - op.A_adjoint_A(x0) + b
        # float32 with ‖x0‖ ≈ 640: 1e-4 absolute is ~100 ulps of the largest entries
        assert torch.allclose(x, exact, atol=1e-4), (seed, float((x - exact).abs().max()))
        assert int(iters) <= 2


def test_breakdown_freezes_only_that_sample():
    """A PSD operator with a null space and b in its range: a sample whose search direction falls in the null space
    stops; a batch neighbour on a definite system converges as if alone."""
    P = torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    M = torch.stack([P, torch.eye(4, dtype=torch.float64) * 2])
    b = torch.tensor([[1.0, 2.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    x0 = torch.tensor([[0.0, 0.0, 1e6, -1e6], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    x, iters = conjugate_gradient(_matvec(M), b, x0=x0, max_iter=10, tol=0.0)
    assert torch.equal(x[0, 2:], x0[0, 2:])  # the null-space part of the guess is untouched
    assert torch.allclose(x[0, :2], b[0, :2], atol=1e-12)
    assert torch.allclose(x[1], b[1] / 2, atol=1e-12)
