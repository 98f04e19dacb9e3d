"""DPM-Solver / DPM-Solver++ (orders 1–3) with the LML correction on the full solver increment."""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import DPMSolverMultistepScheduler, SchedulerMixin  # noqa: F401  (SchedulerMixin: see ddim.py)
from diffusers.configuration_utils import register_to_config

from ._lm import (
    LM_CONFIG_DOC,
    LMStateMixin,
    extend_init_signature,
    requested_steps,
    same_signature_as,
    split_lm_kwargs,
)


class LMLDPMSolverMultistepScheduler(LMStateMixin, DPMSolverMultistepScheduler):
    __doc__ = """[`DPMSolverMultistepScheduler`] whose solver increment is LM-corrected.

    Every update of the parent (first, second and third order, for `"dpmsolver"` and `"dpmsolver++"`) has the form
    x_t = a·x_s + v, with v the increment built from the multistep history (docs/lml.md §5). The update is affine in
    x_s, so evaluating the parent's own update at x_s = 0 gives v exactly as the parent computes it; this class
    then returns the parent's x_t + (LM(v) − v). No solver formula is copied.

    SDE variants (`"sde-dpmsolver"`, `"sde-dpmsolver++"`) are supported coherently: v is the deterministic part of
    the increment (the update evaluated with zero noise), the fresh-noise term is left as the parent draws it, and
    the stored previous vector is the deterministic increment. (The released code bypasses LM on these branches.)

    Args:
        All of [`DPMSolverMultistepScheduler`]'s, plus:
""" + LM_CONFIG_DOC

    @register_to_config
    @extend_init_signature(DPMSolverMultistepScheduler.__init__)
    def __init__(self, *args, **kwargs):
        split_lm_kwargs(kwargs)
        super().__init__(*args, **kwargs)
        self._init_lm()

    @same_signature_as(DPMSolverMultistepScheduler.set_timesteps)
    def set_timesteps(self, *args, **kwargs) -> None:
        self._reset_lm_state(requested_steps(DPMSolverMultistepScheduler.set_timesteps, self, args, kwargs))
        super().set_timesteps(*args, **kwargs)

    def _lm_update(self, update: Callable[..., torch.Tensor], *args, sample=None, noise=None, **kwargs) -> torch.Tensor:
        x_t = update(*args, sample=sample, noise=noise, **kwargs)
        if not self.lm_engaged:
            return x_t
        zero_noise = None if noise is None else torch.zeros_like(noise)
        increment = update(*args, sample=torch.zeros_like(sample), noise=zero_noise, **kwargs)
        corrected = self._lm_correct(increment, self.step_index)
        if corrected is None:
            return x_t
        return (x_t + (corrected - increment)).to(x_t.dtype)

    def dpm_solver_first_order_update(self, *args, sample=None, noise=None, **kwargs) -> torch.Tensor:
        return self._lm_update(super().dpm_solver_first_order_update, *args, sample=sample, noise=noise, **kwargs)

    def multistep_dpm_solver_second_order_update(self, *args, sample=None, noise=None, **kwargs) -> torch.Tensor:
        update = super().multistep_dpm_solver_second_order_update
        return self._lm_update(update, *args, sample=sample, noise=noise, **kwargs)

    def multistep_dpm_solver_third_order_update(self, *args, sample=None, noise=None, **kwargs) -> torch.Tensor:
        update = super().multistep_dpm_solver_third_order_update
        return self._lm_update(update, *args, sample=sample, noise=noise, **kwargs)
