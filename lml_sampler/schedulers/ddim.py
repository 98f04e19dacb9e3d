"""DDIM with the LML correction on the direction term."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, SchedulerMixin  # noqa: F401  (SchedulerMixin: pipeline loading, see below)
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

from ._ddim import ddim_alphas
from ._lm import (
    LM_CONFIG_DOC,
    LMStateMixin,
    extend_init_signature,
    requested_steps,
    same_signature_as,
    split_lm_kwargs,
)

# `DiffusionPipeline.from_pretrained` imports this module and looks up `SchedulerMixin` in its namespace to pick the
# loader of a third-party component (docs/diffusers-integration.md §3): the import above is load-bearing.


class LMLDDIMScheduler(LMStateMixin, DDIMScheduler):
    __doc__ = """[`DDIMScheduler`] whose direction term uses the LM-corrected noise prediction.

    The DDIM update is x_prev = √ᾱ_prev·x̂0(ε) + √(1 − ᾱ_prev − σ²)·ε + σz. LML replaces the ε of the direction
    term by LM(ε; ε_prev) and keeps x̂0 on the raw ε (docs/lml.md §5), so this class runs the parent's step unchanged and
    adds √(1 − ᾱ_prev − σ²)·(LM(ε) − ε). The ε here is the one the parent puts in its direction term: the converted
    model output, or the one re-derived from the clipped x̂0 with `use_clipped_model_output=True`.

    Args:
        All of [`DDIMScheduler`]'s, plus:
""" + LM_CONFIG_DOC + """
    Note: `DDIMPipeline` converts any scheduler back to `DDIMScheduler` in its constructor; assign
    `pipe.scheduler = LMLDDIMScheduler.from_config(pipe.scheduler.config, ...)` after building it.
    """

    @register_to_config
    @extend_init_signature(DDIMScheduler.__init__)
    def __init__(self, *args, **kwargs):
        split_lm_kwargs(kwargs)
        super().__init__(*args, **kwargs)
        self._init_lm()

    @same_signature_as(DDIMScheduler.set_timesteps)
    def set_timesteps(self, *args, **kwargs) -> None:
        self._reset_lm_state(requested_steps(DDIMScheduler.set_timesteps, self, args, kwargs))
        super().set_timesteps(*args, **kwargs)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        """[`DDIMScheduler.step`] with the LM correction; same arguments and outputs."""
        out = super().step(
            model_output,
            timestep,
            sample,
            eta=eta,
            use_clipped_model_output=use_clipped_model_output,
            generator=generator,
            variance_noise=variance_noise,
            return_dict=True,
        )
        prev_sample = out.prev_sample
        if self.lm_engaged:
            eps = self._direction_epsilon(model_output, timestep, sample, out.pred_original_sample, use_clipped_model_output)
            corrected = self._lm_correct(eps, self._schedule_index(timestep), timestep)
            if corrected is not None:
                coef = self._direction_coefficient(timestep, eta)
                prev_sample = (prev_sample + coef * (corrected - eps)).to(prev_sample.dtype)
        if not return_dict:
            return (prev_sample, out.pred_original_sample)
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=out.pred_original_sample)

    def _direction_epsilon(self, model_output, timestep, sample, pred_original_sample, use_clipped_model_output):
        """The ε of the parent's direction term (scheduling_ddim.py, steps 3 and 5)."""
        alpha_prod_t, _, _ = ddim_alphas(self, timestep)
        beta_prod_t = 1 - alpha_prod_t
        if use_clipped_model_output:
            return (sample - alpha_prod_t ** (0.5) * pred_original_sample) / beta_prod_t ** (0.5)
        if self.config.prediction_type == "sample":
            return (sample - alpha_prod_t ** (0.5) * model_output) / beta_prod_t ** (0.5)
        if self.config.prediction_type == "v_prediction":
            return (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
        return model_output

    def _direction_coefficient(self, timestep, eta: float) -> float:
        """√(1 − ᾱ_prev − σ_t²), σ_t = η·√variance: the weight of ε in the parent's update."""
        _, alpha_prod_t_prev, prev_timestep = ddim_alphas(self, timestep)
        std_dev_t = eta * self._get_variance(int(timestep), prev_timestep) ** 0.5
        return float((1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5)

    def _is_frozen(self, step_index: int, timestep=None) -> bool:
        """Official mode: the released gate, correct while timestep < T·(1 − freeze) with T the training steps.
        Stable mode: step i of the N steps is corrected when i >= freeze·N (docs/lml.md §8)."""
        if self._lm.lm_formula == "official":
            return not int(timestep) < self.config.num_train_timesteps * (1.0 - self._lm.freeze)
        return super()._is_frozen(step_index)

    def _schedule_index(self, timestep: int | torch.Tensor) -> int:
        """Position of `timestep` in the schedule: DDIM keeps no step counter, and its timesteps are distinct.

        Only the stable `freeze` rule reads the position, so without it the lookup (a host sync on accelerators) is
        skipped and 0, which no gate with freeze = 0 freezes, stands in.
        """
        if self._lm.freeze == 0 or self._lm.lm_formula == "official":
            return 0
        hits = (self.timesteps == int(timestep)).nonzero()
        if len(hits) == 0:
            raise ValueError(
                f"timestep {int(timestep)} is not in the schedule set by set_timesteps(); `freeze` needs the "
                "position of each step, so step through `scheduler.timesteps` or use freeze=0"
            )
        return int(hits[0])
