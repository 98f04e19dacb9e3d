"""A sampling loop that owns the model calls, for samplers that need more than `scheduler.step`: the LM-preconditioned
Langevin corrector (lml.md §9.2) spends extra model evaluations at a fixed noise level, which a diffusers scheduler
cannot request. Every model evaluation is counted in the returned NFE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .math.langevin import langevin_step_size, preconditioned_langevin_step


@dataclass(frozen=True)
class LangevinCorrector:
    """Preconditioned Langevin corrector x ← x + δ·M⁻¹s + √(2δ)·M^{-1/2}ξ at the current noise level.

    M = (1/σ_t²)·(I + (ρ/d)·Σ_j ε_j ε_jᵀ) over the last `rank` model outputs ε_j already computed (the empirical
    Fisher of the score s = −ε/σ_t, whose isotropic part is the Hessian I/σ_t² of −log N(0, σ_t²I)); ρ = 0 is plain
    Langevin with the isotropic preconditioner σ_t²I. M is frozen during a step's corrector iterations.

    Args:
        steps: indices of the predictor steps that get a corrector (default: all but the last).
        n_iter: corrector iterations per chosen step.
        snr: the step-size rule δ = 2·snr²·‖M^{-1/2}ξ‖²/‖M⁻¹s‖².
        rank: number of past model outputs in M (0: isotropic).
        rho: weight ρ ≥ 0 of the low-rank term.
        extra_nfe: True evaluates the model at each corrected point (1 NFE per iteration, the exact corrector);
            False reuses the step's model output for the corrector and the predictor (0 extra NFE, stale score).
    """

    steps: Sequence[int] | None = None
    n_iter: int = 1
    snr: float = 0.05
    rank: int = 1
    rho: float = 1.0
    extra_nfe: bool = True

    def __post_init__(self):
        if self.n_iter < 1 or self.snr <= 0 or self.rank < 0 or self.rho < 0:
            raise ValueError("LangevinCorrector needs n_iter >= 1, snr > 0, rank >= 0 and rho >= 0")

    def applies_to(self, index: int, num_steps: int) -> bool:
        return index < num_steps - 1 if self.steps is None else index in self.steps


def _epsilon(model, x: torch.Tensor, t) -> torch.Tensor:
    """Call a plain ε function or a diffusers model (whose output has `.sample`)."""
    out = model(x, t)
    return out.sample if hasattr(out, "sample") else out


def _vp_sigma(scheduler, t) -> float:
    return (1 - float(scheduler.alphas_cumprod[int(t)])) ** 0.5


@torch.no_grad()
def sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler,
    x: torch.Tensor,
    num_inference_steps: int,
    corrector: LangevinCorrector | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int]:
    """Run a VP (ε-prediction) diffusers scheduler with an optional Langevin corrector; return (x0, NFE).

    `model(x, t)` returns ε, or a diffusers output whose `.sample` is ε. Without a corrector this is exactly the pipelines' loop (one NFE per step).
    """
    if getattr(scheduler.config, "prediction_type", "epsilon") != "epsilon":
        raise ValueError("sample() with a corrector supports prediction_type='epsilon' schedulers")
    scheduler.set_timesteps(num_inference_steps)
    timesteps = scheduler.timesteps
    past: list[torch.Tensor] = []
    nfe = 0
    for i, t in enumerate(timesteps):
        eps = _epsilon(model, x, t)
        nfe += 1
        if corrector is not None and corrector.applies_to(i, len(timesteps)):
            sigma = _vp_sigma(scheduler, t)
            d = x[0].numel()
            history = past[: corrector.rank]
            U = (
                torch.stack([e.double() for e in history], dim=1) * (corrector.rho / d) ** 0.5 / sigma
                if history and corrector.rho > 0
                else torch.zeros(x.shape[0], 1, *x.shape[1:], dtype=torch.float64)
            )
            lamb = 1.0 / sigma**2
            for it in range(corrector.n_iter):
                if it > 0 and corrector.extra_nfe:
                    eps = _epsilon(model, x, t)
                    nfe += 1
                score = -eps.double() / sigma
                noise = torch.randn(x.shape, generator=generator, dtype=torch.float64, device=x.device)
                delta = langevin_step_size(score, noise, U, lamb, corrector.snr)
                x = preconditioned_langevin_step(x, score, noise, U, lamb, delta)
            if corrector.extra_nfe:
                eps = _epsilon(model, x, t)
                nfe += 1
        past.insert(0, eps)
        del past[max(corrector.rank if corrector else 0, 1) :]
        x = scheduler.step(eps, t, x).prev_sample
    return x, nfe


__all__ = ["LangevinCorrector", "sample"]
