"""Woodbury / eigen-form algebra of M = λI + UUᵀ against dense matrix functions on small sizes."""

import pytest
import torch

from lml_sampler.math import lm_correct
from lml_sampler.math.lowrank import gamma_to_lamb, lm_columns, lm_direction, lowrank_inverse, lowrank_inverse_sqrt


def dense_M(U: torch.Tensor, lamb: float) -> torch.Tensor:
    """(B, d, d) dense λI + UUᵀ in float64."""
    Uf = U.double().reshape(U.shape[0], U.shape[1], -1).transpose(1, 2)
    return lamb * torch.eye(Uf.shape[1], dtype=torch.float64) + Uf @ Uf.transpose(1, 2)


def dense_fn(M: torch.Tensor, f) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh(M)
    return evecs @ torch.diag_embed(f(evals)) @ evecs.transpose(1, 2)


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("lamb", [1e-3, 1.0, 50.0])
def test_inverse_and_inverse_sqrt_match_dense_matrix_functions(k, lamb):
    g = torch.Generator().manual_seed(k)
    U = torch.randn(3, k, 2, 4, 4, generator=g, dtype=torch.float64)
    x = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    M = dense_M(U, lamb)
    xf = x.reshape(3, -1, 1)
    # Dense eigh of a matrix with condition number ≤ 1 + ‖U‖²/λ ≈ 1e5 is accurate to ~1e-11 relative.
    assert rel(lowrank_inverse(U, x, lamb), (dense_fn(M, lambda e: 1 / e) @ xf).reshape(x.shape)) < 1e-10
    assert rel(lowrank_inverse_sqrt(U, x, lamb), (dense_fn(M, lambda e: e.rsqrt()) @ xf).reshape(x.shape)) < 1e-10


def test_inverse_sqrt_noise_has_covariance_M_inverse():
    """Cov(M^{-1/2}ξ) = M⁻¹ exactly: applying M^{-1/2} to the identity's columns and squaring gives M⁻¹."""
    g = torch.Generator().manual_seed(0)
    d = 12
    U = torch.randn(1, 2, d, generator=g, dtype=torch.float64)
    cols = torch.stack([lowrank_inverse_sqrt(U, e[None], 0.3)[0] for e in torch.eye(d, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(cols @ cols.T, torch.linalg.inv(dense_M(U, 0.3)[0]), rtol=1e-10, atol=1e-12)


def test_rank_deficient_and_zero_columns():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(2, 1, 16, generator=g, dtype=torch.float64)
    U = torch.cat([u, 2 * u, torch.zeros_like(u)], dim=1)  # rank 1 spelled with 3 columns
    x = torch.randn(2, 16, generator=g, dtype=torch.float64)
    M = dense_M(U, 0.5)
    assert rel(lowrank_inverse(U, x, 0.5), torch.linalg.solve(M, x[..., None])[..., 0]) < 1e-12


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("kappa", [1e-6, 0.2, 1.0])
def test_lm_direction_matches_dense_solve(k, kappa):
    g = torch.Generator().manual_seed(10 * k)
    v = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    history = [0.8 * v + 0.5 * torch.randn(v.shape, generator=g, dtype=torch.float64) for _ in range(k)]
    U, lamb = lm_columns(v, history, kappa), 0.05
    w = torch.linalg.solve(dense_M(U, lamb), v.reshape(2, -1, 1))[..., 0] * lamb
    # The dense solve's own error is ~u·cond = 1e-16·(1 + k‖v‖²/λ) ≈ 1e-13.
    assert rel(lm_direction(v, history, lamb, kappa, renormalize=False).reshape(2, -1), w) < 1e-10
    ref = w * (v.reshape(2, -1).norm(dim=1) / w.norm(dim=1))[:, None]
    assert rel(lm_direction(v, history, lamb, kappa).reshape(2, -1), ref) < 1e-10


def test_rank_one_lm_direction_is_the_stable_lm_correction():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    p = 0.9 * v + 0.45 * torch.randn(v.shape, generator=g, dtype=torch.float64)
    for kappa in (1e-8, 1e-4, 0.3, 1.0):
        a = lm_direction(v, [p], 8e-4, kappa)
        # Both are cancellation-free; they differ by the conditioning γ·u of the problem, γ = κ‖v‖²/λ ≤ 1e6.
        assert rel(a, lm_correct(v, p, lamb=8e-4, kappa=kappa)) < 1e-9


def test_kappa_zero_columns_give_the_identity_without_cancellation():
    """u_j = v for all j: M⁻¹v ∝ v, even at λ/‖v‖² = 1e-12 where the textbook Woodbury form loses everything."""
    v = torch.randn(2, 4096, dtype=torch.float64)
    out = lm_direction(v, [torch.randn_like(v), torch.randn_like(v)], 1e-9, 0.0)
    assert rel(out, v) < 1e-14


def test_gamma_parametrisation_is_scale_free():
    g = torch.Generator().manual_seed(4)
    v = torch.randn(3, 2, 6, 6, generator=g, dtype=torch.float64)
    p = 0.7 * v + 0.5 * torch.randn(v.shape, generator=g, dtype=torch.float64)

    def lm_gamma(v, p, gamma=0.5, kappa=1e-3):
        return lm_direction(v, [p], gamma_to_lamb(v, kappa, gamma), kappa)

    for c in (1e-3, 7.0, 1e4):  # LM(c·v; c·p) = c·LM(v; p)
        assert rel(lm_gamma(c * v, c * p), c * lm_gamma(v, p)) < 1e-12
    # Small κ: the deflection is γ·p⊥v (docs/lml.md §4).
    vv = (v * v).sum(dim=(1, 2, 3), keepdim=True)
    p_perp = p - v * (p * v).sum(dim=(1, 2, 3), keepdim=True) / vv
    d = v - 0.5 * p_perp
    ref = d * (vv.sqrt() / d.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt())
    assert rel(lm_gamma(v, p, kappa=1e-7), ref) < 1e-5
    with pytest.raises(ValueError, match="kappa"):
        gamma_to_lamb(v, 0.0, 0.5)
    with pytest.raises(ValueError, match="lm_gamma"):
        gamma_to_lamb(v, 0.1, -1.0)


def test_shape_checks():
    with pytest.raises(ValueError, match="U must have shape"):
        lowrank_inverse(torch.randn(2, 1, 5), torch.randn(3, 5), 1.0)
    with pytest.raises(ValueError, match="lamb"):
        lowrank_inverse(torch.randn(2, 1, 5), torch.randn(2, 5), 0.0)
