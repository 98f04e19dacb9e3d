"""The base class of the exact-score denoisers: the ``UNet2DModel`` calling convention and the output conversion.

Every model output derives from one method, the posterior mean (Tweedie)::

    x̂0(x; α, σ) = E[x0 | α·x0 + σ·ε = x]

    ε̂ = (x − α·x̂0) / σ                        (prediction_type="epsilon")
    x̂0                                          ("sample")
    v̂ = α·ε̂ − σ·x̂0                             ("v_prediction", diffusers' v)
    û = ε̂ − x̂0 = dx_s/ds                        ("flow", the flow-matching velocity)

All arithmetic is float64; outputs come back in the input's dtype. The distribution parameters are module buffers, so
``save_pretrained``/``from_pretrained`` round-trip and ``.to(dtype)`` sets the dtype of the pipelines' noise
(``unet.dtype``). The denoiser is exact for the distribution defined by the *stored* buffers, so the subclasses'
covariances, ``sample_data()`` and the denoiser always agree, whatever the buffer dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import Tensor

from .schedule import PREDICTION_TYPES, NoiseSchedule, _schedule_entries

__all__ = ["AnalyticDenoiser", "prediction_from_x0"]


def prediction_from_x0(x: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str) -> Tensor:
    """Convert a posterior mean x̂0 at x = α·x0 + σ·ε into the requested model output.

    ``x``, ``x0``: (B, ...); ``alpha``, ``sigma``: (B,). With ε̂ = (x − α·x̂0)/σ:
    "epsilon" → ε̂; "sample" → x̂0; "v_prediction" → α·ε̂ − σ·x̂0; "flow" → ε̂ − x̂0.
    """
    shape = (-1,) + (1,) * (x.ndim - 1)
    a, s = alpha.reshape(shape), sigma.reshape(shape)
    if prediction_type == "sample":
        return x0
    eps = (x - a * x0) / s
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return a * eps - s * x0
    if prediction_type == "flow":
        return eps - x0
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


# Buffer and config conventions shared by the subclasses.


def _sample_size_entry(height: int, width: int) -> int | list[int]:
    """Config value: an int for square images (what the pipelines expect), else [H, W] (JSON-stable)."""
    return height if height == width else [height, width]


def _height_width(sample_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(H, W) of a ``sample_size`` config value, an int (square) or a pair."""
    if isinstance(sample_size, int):
        return sample_size, sample_size
    if isinstance(sample_size, (tuple, list)) and len(sample_size) == 2:
        return int(sample_size[0]), int(sample_size[1])
    raise ValueError(f"sample_size must be an int or (height, width), got {sample_size!r}")


def _buffer_dtype(*tensors: Tensor | np.ndarray | list | None) -> torch.dtype:
    """The buffers' dtype: that of the first floating tensor given (so float64 data stays float64), else float32."""
    for t in tensors:
        if t is not None and torch.as_tensor(t).is_floating_point():
            return torch.as_tensor(t).dtype
    return torch.float32


def _checked_buffer(t: Tensor | None, name: str, shape: tuple[int, ...], default: Tensor, dtype: torch.dtype) -> Tensor:
    """A detached floating copy of t (or the default) with the required shape, cast to the buffers' dtype."""
    if t is None:
        return default.to(dtype)
    t = _finite_float_copy(t, name)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    return t.to(dtype)


def _finite_float_copy(t: Tensor | np.ndarray | list, name: str) -> Tensor:
    """A detached copy of t as a floating tensor (integers become float32); raises unless every entry is finite."""
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if not torch.all(torch.isfinite(t)):
        raise ValueError(f"{name} must be finite")
    return t.detach().clone()


class AnalyticDenoiser(ModelMixin, ConfigMixin):
    """Base class: an exact denoiser callable like ``UNet2DModel``: ``model(sample, timestep).sample``.

    Subclasses register their distribution parameters as buffers and implement ``_posterior_mean`` (float64) and
    ``_sample_data``. Config keys read by the stock pipelines: ``sample_size``, ``in_channels``. A subclass
    constructor (its diffusers config) takes ``sample_size``, ``in_channels``, its own parameters and the six
    schedule entries ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``, ``trained_betas``,
    ``prediction_type`` (see :class:`NoiseSchedule`), which it passes on here as one ``NoiseSchedule``.

    Args:
        sample_size: H = W (int) or (H, W).
        in_channels: C.
        schedule: the noise schedule and prediction type; must hold the subclass's config entries.
    """

    def __init__(self, sample_size: int | tuple[int, int], in_channels: int, schedule: NoiseSchedule):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        height, width = _height_width(sample_size)
        if not isinstance(sample_size, int):
            self.register_to_config(sample_size=_sample_size_entry(height, width))  # tuples would reload as lists
        self.data_shape: tuple[int, int, int] = (int(in_channels), height, width)
        if schedule.trained_betas is not None:
            self.register_to_config(trained_betas=list(schedule.trained_betas))  # JSON-safe in the saved config
        # Not a buffer: the schedule is fully determined by the config, and must not be rounded by .to(dtype).
        self.schedule = schedule

    # -- interface for subclasses -------------------------------------------------------------------------------------

    def _posterior_mean(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """E[x0 | x] for float64 x (B, C, H, W), alpha, sigma (B,); returns float64."""
        raise NotImplementedError

    def _sample_data(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """n exact float64 samples (n, C, H, W) of the data distribution."""
        raise NotImplementedError

    # -- public API ---------------------------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """d = C·H·W."""
        return math.prod(self.data_shape)

    @property
    def alphas_cumprod(self) -> Tensor:
        """ᾱ_t, t = 0 … T−1 (float64, CPU), exactly as ``DDPMScheduler`` builds it for this config."""
        return self.schedule.alphas_cumprod

    @classmethod
    def from_scheduler_config(cls, scheduler_config: Mapping[str, Any] | ConfigMixin, **model_kwargs: Any):
        """Build the model with the noise schedule (and prediction type) of a scheduler or its config.

        ``model_kwargs`` (data parameters, overrides) go to the constructor; schedule entries the scheduler does not
        set keep the constructor defaults. For the factory classmethods use
        ``Factory(**NoiseSchedule.from_scheduler(cfg).model_kwargs(), ...)`` instead.
        """
        kwargs = _schedule_entries(scheduler_config)
        kwargs.update(model_kwargs)
        return cls(**kwargs)

    def alpha_sigma(self, timestep: Tensor | float | int, batch_size: int) -> tuple[Tensor, Tensor]:
        """(α, σ), float64 tensors of shape (batch_size,), for a timestep of the model's convention.

        See ``NoiseSchedule.alpha_sigma``: VP α = √ᾱ(t), σ = √(1 − ᾱ(t)) (ᾱ interpolated linearly at non-integer
        t ∈ [0, T−1]); flow s = t / T ∈ (0, 1], α = 1 − s, σ = s.
        """
        return self.schedule.alpha_sigma(timestep, batch_size)

    def posterior_mean(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """E[x0 | x = α·x0 + σ·ε], computed in float64, returned in x's dtype.

        Args:
            x: (B, C, H, W).
            alpha, sigma: (B,) per-sample scales, α ≥ 0, σ > 0.
        """
        x64, a64, s64 = self._float64_inputs(x, alpha, sigma)
        return self._posterior_mean(x64, a64, s64).to(x.dtype)

    def predict(self, x: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str | None = None) -> Tensor:
        """The model output for explicit (α, σ) of shape (B,): see ``prediction_from_x0``; x's dtype.

        ``prediction_type`` defaults to the schedule's."""
        x64, a64, s64 = self._float64_inputs(x, alpha, sigma)
        x0 = self._posterior_mean(x64, a64, s64)
        out = prediction_from_x0(x64, x0, a64, s64, prediction_type or self.schedule.prediction_type)
        return out.to(x.dtype)

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor | float | int,
        class_labels: Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple[Tensor]:
        """``UNet2DModel``-compatible call: the exact ``prediction_type`` output at (sample, timestep)."""
        if class_labels is not None:
            raise ValueError("analytic denoisers are unconditional: pass class_labels=None")
        if not isinstance(sample, Tensor) or sample.ndim != 4:
            raise ValueError(f"sample must be a (B, C, H, W) tensor, got {getattr(sample, 'shape', type(sample))}")
        alpha, sigma = self.alpha_sigma(timestep, sample.shape[0])
        out = self.predict(sample, alpha.to(sample.device), sigma.to(sample.device))
        if not return_dict:
            return (out,)
        return UNet2DOutput(sample=out)

    def sample_data(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """n exact samples (n, C, H, W) of the data distribution, on the model's device.

        Random numbers are drawn on ``generator.device`` (else the model's device) in float64; ``dtype`` defaults to
        the model's dtype.
        """
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        device = generator.device if generator is not None else self.device
        x = self._sample_data(n, generator, device)
        return x.to(device=self.device, dtype=dtype or self.dtype)

    # -- helpers ------------------------------------------------------------------------------------------------------

    def _float64_inputs(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x, α, σ validated (shapes, σ > 0, α ≥ 0) and as float64 on x's device."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.data_shape))}), got {tuple(x.shape)}")
        batch = x.shape[0]
        alpha, sigma = torch.as_tensor(alpha), torch.as_tensor(sigma)
        if alpha.shape != (batch,) or sigma.shape != (batch,):
            raise ValueError(
                f"alpha and sigma must have shape (batch,)=({batch},), got {tuple(alpha.shape)}, {tuple(sigma.shape)}"
            )
        a64 = alpha.to(device=x.device, dtype=torch.float64)
        s64 = sigma.to(device=x.device, dtype=torch.float64)
        if torch.any(s64 <= 0) or torch.any(a64 < 0):
            raise ValueError("need sigma > 0 and alpha >= 0 (the posterior mean at sigma = 0 is x / alpha itself)")
        return x.to(torch.float64), a64, s64

    def _buffer64(self, name: str, device: torch.device) -> Tensor:
        """Buffer ``name`` as float64 on ``device``."""
        return getattr(self, name).to(device=device, dtype=torch.float64)
