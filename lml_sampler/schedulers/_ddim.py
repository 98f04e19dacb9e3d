"""What the DDIM-based schedulers (LML DDIM, DDS) read from their parent's schedule."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler


def ddim_alphas(scheduler: DDIMScheduler, timestep: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ᾱ_t, ᾱ_prev, prev_timestep) exactly as `DDIMScheduler.step` computes them (scheduling_ddim.py, steps 1–2)."""
    t = int(timestep)
    prev_timestep = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alpha_prod_t = scheduler.alphas_cumprod[t]
    alpha_prod_t_prev = scheduler.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else scheduler.final_alpha_cumprod
    return alpha_prod_t, alpha_prod_t_prev, prev_timestep
