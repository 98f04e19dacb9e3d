"""The Levenberg–Marquardt (LM) correction of LML, as pure functions over batched tensors.

LML replaces a sampler's update vector ``v`` by the damped rank-1 "Hessian-preconditioned" direction

    u  = κ·p + (1 − κ)·v                      (u = v at the first step, when there is no previous vector p)
    w  = (λI + u uᵀ)⁻¹ v · λ = v − u (u·v) / (λ + ‖u‖²)
    LM(v; p) = ‖v‖ · w / ‖w‖

per sample, over all non-batch dims (docs/lml.md §1). In exact arithmetic κ = 0 gives w = v·λ/(λ + ‖v‖²), so LM is the
identity; the released float32 code instead evaluates ``v − v·(v·v)/(λ + ‖v‖²)``, which cancels catastrophically when
λ ≪ ‖v‖² and returns v plus rounding noise (docs/lml.md §2). ``formula="stable"`` evaluates the same operator without
cancellation; ``formula="official"`` reproduces the released expression operation for operation.

Stable algebra. With q = p − v split into its parts along and across v, q = c·v + q⊥ (c = q·v/‖v‖², q⊥ ⟂ v), and
a = 1 + κc, we have u = a·v + κ·q⊥, and

    (λ + ‖u‖²) · w = (λ + κ²‖q⊥‖²) · v − κ·a·‖v‖² · q⊥ .

Both coefficients are computed from non-negative terms or one product, and the two vectors are orthogonal, so
nothing cancels; the positive factor (λ + ‖u‖²) drops out in the renormalisation. For small κ this is
‖v‖·normalize(v − γ·p⊥v) with γ = κ‖v‖²/λ, the effective strength of the method (docs/lml.md §3–§4).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from .reductions import sample_dims

LMFormula = Literal["stable", "official"]
LM_FORMULAS: tuple[str, ...] = ("stable", "official")


def check_lm_params(lamb: float, kappa: float, formula: str = "stable") -> None:
    """Validate the LM hyperparameters; raise ``ValueError`` naming the argument and the fix."""
    if not isinstance(lamb, (int, float)) or isinstance(lamb, bool) or not math.isfinite(lamb) or lamb <= 0:
        raise ValueError(f"lamb must be a finite number > 0 (the LM damping λ), got {lamb!r}")
    if not isinstance(kappa, (int, float)) or isinstance(kappa, bool) or not 0.0 <= kappa <= 1.0:
        raise ValueError(f"kappa must be a number in [0, 1] (the EMA weight of the previous vector), got {kappa!r}")
    if formula not in LM_FORMULAS:
        raise ValueError(f"formula must be one of {LM_FORMULAS}, got {formula!r}")


def _check_vectors(v: torch.Tensor, prev: torch.Tensor | None) -> None:
    if not isinstance(v, torch.Tensor) or not v.is_floating_point():
        raise TypeError(f"v must be a real floating-point tensor, got {type(v).__name__} {getattr(v, 'dtype', '')}")
    sample_dims(v)
    if prev is not None:
        if not isinstance(prev, torch.Tensor) or not prev.is_floating_point():
            raise TypeError(f"prev must be a real floating-point tensor or None, got {type(prev).__name__}")
        if prev.shape != v.shape:
            raise ValueError(
                f"prev has shape {tuple(prev.shape)} but v has shape {tuple(v.shape)}; the previous vector must come "
                "from the same batch (call scheduler.set_timesteps() before a run with another batch size)"
            )


def lm_correct(
    v: torch.Tensor,
    prev: torch.Tensor | None,
    *,
    lamb: float,
    kappa: float,
    formula: LMFormula = "stable",
) -> torch.Tensor:
    """Apply the LM correction LM_{λ,κ}(v; prev), per sample.

    Args:
        v: the current update vector, shape ``(B, ...)``, any rank.
        prev: the previous step's pre-correction vector (same shape), or ``None`` at the first step.
        lamb: damping λ > 0.
        kappa: EMA weight κ ∈ [0, 1] of ``prev`` in the curvature vector u.
        formula: ``"stable"`` (default) evaluates the operator in float64 without cancellation and returns ``v``
            itself (bit for bit) when κ = 0 or ``prev`` is None, where the operator is the identity; the result is
            cast back to ``v.dtype``, so fp16/bf16 inputs are computed in double precision. ``"official"``
            evaluates the released expression operation for operation in ``v.dtype``, rounding included (use it to
            reproduce or study the released numerics, never for fp16/bf16 sampling).

    Returns:
        The corrected vector, with the shape and dtype of ``v`` and, per sample, the norm of ``v``.
    """
    check_lm_params(lamb, kappa, formula)
    _check_vectors(v, prev)
    if formula == "official":
        return _lm_official(v, prev, lamb, kappa)
    if prev is None or kappa == 0:
        return v
    return _lm_stable(v.double(), prev.double(), lamb, kappa).to(v.dtype)


def _lm_stable(v: torch.Tensor, prev: torch.Tensor, lamb: float, kappa: float) -> torch.Tensor:
    # q = p − v is exact in float64 for float32 (or narrower) inputs; one batched Gram product gives every reduction.
    v64 = v.double().flatten(1)
    q64 = prev.double().flatten(1) - v64
    X = torch.stack((v64, q64), dim=1)
    G = X @ X.transpose(1, 2)  # (B, 2, 2): [[‖v‖², v·q], [v·q, ‖q‖²]], float64 accumulation
    vv, vq, qq = G[:, 0, 0], G[:, 0, 1], G[:, 1, 1]
    c = torch.where(vv > 0, vq / vv.clamp_min(torch.finfo(vv.dtype).tiny), 0.0)
    # ‖q⊥‖² loses relative accuracy only when q ∥ v, where it is ≪ ‖q‖² and its absolute error u·‖q‖² reaches the
    # result through κ²‖q⊥‖²/λ and γ²‖q‖²/‖v‖², far below float32 resolution unless γ ≳ 1e7.
    q_perp2 = (qq - vq * c).clamp_min(0.0)
    coef_v = lamb + kappa**2 * q_perp2
    coef_q = kappa * (1.0 + kappa * c) * vv
    ww = coef_v**2 * vv + coef_q**2 * q_perp2  # ‖w‖², w = coef_v·v − coef_q·q⊥ with v ⟂ q⊥
    scale = torch.where(ww > 0, torch.sqrt(vv / ww.clamp_min(torch.finfo(ww.dtype).tiny)), 0.0)
    # q⊥ is formed elementwise (not folded into the coefficient of v) so that nothing cancels when q ∥ v and
    # γ ≫ 1. ‖w‖ = 0 only when v = 0, where the result is v = 0 itself.
    q_perp = q64 - c[:, None] * v64
    return ((scale * coef_v)[:, None] * v64 - (scale * coef_q)[:, None] * q_perp).reshape(v.shape)


def _lm_official(v: torch.Tensor, prev: torch.Tensor | None, lamb: float, kappa: float) -> torch.Tensor:
    """The released ``lm_correct`` (LML-diffusion-sampler @ e19cbdc, L27–53), with its reductions generalised from
    dims (1,2,3) to all non-batch dims. No upcast, no guard: a zero ‖w‖ gives NaN, as in the release."""
    dims = sample_dims(v)
    prev = None if prev is None else prev.to(v.dtype)
    ema = v if prev is None else kappa * prev + (1 - kappa) * v
    norm_squared = (v * v).sum(dim=dims, keepdim=True)
    norm_squared_ema = (ema * ema).sum(dim=dims, keepdim=True)
    inner_product = torch.sum(v * ema, dim=dims, keepdim=True)
    part2 = ema * inner_product / (lamb + norm_squared_ema)
    inversed = v - part2
    norm = torch.sqrt(norm_squared)
    norm_lm = torch.sqrt((inversed * inversed).sum(dim=dims, keepdim=True))
    return inversed * norm / norm_lm
