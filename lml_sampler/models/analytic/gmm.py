"""The exact denoiser of a Gaussian mixture with isotropic or diagonal component covariances, and the streaming
softmax average that mixture posteriors (here and in ``empirical.py``) are computed with."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from torch import Tensor

from .base import AnalyticDenoiser, _buffer_dtype, _checked_buffer, _sample_size_entry
from .schedule import NoiseSchedule

__all__ = ["GMMDenoiser"]


def _online_softmax_average(chunks: Iterable[tuple[Tensor, Callable[[Tensor], Tensor]]]) -> Tensor:
    """Σ_k softmax(ℓ)_k · v_k over chunks of k, without holding all logits (streaming log-sum-exp).

    Each chunk is (logits ℓ (B, k), contract) where ``contract(p)`` returns Σ_k p_{bk}·v_{bk} (B, ...) for
    unnormalised weights p = exp(ℓ − m), m the running maximum of ℓ, which keeps every exponent ≤ 0.
    """
    running_max = weight_sum = weighted_sum = None
    for logits, contract in chunks:
        chunk_max = logits.amax(dim=1)
        new_max = chunk_max if running_max is None else torch.maximum(running_max, chunk_max)
        p = torch.exp(logits - new_max[:, None])
        part = contract(p)
        if running_max is None:
            weight_sum, weighted_sum = p.sum(dim=1), part
        else:
            rescale = torch.exp(running_max - new_max)
            weight_sum = weight_sum * rescale + p.sum(dim=1)
            weighted_sum = weighted_sum * rescale.reshape((-1,) + (1,) * (weighted_sum.ndim - 1)) + part
        running_max = new_max
    if weighted_sum is None:
        raise ValueError("empty mixture: no components/images")
    return weighted_sum / weight_sum.reshape((-1,) + (1,) * (weighted_sum.ndim - 1))


class GMMDenoiser(AnalyticDenoiser):
    """Data x0 ~ Σ_k π_k·N(μ_k, S_k), S_k = s_k²·I ("isotropic") or diag(v_k) ("diagonal"), variances ≥ 0.

    With V_k = α²S_k + σ²I (diagonal), the posterior weights are a float64 log-softmax of

        ℓ_k(x) = log π_k − ½·Σ_i [ (x_i − α·μ_{k,i})² / V_{k,i} + log V_{k,i} ],

    and x̂0 = Σ_k w_k·[μ_k + α·S_k·V_k⁻¹·(x − α·μ_k)], i.e. ε̂ = σ·Σ_k w_k·V_k⁻¹·(x − α·μ_k) (docs/lml.md §2).
    Components are processed ``chunk_size`` at a time with a streaming log-sum-exp (memory B·chunk·d).

    Buffers: ``weights`` (K,), ``means`` (K, C, H, W), ``variances`` (K,) or (K, C, H, W). Build with
    ``from_components``; without tensors the constructor makes K equal-weight unit components at 0. The schedule
    entries ``num_train_timesteps`` … ``prediction_type`` are those of :class:`NoiseSchedule`.
    """

    ignore_for_config = ["weights", "means", "variances"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] = 16,
        in_channels: int = 1,
        num_components: int = 1,
        covariance_type: str = "isotropic",
        chunk_size: int = 64,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | None = None,
        prediction_type: str = "epsilon",
        weights: Tensor | None = None,
        means: Tensor | None = None,
        variances: Tensor | None = None,
    ):
        schedule = NoiseSchedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type)
        super().__init__(sample_size, in_channels, schedule)
        k, shape = num_components, self.data_shape
        if k < 1 or chunk_size < 1:
            raise ValueError("num_components and chunk_size must be >= 1")
        if covariance_type not in ("isotropic", "diagonal"):
            raise ValueError(f"covariance_type must be 'isotropic' or 'diagonal', got {covariance_type!r}")
        var_shape = (k,) if covariance_type == "isotropic" else (k, *shape)
        dtype = _buffer_dtype(means, variances, weights)
        weights = _checked_buffer(weights, "weights", (k,), torch.full((k,), 1.0 / k), dtype)
        if torch.any(weights <= 0):
            raise ValueError("weights must be > 0 (drop empty components)")
        variances = _checked_buffer(variances, "variances", var_shape, torch.ones(var_shape), dtype)
        if torch.any(variances < 0):
            raise ValueError("variances must be >= 0")
        self.register_buffer("weights", weights / weights.sum())
        means = _checked_buffer(means, "means", (k, *shape), torch.zeros(k, *shape), dtype)
        self.register_buffer("means", means)
        self.register_buffer("variances", variances)

    @classmethod
    def from_components(cls, weights: Tensor, means: Tensor, variances: Tensor, **kwargs: Any) -> "GMMDenoiser":
        """Mixture from weights (K,) (normalised here), means (K, C, H, W), variances (K,) isotropic or
        (K, C, H, W) diagonal. kwargs: chunk_size and the schedule entries (``NoiseSchedule``)."""
        k, c, h, w = torch.as_tensor(means).shape
        var = torch.as_tensor(variances)
        kind = "isotropic" if var.ndim == 1 else "diagonal"
        return cls(sample_size=_sample_size_entry(h, w), in_channels=c, num_components=k, covariance_type=kind,
                   weights=weights, means=means, variances=variances, **kwargs)

    def _component_variances64(self, device: torch.device) -> Tensor:
        """S_k as (K, C, H, W)-broadcastable float64."""
        v = self._buffer64("variances", device)
        return v.reshape(-1, 1, 1, 1) if v.ndim == 1 else v

    def _component_chunks(
        self, x: Tensor, alpha: Tensor, sigma: Tensor
    ) -> Iterator[tuple[Tensor, Callable[[Tensor], Tensor]]]:
        """Yield (ℓ (B, k), contract) per chunk of components, contract(p) = Σ_k p_k·E[x0 | x, k]."""
        a = alpha.reshape(-1, 1, 1, 1, 1)
        s2 = (sigma**2).reshape(-1, 1, 1, 1, 1)
        log_pi = self._buffer64("weights", x.device).log()
        means = self._buffer64("means", x.device)
        comp_vars = self._component_variances64(x.device)
        dims = tuple(range(2, x.ndim + 1))
        for start in range(0, means.shape[0], self.config.chunk_size):
            chunk = slice(start, start + self.config.chunk_size)
            mu, comp_var = means[chunk][None], comp_vars[chunk][None]  # (1, k, C, H, W)
            noisy_var = a**2 * comp_var + s2  # V_k: (B, k, C|1, H|1, W|1)
            r = x[:, None] - a * mu
            # Σ log V over the broadcast pixels, without materialising the broadcast: each entry of V repeats
            # (pixels / entries of V) times.
            logdet = torch.log(noisy_var).sum(dim=dims) * (r[0, 0].numel() // noisy_var[0, 0].numel())
            logits = log_pi[chunk][None] - 0.5 * ((r**2 / noisy_var).sum(dim=dims) + logdet)
            comp_mean = mu + a * comp_var / noisy_var * r  # (B, k, C, H, W)

            def contract(p: Tensor, comp_mean: Tensor = comp_mean) -> Tensor:
                return torch.einsum("bk,bk...->b...", p, comp_mean)

            yield logits, contract

    def posterior_weights(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """P(k | x) (B, K), float64 (log-softmax of ℓ_k)."""
        x64, a64, s64 = self._float64_inputs(x, alpha, sigma)
        logits = torch.cat([lg for lg, _ in self._component_chunks(x64, a64, s64)], dim=1)
        return torch.log_softmax(logits, dim=1).exp()

    def _posterior_mean(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        return _online_softmax_average(self._component_chunks(x, alpha, sigma))

    def _sample_data(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        w = self._buffer64("weights", device)
        idx = torch.multinomial(w, n, replacement=True, generator=generator) if n else torch.zeros(0, dtype=torch.long)
        z = torch.randn((n, *self.data_shape), generator=generator, device=device, dtype=torch.float64)
        std = self._component_variances64(device).sqrt().expand(-1, *self.data_shape)
        return self._buffer64("means", device)[idx] + std[idx] * z
