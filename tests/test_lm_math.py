"""The pure LM correction: exact algebra, the stable formula, the released formula and its fp32 cancellation."""

import pytest
import torch

from lml_sampler.math import lm_correct
from lml_sampler.math.reductions import batch_vdot

U32 = 2.0**-24  # unit roundoff of float32
U64 = 2.0**-53


def dense_lm(v: torch.Tensor, prev: torch.Tensor | None, lamb: float, kappa: float) -> torch.Tensor:
    """Reference: solve (λI + u uᵀ) w = v densely in float64 per sample, renormalise to ‖v‖."""
    out = []
    for i in range(v.shape[0]):
        vi = v[i].reshape(-1).double()
        ui = vi if prev is None else kappa * prev[i].reshape(-1).double() + (1 - kappa) * vi
        H = lamb * torch.eye(vi.numel(), dtype=torch.float64) + torch.outer(ui, ui)
        w = torch.linalg.solve(H, vi)
        out.append((w * vi.norm() / w.norm()).reshape(v.shape[1:]))
    return torch.stack(out)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("kappa", [1e-6, 1e-3, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("shape", [(3, 64), (2, 4, 16), (2, 2, 4, 4), (2, 2, 2, 3, 3)])
def test_stable_matches_dense_solve(kappa, shape):
    g = torch.Generator().manual_seed(1)
    v = torch.randn(shape, generator=g, dtype=torch.float64)
    prev = 0.9 * v + 0.45 * torch.randn(shape, generator=g, dtype=torch.float64)
    out = lm_correct(v, prev, lamb=0.5, kappa=kappa)
    # The dense solve has condition number ≤ 1 + ‖u‖²/λ ≈ 300, so ~1e-13 is its own accuracy.
    assert rel(out, dense_lm(v, prev, 0.5, kappa)) < 1e-11
    # Renormalisation: per-sample norms equal those of v.
    torch.testing.assert_close(out.flatten(1).norm(dim=1), v.flatten(1).norm(dim=1), rtol=1e-12, atol=0)


def test_identity_cases_are_bitwise():
    v = torch.randn(2, 3, 4, 4)
    prev = torch.randn(2, 3, 4, 4)
    assert lm_correct(v, None, lamb=1e-3, kappa=0.7) is v  # first step: u = v
    assert lm_correct(v, prev, lamb=1e-3, kappa=0.0) is v  # κ = 0: w ∝ v exactly
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        x = v.to(dtype)
        assert lm_correct(x, prev.to(dtype), lamb=1e-3, kappa=0.0) is x


def test_small_kappa_limit_is_gamma_deflection():
    """LM(v) ≈ ‖v‖·normalize(v − γ p⊥v), γ = κ‖v‖²/λ (docs/lml.md §4), with an O(κ) remainder."""
    g = torch.Generator().manual_seed(2)
    v = torch.randn(4, 3072, generator=g, dtype=torch.float64)
    prev = 0.9 * v + 0.45 * torch.randn(4, 3072, generator=g, dtype=torch.float64)
    lamb = 8e-4
    for kappa in (5e-8, 1e-6):
        vv = batch_vdot(v, v)[:, None]
        gamma = kappa * vv / lamb
        p_perp = prev - v * batch_vdot(prev, v)[:, None] / vv
        d = v - gamma * p_perp
        ref = d * v.norm(dim=1, keepdim=True) / d.norm(dim=1, keepdim=True)
        # The neglected terms are O(κ·‖q‖²/‖v‖²)-relative: ≤ 1e-5 here.
        assert rel(lm_correct(v, prev, lamb=lamb, kappa=kappa), ref) < 1e-5


def test_batch_samples_are_independent():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(5, 2, 6, 6, generator=g)
    prev = torch.randn(5, 2, 6, 6, generator=g)
    prev[2] = 0  # one sample with a zero previous vector must not affect the others
    batch = lm_correct(v, prev, lamb=0.3, kappa=0.4)
    for i in range(5):
        assert torch.equal(batch[i : i + 1], lm_correct(v[i : i + 1], prev[i : i + 1], lamb=0.3, kappa=0.4))


def test_zero_vector_and_parallel_prev_are_exact():
    v = torch.randn(3, 16, dtype=torch.float64)
    v[1] = 0
    # prev ∥ v: u ∥ v, so w ∝ v and LM(v) = v; the stable form has no cancellation here.
    out = lm_correct(v, 2.0 * v, lamb=1e-9, kappa=0.5)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], v[1])
    assert rel(out, v) < 1e-14


def official_reference(v: torch.Tensor, prev: torch.Tensor | None, lamb: float, kappa: float) -> torch.Tensor:
    """The released `lm_correct` (LML-diffusion-sampler e19cbdc, L27–53), transcribed independently for 4-D input."""
    ema = kappa * prev + (1 - kappa) * v if prev is not None else v
    ns = (v * v).sum(dim=(1, 2, 3)).unsqueeze(1).unsqueeze(2).unsqueeze(3)
    nse = (ema * ema).sum(dim=(1, 2, 3)).unsqueeze(1).unsqueeze(2).unsqueeze(3)
    ip = torch.sum(v * ema, dim=(1, 2, 3))
    mp = ema * ip.unsqueeze(-1).unsqueeze(-1).unsqueeze(-1)
    inv = v - mp / (lamb + nse)
    norm = torch.sqrt(ns)
    norm_lm = torch.sqrt((inv * inv).sum(dim=(1, 2, 3)).unsqueeze(1).unsqueeze(2).unsqueeze(3))
    return inv * norm / norm_lm


@pytest.mark.parametrize("kappa", [0.0, 1e-7, 0.3])
def test_official_formula_is_the_released_expression(kappa):
    g = torch.Generator().manual_seed(4)
    v = 1.6 * torch.randn(2, 3, 32, 32, generator=g)
    prev = torch.randn(2, 3, 32, 32, generator=g)
    for p in (None, prev):
        assert torch.equal(lm_correct(v, p, lamb=8e-4, kappa=kappa, formula="official"), official_reference(v, p, 8e-4, kappa))


def test_official_formula_cancellation_has_the_predicted_size():
    """At κ = 0 the released expression is the identity in exact arithmetic; in floating point it returns v plus
    rounding noise of relative size c·u·‖v‖²/λ (docs/lml.md §2): w_i = v_i − fl(fl(v_i·S)/fl(λ+S)) keeps only the two
    rounding errors of the product and the quotient, of rms ≈ 0.38·u each (round-to-nearest over uniformly spread
    mantissas), against an exact w of v·λ/(λ+S). So c ≈ √2·0.38 ≈ 0.54; we accept c ∈ [0.3, 0.8]."""
    g = torch.Generator().manual_seed(5)
    v = torch.randn(1, 3, 32, 32, generator=g, dtype=torch.float64)
    S = float((v * v).sum())
    for ratio in (0.02, 0.1):  # u·S/λ: small enough that the common-factor error cannot flip the sign of w
        lamb = U32 * S / ratio
        err32 = rel(lm_correct(v.float(), None, lamb=lamb, kappa=0.0, formula="official"), v)
        assert 0.3 * ratio < err32 < 0.8 * ratio, (ratio, err32)
        err64 = rel(lm_correct(v, None, lamb=lamb, kappa=0.0, formula="official"), v)
        assert err64 < 0.8 * U64 * S / lamb + 1e-15  # the same law at float64's unit roundoff: the identity
    # The spec's single-vector check: v = 1.6·randn(1,3,32,32), λ = 8e-4: ≈ 0.28 in fp32, ≈ 7e-10 in fp64.
    v = 1.6 * torch.randn(1, 3, 32, 32, generator=g, dtype=torch.float64)
    assert 0.15 < rel(lm_correct(v.float(), None, lamb=8e-4, kappa=0.0, formula="official"), v) < 0.45
    assert rel(lm_correct(v, None, lamb=8e-4, kappa=0.0, formula="official"), v) < 1e-8


def test_stable_fp32_matches_fp64_where_official_does_not():
    g = torch.Generator().manual_seed(6)
    v = torch.randn(2, 3072, generator=g, dtype=torch.float64)
    prev = 0.9 * v + 0.45 * torch.randn(2, 3072, generator=g, dtype=torch.float64)
    for kappa in (5e-8, 1e-3, 0.5, 1.0):
        ref = lm_correct(v, prev, lamb=8e-4, kappa=kappa)
        # Inputs rounded to fp32 (u = 6e-8) are the only error: the result is within a few u of float64.
        assert rel(lm_correct(v.float(), prev.float(), lamb=8e-4, kappa=kappa), ref) < 2e-6
    # The released expression at a useful κ (γ ≈ 0.2) loses several percent of the direction in fp32.
    official = lm_correct(v.float(), prev.float(), lamb=8e-4, kappa=5e-8, formula="official")
    assert rel(official, lm_correct(v, prev, lamb=8e-4, kappa=5e-8)) > 1e-2


@pytest.mark.parametrize("dtype,unit", [(torch.float16, 2.0**-11), (torch.bfloat16, 2.0**-8)])
def test_low_precision_is_computed_wide_and_rounded_once(dtype, unit):
    g = torch.Generator().manual_seed(7)
    # ‖v‖² ≈ 3e5 overflows float16 (max 65504) in the released expression.
    v = (10 * torch.randn(2, 4, 8, 8, generator=g)).to(dtype)
    prev = (10 * torch.randn(2, 4, 8, 8, generator=g)).to(dtype)
    out = lm_correct(v, prev, lamb=1e-2, kappa=0.3)
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref = lm_correct(v.float(), prev.float(), lamb=1e-2, kappa=0.3)
    # Computed in float64 from the same inputs, then rounded once: within half an ulp of dtype (relative `unit`).
    assert ((out.float() - ref).abs() <= unit * ref.abs() + 1e-30).all()
    # What the stable formula avoids: at κ = 0 (the identity) the released expression overflows ‖v‖² in float16
    # and, in bfloat16 (u·‖v‖²/λ ≈ 1e5), leaves nothing of the direction.
    assert lm_correct(v, prev, lamb=1e-2, kappa=0.0) is v
    released = lm_correct(v, prev, lamb=1e-2, kappa=0.0, formula="official")
    assert not torch.isfinite(released).all() or rel(released, v) > 0.5


def test_bad_arguments_raise_clear_errors():
    v = torch.randn(2, 3)
    for kw, word in [
        (dict(lamb=0.0, kappa=0.1), "lamb"),
        (dict(lamb=float("nan"), kappa=0.1), "lamb"),
        (dict(lamb=1.0, kappa=-0.1), "kappa"),
        (dict(lamb=1.0, kappa=1.5), "kappa"),
        (dict(lamb=1.0, kappa=0.1, formula="fast"), "formula"),
    ]:
        with pytest.raises(ValueError, match=word):
            lm_correct(v, v, **kw)
    with pytest.raises(ValueError, match="set_timesteps"):
        lm_correct(v, torch.randn(1, 3), lamb=1.0, kappa=0.1)  # never broadcast over the batch
    with pytest.raises(TypeError, match="v must be"):
        lm_correct(torch.ones(2, 3, dtype=torch.int64), None, lamb=1.0, kappa=0.1)
