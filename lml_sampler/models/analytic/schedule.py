"""The noise schedule of the analytic denoisers: ᾱ_t, the prediction type and the timestep → (α, σ) map.

Variance preserving (diffusers' DDPM convention)::

    x_t = α·x0 + σ·ε,   α = √ᾱ_t,  σ = √(1 − ᾱ_t),  ε ~ N(0, I)

Flow matching (``FlowMatchEulerDiscreteScheduler`` convention, ``prediction_type="flow"``)::

    x_s = (1 − s)·x0 + s·ε,   s = timestep / num_train_timesteps,  i.e. α = 1 − s, σ = s
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin
from torch import Tensor

__all__ = ["NoiseSchedule", "PREDICTION_TYPES", "SCHEDULE_KEYS", "interpolate_alphas_cumprod"]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow")
# The DDPMScheduler arguments that determine ᾱ; with prediction_type they are the schedule entries of a model config.
SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")


def interpolate_alphas_cumprod(alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """ᾱ(t) at real t ∈ [0, T−1], linear in t between the integer entries.

    ᾱ(t) = (1 − w)·ᾱ[⌊t⌋] + w·ᾱ[⌊t⌋ + 1],  w = t − ⌊t⌋  (exact table values at integer t).
    """
    last = alphas_cumprod.shape[0] - 1
    t = t.to(torch.float64)
    if torch.any(t < 0) or torch.any(t > last) or not torch.all(torch.isfinite(t)):
        raise ValueError(
            f"timestep must lie in [0, {last}] (num_train_timesteps - 1) for a VP model, got {t.tolist()}; "
            "for flow matching build the model with prediction_type='flow'"
        )
    lo = torch.clamp(torch.floor(t), max=last - 1).long() if last > 0 else torch.zeros_like(t, dtype=torch.long)
    w = t - lo.to(torch.float64)
    table = alphas_cumprod.to(t.device)
    if last == 0:
        return table[lo]
    return (1.0 - w) * table[lo] + w * table[lo + 1]


def _schedule_entries(scheduler_config: Mapping[str, Any] | ConfigMixin) -> dict[str, Any]:
    """The schedule entries that a scheduler (or its config) sets, as model constructor kwargs.

    ``num_train_timesteps`` plus, where present, ``beta_start``, ``beta_end``, ``beta_schedule``, ``trained_betas``;
    ``prediction_type`` from the config, or ``"flow"`` for a FlowMatch scheduler. Absent entries stay absent, so
    that the model's own defaults apply to them.
    """
    config = scheduler_config.config if isinstance(scheduler_config, ConfigMixin) else scheduler_config
    if not isinstance(config, Mapping):
        raise TypeError("scheduler_config must be a scheduler or its config mapping (scheduler.config)")
    entries = {k: config[k] for k in SCHEDULE_KEYS if k in config}
    class_name = str(config.get("_class_name", type(scheduler_config).__name__))
    if "FlowMatch" in class_name:
        entries["prediction_type"] = "flow"
    elif config.get("prediction_type") is not None:
        entries["prediction_type"] = config["prediction_type"]
    return entries


@dataclass(frozen=True)
class NoiseSchedule:
    """The noise schedule and prediction type of an analytic model: the schedule entries of its diffusers config.

    Attributes:
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas: as ``DDPMScheduler`` (VP models).
            ``trained_betas`` is stored as a tuple of the Python floats of ``torch.as_tensor(trained_betas)`` (so a
            list of floats passes through float32, to which ``DDPMScheduler`` rounds β in any case). For
            ``prediction_type="flow"`` only ``num_train_timesteps`` matters (s = t / T).
        prediction_type: "epsilon" | "sample" | "v_prediction" | "flow".
        alphas_cumprod: ᾱ_t for t = 0 … T−1, float64 (CPU), computed by ``DDPMScheduler`` itself. The scheduler
            builds ᾱ in float32; those values are kept exactly (upcast), so the model is exact for the very ᾱ the
            stock schedulers step with, for any ``beta_schedule`` diffusers supports.

    Build it from a scheduler with ``from_scheduler``; ``model_kwargs()`` gives the entries as constructor kwargs of
    any analytic model or factory.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | list[float] | np.ndarray | Tensor | None = None
    prediction_type: str = "epsilon"
    alphas_cumprod: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.trained_betas is not None:
            # Plain floats: JSON-safe in a saved config, and hashable.
            betas = tuple(float(b) for b in torch.as_tensor(self.trained_betas).flatten().tolist())
            object.__setattr__(self, "trained_betas", betas)
        scheduler = DDPMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            beta_schedule=self.beta_schedule,
            trained_betas=None if self.trained_betas is None else list(self.trained_betas),
        )
        object.__setattr__(self, "alphas_cumprod", scheduler.alphas_cumprod.to(torch.float64))

    @classmethod
    def from_scheduler(cls, scheduler_config: Mapping[str, Any] | ConfigMixin) -> NoiseSchedule:
        """The schedule of a diffusers scheduler or its config (``scheduler.config``).

        Takes ``num_train_timesteps`` and, where present, ``beta_start``, ``beta_end``, ``beta_schedule``,
        ``trained_betas`` and ``prediction_type`` (``"flow"`` for a FlowMatch scheduler); the rest keep the defaults.
        """
        return cls(**_schedule_entries(scheduler_config))

    def model_kwargs(self) -> dict[str, Any]:
        """The six schedule entries as constructor kwargs (``trained_betas`` a list), e.g.
        ``GaussianDenoiser.stationary(**schedule.model_kwargs())``."""
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "beta_schedule": self.beta_schedule,
            "trained_betas": None if self.trained_betas is None else list(self.trained_betas),
            "prediction_type": self.prediction_type,
        }

    def alpha_sigma(self, timestep: Tensor | float | int, batch_size: int) -> tuple[Tensor, Tensor]:
        """(α, σ), float64 tensors of shape (batch_size,), for a timestep of this schedule's convention.

        VP: α = √ᾱ(t), σ = √(1 − ᾱ(t)), ᾱ linearly interpolated at non-integer t ∈ [0, T−1].
        flow: s = t / T ∈ (0, 1], α = 1 − s, σ = s.
        ``timestep``: a number, a 0-d or one-element tensor (shared by the batch), or a (batch_size,) tensor.
        """
        t = torch.as_tensor(timestep)
        if t.ndim == 0 or t.shape == (1,):
            t = t.reshape(()).expand(batch_size)
        elif t.shape != (batch_size,):
            raise ValueError(
                f"timestep must be a scalar or have shape (batch,)=({batch_size},), got {tuple(t.shape)}"
            )
        t = t.to(torch.float64)
        if self.prediction_type == "flow":
            s = t / self.num_train_timesteps
            if torch.any(s <= 0) or torch.any(s > 1) or not torch.all(torch.isfinite(s)):
                raise ValueError(
                    "flow timestep must lie in (0, num_train_timesteps] (sigma = t / num_train_timesteps in (0, 1]), "
                    f"got {t.tolist()}"
                )
            return 1.0 - s, s
        abar = interpolate_alphas_cumprod(self.alphas_cumprod, t)
        return abar.sqrt(), (1.0 - abar).sqrt()
