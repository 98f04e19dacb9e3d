"""The exact denoiser of the empirical distribution of a finite image set (e.g. the training digits)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from torch import Tensor

from ...data.digits import digits_dataset
from .base import AnalyticDenoiser, _buffer_dtype, _checked_buffer, _sample_size_entry
from .gmm import _online_softmax_average
from .schedule import NoiseSchedule

__all__ = ["EmpiricalDenoiser"]


class EmpiricalDenoiser(AnalyticDenoiser):
    """Data x0 uniform over N images y_n (the limit of a GMM with zero variances): the exact denoiser is

        x̂0 = Σ_n softmax_n(ℓ)·y_n,   ℓ_n = −‖x − α·y_n‖² / (2σ²) = (2α·⟨x, y_n⟩ − α²‖y_n‖²) / (2σ²) + const(x),

    in float64, streamed over chunks of ``chunk_size`` images (memory B·chunk). Buffer ``images`` (N, C, H, W).
    Build with ``from_images`` or ``digits``. The schedule entries ``num_train_timesteps`` … ``prediction_type`` are
    those of :class:`NoiseSchedule`.
    """

    ignore_for_config = ["images"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] = 16,
        in_channels: int = 1,
        num_images: int = 1,
        chunk_size: int = 1024,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | None = None,
        prediction_type: str = "epsilon",
        images: Tensor | None = None,
    ):
        schedule = NoiseSchedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type)
        super().__init__(sample_size, in_channels, schedule)
        if num_images < 1 or chunk_size < 1:
            raise ValueError("num_images and chunk_size must be >= 1")
        shape = (num_images, *self.data_shape)
        images = _checked_buffer(images, "images", shape, torch.zeros(shape), _buffer_dtype(images))
        self.register_buffer("images", images)

    @classmethod
    def from_images(cls, images: Tensor, **kwargs: Any) -> "EmpiricalDenoiser":
        """Empirical distribution of images (N, C, H, W). kwargs: chunk_size and the schedule entries
        (``NoiseSchedule``)."""
        n, c, h, w = torch.as_tensor(images).shape
        return cls(sample_size=_sample_size_entry(h, w), in_channels=c, num_images=n, images=images, **kwargs)

    @classmethod
    def digits(cls, size: int = 16, split: str = "train", **kwargs: Any) -> "EmpiricalDenoiser":
        """Empirical distribution of ``digits_dataset(size, split)`` (``lml_sampler.data.digits``: 1438 "train" /
        359 "test" images in [-1, 1]); its training-set truth is exactly the bundled digits models' training data."""
        return cls.from_images(digits_dataset(size, split), **kwargs)

    def _posterior_mean(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        xf = x.reshape(x.shape[0], -1)
        a, s2 = alpha[:, None], (sigma**2)[:, None]
        images = self._buffer64("images", x.device).reshape(self.images.shape[0], -1)

        def chunks() -> Iterator[tuple[Tensor, Callable[[Tensor], Tensor]]]:
            for start in range(0, images.shape[0], self.config.chunk_size):
                y = images[start : start + self.config.chunk_size]
                logits = (2.0 * a * (xf @ y.T) - a**2 * (y**2).sum(dim=1)[None]) / (2.0 * s2)
                yield logits, (lambda p, y=y: p @ y)

        return _online_softmax_average(chunks()).reshape(x.shape)

    def _sample_data(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        idx = torch.randint(self.images.shape[0], (n,), generator=generator, device=device)
        return self._buffer64("images", device)[idx]
