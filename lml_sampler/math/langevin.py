"""One preconditioned Langevin step with a damped low-rank preconditioner (docs/lml.md §7), as a pure function."""

from __future__ import annotations

import torch

from .lowrank import lowrank_inverse, lowrank_inverse_sqrt
from .reductions import batch_sq_norm, per_sample


def langevin_step_size(score: torch.Tensor, noise: torch.Tensor, U: torch.Tensor, lamb, snr: float) -> torch.Tensor:
    """Per-sample step δ from the signal-to-noise rule of Song et al. (2021), measured in the preconditioned metric:
    the drift δ·M⁻¹s is `snr` times the diffusion √(2δ)·M^{-1/2}ξ, i.e. δ = 2·snr²·‖M^{-1/2}ξ‖² / ‖M⁻¹s‖²."""
    drift = batch_sq_norm(lowrank_inverse(U, score, lamb))
    diffusion = batch_sq_norm(lowrank_inverse_sqrt(U, noise, lamb))
    return 2 * snr**2 * diffusion / drift.clamp_min(torch.finfo(torch.float64).tiny)


def preconditioned_langevin_step(
    x: torch.Tensor,
    score: torch.Tensor,
    noise: torch.Tensor,
    U: torch.Tensor,
    lamb: float | torch.Tensor,
    delta: float | torch.Tensor,
) -> torch.Tensor:
    """x + δ·M⁻¹s + √(2δ)·M^{-1/2}ξ with M = λI + UUᵀ, δ a float or per-sample ``(B,)``.

    Drift and noise use the same constant M, so the continuous dynamics leave p_t invariant for any SPD M; M must not
    depend on x (freeze U during the corrector steps), or exactness would need the divergence term or a MALA test.
    Computed in float64, returned in ``x.dtype``.
    """
    delta = torch.as_tensor(delta, dtype=torch.float64).reshape(-1).expand(x.shape[0])
    drift = lowrank_inverse(U, score, lamb)
    diffusion = lowrank_inverse_sqrt(U, noise, lamb)
    out = x.double() + per_sample(delta, x) * drift + per_sample((2 * delta).sqrt(), x) * diffusion
    return out.to(x.dtype)
