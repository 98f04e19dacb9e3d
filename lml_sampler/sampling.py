"""The one sampling loop of the package: it owns the model calls, so it counts them, and it can spend extra ones.

``sample`` runs any diffusers scheduler on a model called like ``UNet2DModel`` (``model(x, t)`` returning a tensor,
a tuple or an output with ``.sample``), the way ``DDPMPipeline`` does: ``init_noise_sigma``, ``scale_model_input``,
the per-sample generators forwarded to ``step`` where it takes them. The eval sweep, the exact metrics and the
benchmarks all sample through it. An optional LM-preconditioned Langevin corrector (``docs/lml.md``
§7) spends extra model evaluations at a fixed noise level, which a diffusers scheduler cannot request;
every model evaluation is counted in the returned NFE.
"""

from __future__ import annotations

import inspect
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


def model_output(model: Callable, x: torch.Tensor, t) -> torch.Tensor:
    """Call a plain function or a diffusers model and return the tensor it predicts (``.sample`` or ``[0]``)."""
    out = model(x, t)
    if hasattr(out, "sample"):
        return out.sample
    return out[0] if isinstance(out, tuple) else out


def _vp_sigma(scheduler, t) -> float:
    return (1 - float(scheduler.alphas_cumprod[int(t)])) ** 0.5


def _corrector_noise(shape, generator, device) -> torch.Tensor:
    """Float64 N(0, I) noise; a list of generators draws row i from generator i (per-sample seeds)."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.randn(shape[1:], generator=g, dtype=torch.float64) for g in generator]).to(device)
    return torch.randn(shape, generator=generator, dtype=torch.float64, device=device)


@torch.no_grad()
def sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler,
    x: torch.Tensor,
    num_inference_steps: int,
    corrector: LangevinCorrector | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> tuple[torch.Tensor, int]:
    """Sample from the initial noise ``x`` with ``scheduler``; return ``(x0, NFE)``. No clamping.

    Args:
        model: ``model(x, t)``, e.g. a ``UNet2DModel`` or an analytic denoiser.
        scheduler: any diffusers scheduler; ``set_timesteps(num_inference_steps)`` is called here.
        x: initial noise ``(B, ...)`` of unit variance (scaled by ``scheduler.init_noise_sigma`` here).
        corrector: an optional :class:`LangevinCorrector` (ε-prediction VP schedulers only).
        generator: a generator or one per sample, forwarded to ``scheduler.step`` when it accepts ``generator``
            (stochastic samplers) and used for the corrector's noise.
    """
    if corrector is not None and getattr(scheduler.config, "prediction_type", "epsilon") != "epsilon":
        raise ValueError("sample() with a corrector needs a prediction_type='epsilon' scheduler")
    scheduler.set_timesteps(num_inference_steps)
    timesteps = scheduler.timesteps
    x = x * getattr(scheduler, "init_noise_sigma", 1.0)
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    past: list[torch.Tensor] = []
    nfe = 0
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        eps = model_output(model, x_in, t)
        nfe += 1
        if corrector is not None and corrector.applies_to(i, len(timesteps)):
            x, eps, extra = _correct(model, x, t, eps, past, scheduler, corrector, generator)
            nfe += extra
        if corrector is not None:
            past.insert(0, eps)
            del past[max(corrector.rank, 1) :]
        x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
    return x, nfe


def _correct(model, x, t, eps, past, scheduler, corrector: LangevinCorrector, generator):
    """The corrector iterations of one step; returns (x, the model output at the final x, extra NFE)."""
    sigma = _vp_sigma(scheduler, t)
    d = x[0].numel()
    history = past[: corrector.rank]
    U = (
        torch.stack([e.double() for e in history], dim=1) * (corrector.rho / d) ** 0.5 / sigma
        if history and corrector.rho > 0
        else torch.zeros(x.shape[0], 1, *x.shape[1:], dtype=torch.float64)
    )
    lamb = 1.0 / sigma**2
    extra = 0
    for it in range(corrector.n_iter):
        if it > 0 and corrector.extra_nfe:
            eps = model_output(model, x, t)
            extra += 1
        score = -eps.double() / sigma
        noise = _corrector_noise(x.shape, generator, x.device)
        delta = langevin_step_size(score, noise, U, lamb, corrector.snr)
        x = preconditioned_langevin_step(x, score, noise, U, lamb, delta)
    if corrector.extra_nfe:
        eps = model_output(model, x, t)
        extra += 1
    return x, eps, extra


__all__ = ["LangevinCorrector", "model_output", "sample"]
