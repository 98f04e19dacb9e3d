"""Exact-score ("analytic") denoisers with the calling convention of diffusers' ``UNet2DModel``.

They replace a trained network by the exact minimum-mean-square-error denoiser of a known data distribution, so
that a sampler's error can be measured in isolation from any network error.

Forward process (variance preserving, diffusers' DDPM convention)::

    x_t = α·x0 + σ·ε,   α = √ᾱ_t,  σ = √(1 − ᾱ_t),  ε ~ N(0, I)

Flow matching (``FlowMatchEulerDiscreteScheduler`` convention, ``prediction_type="flow"``)::

    x_s = (1 − s)·x0 + s·ε,   s = timestep / num_train_timesteps,  i.e. α = 1 − s, σ = s

Everything derives from one method, the posterior mean (Tweedie)::

    x̂0(x; α, σ) = E[x0 | α·x0 + σ·ε = x]

    ε̂ = (x − α·x̂0) / σ                        (prediction_type="epsilon")
    x̂0                                          ("sample")
    v̂ = α·ε̂ − σ·x̂0                             ("v_prediction", diffusers' v)
    û = ε̂ − x̂0 = dx_s/ds                        ("flow", the flow-matching velocity)

All arithmetic is float64; outputs come back in the input's dtype. The distribution parameters are module buffers, so
``save_pretrained``/``from_pretrained`` round-trip and ``.to(dtype)`` sets the dtype of the pipelines' noise
(``unet.dtype``). The denoiser is exact for the distribution defined by the *stored* buffers, so ``covariance()``,
``sample_data()`` and the denoiser always agree, whatever the buffer dtype.

Models:

* ``GaussianDenoiser``: N(μ, Σ) with Σ diagonal, diagonal-plus-low-rank, or stationary (diagonal in the unitary 2-D
  DFT basis). ``GaussianDenoiser.stationary()`` is the discriminating benchmark of ``spec/benchmarks.md``.
* ``GMMDenoiser``: a mixture of Gaussians with isotropic or diagonal covariances.
* ``EmpiricalDenoiser``: the empirical distribution of a finite image set; ``EmpiricalDenoiser.digits()`` uses
  ``digits_dataset()`` (sklearn's bundled 8×8 digits, upsampled; re-exported from ``lml_sampler.data.digits``), the
  preprocessing shared with the bundled models and the domain FID.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import Tensor

# Re-exported: the one preprocessing shared by the bundled digits models, the domain FID and EmpiricalDenoiser.digits.
from ..data.digits import digits_dataset

__all__ = [
    "AnalyticDenoiser",
    "GaussianDenoiser",
    "GMMDenoiser",
    "EmpiricalDenoiser",
    "digits_dataset",
    "schedule_kwargs_from_config",
    "alphas_cumprod_from_schedule",
    "interpolate_alphas_cumprod",
    "prediction_from_x0",
    "stationary_spectrum",
]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow")
SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")

# Dense covariances beyond this dimension cost > 128 MiB in float64; covariance() refuses unless asked.
_MAX_DENSE_DIM = 4096


# ----------------------------------------------------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------------------------------------------------


def alphas_cumprod_from_schedule(
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
    trained_betas: list[float] | np.ndarray | Tensor | None = None,
) -> Tensor:
    """ᾱ_t for t = 0 … T−1, float64, computed by ``DDPMScheduler`` itself.

    The scheduler builds ᾱ in float32; those values are returned exactly (upcast), so the model is exact for the very
    ᾱ the stock schedulers step with, for any ``beta_schedule`` diffusers supports.
    """
    if trained_betas is not None:
        trained_betas = [float(b) for b in torch.as_tensor(trained_betas).flatten().tolist()]
    scheduler = DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=beta_start,
        beta_end=beta_end,
        beta_schedule=beta_schedule,
        trained_betas=trained_betas,
    )
    return scheduler.alphas_cumprod.to(torch.float64)


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


def stationary_spectrum(size: int = 16, channels: int = 1, total_variance: float = 64.0) -> Tensor:
    """Power spectrum p (channels, size, size), float64, of the stationary benchmark of ``spec/benchmarks.md``.

    p(f) ∝ 1/|f|², |f| = √(f_y² + f_x²) with f from ``torch.fft.fftfreq(size)``, where the DC term |f| is set to 1/16
    (so the raw DC power is 256, that of the lowest non-zero frequency at 16×16); then p is scaled so that
    trace Σ = Σ_f p(f) = ``total_variance`` (summed over all channels; the default gives a mean per-pixel variance of
    0.25 at 16×16×1).

    "DC set to 1/16" is read as the DC *frequency*: with this reading the transfer-matrix Fréchet distances of
    benchmarks.md (DDIM trailing 11.81 / 4.049 / 1.184 / 0.2114, DPM-Solver++ 2M 9.919 / 2.540 / 0.4041 / 0.01282 at
    NFE 5 / 10 / 20 / 50) are reproduced to all printed digits; setting the DC *power* to 1/16 gives 11.93 / 4.061 / ….
    """
    if size < 2 or channels < 1 or not total_variance > 0:
        raise ValueError("stationary_spectrum needs size >= 2, channels >= 1 and total_variance > 0")
    f = torch.fft.fftfreq(size, dtype=torch.float64)
    radius2 = f[:, None] ** 2 + f[None, :] ** 2
    radius2[0, 0] = (1.0 / 16.0) ** 2
    p = 1.0 / radius2
    p = p.expand(channels, size, size).clone()
    return p * (total_variance / p.sum())


def schedule_kwargs_from_config(scheduler_config: Mapping[str, Any] | ConfigMixin) -> dict[str, Any]:
    """The noise-schedule kwargs of an analytic model from a scheduler (or its config).

    Returns ``num_train_timesteps`` plus, where present, ``beta_start``, ``beta_end``, ``beta_schedule``,
    ``trained_betas``; adds ``prediction_type`` from the config, or ``"flow"`` for a FlowMatch scheduler.
    """
    config = scheduler_config.config if isinstance(scheduler_config, ConfigMixin) else scheduler_config
    if not isinstance(config, Mapping):
        raise TypeError("scheduler_config must be a scheduler or its config mapping (scheduler.config)")
    kwargs = {k: config[k] for k in SCHEDULE_KEYS if k in config}
    class_name = str(config.get("_class_name", type(scheduler_config).__name__))
    if "FlowMatch" in class_name:
        kwargs["prediction_type"] = "flow"
    elif config.get("prediction_type") is not None:
        kwargs["prediction_type"] = config["prediction_type"]
    return kwargs


def _online_softmax_average(chunks: Iterable[tuple[Tensor, Callable[[Tensor], Tensor]]]) -> Tensor:
    """Σ_k softmax(ℓ)_k · v_k over chunks of k, without holding all logits (streaming log-sum-exp).

    Each chunk is (logits ℓ (B, k), contract) where ``contract(p)`` returns Σ_k p_{bk}·v_{bk} (B, ...) for
    unnormalised weights p = exp(ℓ − m). The running maximum m keeps every exponent ≤ 0.
    """
    m = total = acc = None
    for logits, contract in chunks:
        chunk_max = logits.amax(dim=1)
        m_new = chunk_max if m is None else torch.maximum(m, chunk_max)
        p = torch.exp(logits - m_new[:, None])
        part = contract(p)
        if m is None:
            total, acc = p.sum(dim=1), part
        else:
            scale = torch.exp(m - m_new)
            total = total * scale + p.sum(dim=1)
            acc = acc * scale.reshape((-1,) + (1,) * (acc.ndim - 1)) + part
        m = m_new
    if acc is None:
        raise ValueError("empty mixture: no components/images")
    return acc / total.reshape((-1,) + (1,) * (acc.ndim - 1))


def _sample_size(height: int, width: int) -> int | list[int]:
    """Config value: an int for square images (what the pipelines expect), else [H, W] (JSON-stable)."""
    return height if height == width else [height, width]


def _as_hw(sample_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
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


def _checked(t: Tensor | None, name: str, shape: tuple[int, ...], default: Tensor, dtype: torch.dtype) -> Tensor:
    """A detached floating copy of t (or the default) with the required shape, cast to the buffers' dtype."""
    if t is None:
        return default.to(dtype)
    t = _floating(t, name)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    return t.to(dtype)


def _floating(t: Tensor | np.ndarray | list, name: str) -> Tensor:
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if not torch.all(torch.isfinite(t)):
        raise ValueError(f"{name} must be finite")
    return t.detach().clone()


# ----------------------------------------------------------------------------------------------------------------------
# Base class
# ----------------------------------------------------------------------------------------------------------------------


class AnalyticDenoiser(ModelMixin, ConfigMixin):
    """Base class: an exact denoiser callable like ``UNet2DModel``: ``model(sample, timestep).sample``.

    Subclasses register their distribution parameters as buffers and implement ``_posterior_mean`` (float64) and
    ``_sample_data``. Config keys read by the stock pipelines: ``sample_size``, ``in_channels``.

    Args (shared by every subclass):
        sample_size: H = W (int) or (H, W).
        in_channels: C.
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas: as ``DDPMScheduler``; ᾱ is built by
            it (VP models). For ``prediction_type="flow"`` only ``num_train_timesteps`` matters (s = t / T).
        prediction_type: "epsilon" | "sample" | "v_prediction" | "flow".
    """

    def __init__(
        self,
        sample_size: int | tuple[int, int] = 16,
        in_channels: int = 1,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | None = None,
        prediction_type: str = "epsilon",
    ):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        height, width = _as_hw(sample_size)
        if not isinstance(sample_size, int):
            self.register_to_config(sample_size=_sample_size(height, width))  # tuples would reload as lists
        self.data_shape: tuple[int, int, int] = (int(in_channels), height, width)
        if trained_betas is not None:
            # JSON-safe in the saved config.
            trained_betas = [float(b) for b in torch.as_tensor(trained_betas).flatten().tolist()]
            self.register_to_config(trained_betas=trained_betas)
        # Not a buffer: the schedule is fully determined by the config, and must not be rounded by .to(dtype).
        self._alphas_cumprod = alphas_cumprod_from_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas
        )

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
        return self._alphas_cumprod

    @classmethod
    def from_scheduler_config(cls, scheduler_config: Mapping[str, Any] | ConfigMixin, **model_kwargs: Any):
        """Build the model with the noise schedule (and prediction type) of a scheduler or its config.

        ``model_kwargs`` (data parameters, overrides) go to the constructor. For the factory classmethods use
        ``Factory(**schedule_kwargs_from_config(cfg), ...)`` instead.
        """
        kwargs = schedule_kwargs_from_config(scheduler_config)
        kwargs.update(model_kwargs)
        return cls(**kwargs)

    def alpha_sigma(self, timestep: Tensor | float | int, batch_size: int) -> tuple[Tensor, Tensor]:
        """(α, σ), float64 tensors of shape (batch_size,), for a timestep of the model's convention.

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
        if self.config.prediction_type == "flow":
            s = t / self.config.num_train_timesteps
            if torch.any(s <= 0) or torch.any(s > 1) or not torch.all(torch.isfinite(s)):
                raise ValueError(
                    "flow timestep must lie in (0, num_train_timesteps] (sigma = t / num_train_timesteps in (0, 1]), "
                    f"got {t.tolist()}"
                )
            return 1.0 - s, s
        abar = interpolate_alphas_cumprod(self._alphas_cumprod, t)
        return abar.sqrt(), (1.0 - abar).sqrt()

    def posterior_mean(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """E[x0 | x = α·x0 + σ·ε], computed in float64, returned in x's dtype.

        Args:
            x: (B, C, H, W).
            alpha, sigma: (B,) per-sample scales, α ≥ 0, σ > 0.
        """
        x64, a64, s64 = self._check_inputs(x, alpha, sigma)
        return self._posterior_mean(x64, a64, s64).to(x.dtype)

    def predict(self, x: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str | None = None) -> Tensor:
        """The model output for explicit (α, σ) of shape (B,): see ``prediction_from_x0``; x's dtype."""
        x64, a64, s64 = self._check_inputs(x, alpha, sigma)
        x0 = self._posterior_mean(x64, a64, s64)
        out = prediction_from_x0(x64, x0, a64, s64, prediction_type or self.config.prediction_type)
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

    def _check_inputs(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
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
        return getattr(self, name).to(device=device, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------------------------
# Gaussian
# ----------------------------------------------------------------------------------------------------------------------


class GaussianDenoiser(AnalyticDenoiser):
    """Data x0 ~ N(μ, Σ) on (C, H, W) images; posterior mean x̂0 = μ + α·Σ·(α²Σ + σ²I)⁻¹·(x − α·μ).

    ``covariance_type``:

    * ``"diag"``: Σ = diag(variance), variance (C, H, W) ≥ 0.
    * ``"lowrank"``: Σ = diag(variance) + U·Uᵀ, variance (C, H, W) > 0, U = ``factor`` (d, rank); Woodbury in float64.
    * ``"fourier"``: Σ = F⁻¹·diag(p)·F with F the unitary 2-D DFT over (H, W), per channel, p = ``spectrum`` (C, H, W)
      ≥ 0 and Hermitian-symmetric (p[c, −i, −j] = p[c, i, j], so Σ is real). x̂0 = μ + F⁻¹[α·p/(α²p + σ²)·F(x − α·μ)].

    Use the factories ``from_diag``, ``from_lowrank``, ``from_spectrum`` and ``stationary``; the constructor takes the
    same tensors (not stored in the config; they are buffers) and, without them, builds N(0, I).
    """

    ignore_for_config = ["mean", "variance", "factor", "spectrum"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] = 16,
        in_channels: int = 1,
        covariance_type: str = "diag",
        rank: int = 0,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | None = None,
        prediction_type: str = "epsilon",
        mean: Tensor | None = None,
        variance: Tensor | None = None,
        factor: Tensor | None = None,
        spectrum: Tensor | None = None,
    ):
        super().__init__(
            sample_size, in_channels, num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
            prediction_type,
        )
        shape, d = self.data_shape, self.dim
        if covariance_type not in ("diag", "lowrank", "fourier"):
            raise ValueError(f"covariance_type must be 'diag', 'lowrank' or 'fourier', got {covariance_type!r}")
        if covariance_type == "lowrank" and rank < 1:
            raise ValueError("covariance_type='lowrank' needs rank >= 1")
        dtype = _buffer_dtype(mean, variance, factor, spectrum)
        self.register_buffer("mean", _checked(mean, "mean", shape, torch.zeros(shape), dtype))
        if covariance_type in ("diag", "lowrank"):
            var = _checked(variance, "variance", shape, torch.ones(shape), dtype)
            if torch.any(var < 0) or (covariance_type == "lowrank" and torch.any(var <= 0)):
                raise ValueError("variance must be >= 0 ('diag') or > 0 ('lowrank', for the Woodbury solve)")
            self.register_buffer("variance", var)
        if covariance_type == "lowrank":
            self.register_buffer("factor", _checked(factor, "factor", (d, rank), torch.zeros(d, rank), dtype))
        if covariance_type == "fourier":
            p = _checked(spectrum, "spectrum", shape, torch.ones(shape), dtype)
            if torch.any(p < 0):
                raise ValueError("spectrum must be >= 0")
            mirrored = torch.roll(torch.flip(p, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
            if not torch.allclose(p, mirrored, rtol=1e-6, atol=0.0):
                raise ValueError("spectrum must be Hermitian-symmetric, p[c, -i, -j] == p[c, i, j], for a real Σ")
            self.register_buffer("spectrum", p)
        unused = {"variance": variance, "factor": factor, "spectrum": spectrum}
        needed = {"diag": {"variance"}, "lowrank": {"variance", "factor"}, "fourier": {"spectrum"}}[covariance_type]
        extra = [k for k, v in unused.items() if v is not None and k not in needed]
        if extra:
            raise ValueError(f"{extra} given but unused with covariance_type={covariance_type!r}")

    # -- factories ----------------------------------------------------------------------------------------------------

    @classmethod
    def from_diag(cls, mean: Tensor, variance: Tensor, **kwargs: Any) -> "GaussianDenoiser":
        """N(mean, diag(variance)); mean, variance (C, H, W). kwargs: schedule and prediction_type."""
        c, h, w = _floating(mean, "mean").shape
        return cls(sample_size=_sample_size(h, w), in_channels=c, covariance_type="diag",
                   mean=mean, variance=variance, **kwargs)

    @classmethod
    def from_lowrank(cls, mean: Tensor, variance: Tensor, factor: Tensor, **kwargs: Any) -> "GaussianDenoiser":
        """N(mean, diag(variance) + U·Uᵀ); mean, variance (C, H, W), factor U (C·H·W, rank)."""
        c, h, w = _floating(mean, "mean").shape
        rank = torch.as_tensor(factor).shape[-1]
        return cls(sample_size=_sample_size(h, w), in_channels=c, covariance_type="lowrank", rank=rank,
                   mean=mean, variance=variance, factor=factor, **kwargs)

    @classmethod
    def from_spectrum(cls, spectrum: Tensor, mean: Tensor | None = None, **kwargs: Any) -> "GaussianDenoiser":
        """Stationary N(mean, F⁻¹·diag(spectrum)·F); spectrum (C, H, W) in ``torch.fft.fft2`` frequency order."""
        c, h, w = torch.as_tensor(spectrum).shape
        return cls(sample_size=_sample_size(h, w), in_channels=c, covariance_type="fourier",
                   mean=mean, spectrum=spectrum, **kwargs)

    @classmethod
    def stationary(
        cls, size: int = 16, channels: int = 1, total_variance: float = 64.0, dtype: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> "GaussianDenoiser":
        """The stationary benchmark of ``spec/benchmarks.md``: N(0, Σ), spectrum ``stationary_spectrum``.

        ``total_variance`` = trace Σ over all channels (64 = 0.25 per pixel at 16×16×1; keep 0.25 per pixel with
        ``total_variance=0.25 * channels * size**2``). ``dtype``: the buffers' (and pipelines' noise) dtype; use
        torch.float64 for the reference measurements. kwargs: schedule and prediction_type.
        """
        p = stationary_spectrum(size, channels, total_variance).to(dtype)
        return cls.from_spectrum(p, **kwargs)

    # -- covariance ---------------------------------------------------------------------------------------------------

    def cov_matvec(self, x: Tensor) -> Tensor:
        """Σ·x for x (B, C, H, W) (no mean), computed in float64, returned in x's dtype."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.data_shape))}), got {tuple(x.shape)}")
        return self._cov_matvec64(x.to(torch.float64)).to(x.dtype)

    def _cov_matvec64(self, x: Tensor) -> Tensor:
        kind = self.config.covariance_type
        if kind == "fourier":
            p = self._buffer64("spectrum", x.device)
            return torch.fft.ifft2(p * torch.fft.fft2(x, norm="ortho"), norm="ortho").real
        out = self._buffer64("variance", x.device) * x
        if kind == "lowrank":
            u = self._buffer64("factor", x.device)
            out = out + ((x.flatten(1) @ u) @ u.T).reshape(x.shape)
        return out

    def covariance(self, max_dim: int = _MAX_DENSE_DIM) -> Tensor:
        """Dense Σ (d, d), float64, rows/columns in the flattened (C, H, W) order. Refuses d > max_dim."""
        d = self.dim
        if d > max_dim:
            raise ValueError(f"dense covariance of dimension {d} > max_dim={max_dim}; raise max_dim or use cov_matvec")
        eye = torch.eye(d, dtype=torch.float64, device=self.device).reshape(d, *self.data_shape)
        cov = self._cov_matvec64(eye).reshape(d, d)
        return 0.5 * (cov + cov.T)  # Σ is symmetric; remove FFT round-off asymmetry

    # -- denoiser -----------------------------------------------------------------------------------------------------

    def _posterior_mean(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        a = alpha.reshape(-1, 1, 1, 1)
        s2 = (sigma**2).reshape(-1, 1, 1, 1)
        mu = self._buffer64("mean", x.device)
        r = x - a * mu
        kind = self.config.covariance_type
        if kind == "diag":
            var = self._buffer64("variance", x.device)
            return mu + a * var / (a**2 * var + s2) * r
        if kind == "fourier":
            p = self._buffer64("spectrum", x.device)
            gain = a * p / (a**2 * p + s2)
            return mu + torch.fft.ifft2(gain * torch.fft.fft2(r, norm="ortho"), norm="ortho").real
        return mu + a * self._cov_matvec64(self._woodbury_solve(r, alpha, sigma))

    def _woodbury_solve(self, r: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """(α²Σ + σ²I)⁻¹·r for Σ = D + U·Uᵀ, per sample.

        With D_α = α²D + σ²I and W = α·U:  A⁻¹ = D_α⁻¹ − D_α⁻¹W·(I + WᵀD_α⁻¹W)⁻¹·WᵀD_α⁻¹, the capacitance matrix
        (B, rank, rank) being SPD and ≥ I, so its Cholesky factorisation is stable.
        """
        batch = r.shape[0]
        u = self._buffer64("factor", r.device)  # (d, k)
        d_inv = 1.0 / (alpha[:, None] ** 2 * self._buffer64("variance", r.device).reshape(1, -1) + sigma[:, None] ** 2)
        rf = r.reshape(batch, -1)
        y = d_inv * rf  # D_α⁻¹ r
        w = alpha[:, None, None] * u  # (B, d, k)
        cap = torch.eye(u.shape[1], dtype=torch.float64, device=r.device) + w.transpose(1, 2) @ (d_inv[:, :, None] * w)
        rhs = (w.transpose(1, 2) @ y[:, :, None])  # (B, k, 1)
        z = torch.cholesky_solve(rhs, torch.linalg.cholesky(cap))
        return (y - d_inv * (w @ z)[:, :, 0]).reshape(r.shape)

    def _sample_data(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        z = torch.randn((n, *self.data_shape), generator=generator, device=device, dtype=torch.float64)
        mu = self._buffer64("mean", device)
        kind = self.config.covariance_type
        if kind == "fourier":
            # S = F⁻¹·diag(√p)·F is real symmetric with S·Sᵀ = Σ (F unitary, √p Hermitian-symmetric).
            root = self._buffer64("spectrum", device).sqrt()
            return mu + torch.fft.ifft2(root * torch.fft.fft2(z, norm="ortho"), norm="ortho").real
        x = mu + self._buffer64("variance", device).sqrt() * z
        if kind == "lowrank":
            u = self._buffer64("factor", device)
            z2 = torch.randn((n, u.shape[1]), generator=generator, device=device, dtype=torch.float64)
            x = x + (z2 @ u.T).reshape(x.shape)
        return x


# ----------------------------------------------------------------------------------------------------------------------
# Gaussian mixture
# ----------------------------------------------------------------------------------------------------------------------


class GMMDenoiser(AnalyticDenoiser):
    """Data x0 ~ Σ_k π_k·N(μ_k, S_k), S_k = s_k²·I ("isotropic") or diag(v_k) ("diagonal"), variances ≥ 0.

    With V_k = α²S_k + σ²I (diagonal), the posterior weights are a float64 log-softmax of

        ℓ_k(x) = log π_k − ½·Σ_i [ (x_i − α·μ_{k,i})² / V_{k,i} + log V_{k,i} ],

    and x̂0 = Σ_k w_k·[μ_k + α·S_k·V_k⁻¹·(x − α·μ_k)], i.e. ε̂ = σ·Σ_k w_k·V_k⁻¹·(x − α·μ_k) (lml.md §5).
    Components are processed ``chunk_size`` at a time with a streaming log-sum-exp (memory B·chunk·d).

    Buffers: ``weights`` (K,), ``means`` (K, C, H, W), ``variances`` (K,) or (K, C, H, W). Build with
    ``from_components``; without tensors the constructor makes K equal-weight unit components at 0.
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
        super().__init__(
            sample_size, in_channels, num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
            prediction_type,
        )
        k, shape = num_components, self.data_shape
        if k < 1 or chunk_size < 1:
            raise ValueError("num_components and chunk_size must be >= 1")
        if covariance_type not in ("isotropic", "diagonal"):
            raise ValueError(f"covariance_type must be 'isotropic' or 'diagonal', got {covariance_type!r}")
        var_shape = (k,) if covariance_type == "isotropic" else (k, *shape)
        dtype = _buffer_dtype(means, variances, weights)
        weights = _checked(weights, "weights", (k,), torch.full((k,), 1.0 / k), dtype)
        if torch.any(weights <= 0):
            raise ValueError("weights must be > 0 (drop empty components)")
        variances = _checked(variances, "variances", var_shape, torch.ones(var_shape), dtype)
        if torch.any(variances < 0):
            raise ValueError("variances must be >= 0")
        self.register_buffer("weights", weights / weights.sum())
        means = _checked(means, "means", (k, *shape), torch.zeros(k, *shape), dtype)
        self.register_buffer("means", means)
        self.register_buffer("variances", variances)

    @classmethod
    def from_components(cls, weights: Tensor, means: Tensor, variances: Tensor, **kwargs: Any) -> "GMMDenoiser":
        """Mixture from weights (K,) (normalised here), means (K, C, H, W), variances (K,) isotropic or
        (K, C, H, W) diagonal. kwargs: chunk_size, schedule, prediction_type."""
        k, c, h, w = torch.as_tensor(means).shape
        var = torch.as_tensor(variances)
        kind = "isotropic" if var.ndim == 1 else "diagonal"
        return cls(sample_size=_sample_size(h, w), in_channels=c, num_components=k, covariance_type=kind,
                   weights=weights, means=means, variances=variances, **kwargs)

    def _component_variances64(self, device: torch.device) -> Tensor:
        """S_k as (K, C, H, W)-broadcastable float64."""
        v = self._buffer64("variances", device)
        return v.reshape(-1, 1, 1, 1) if v.ndim == 1 else v

    def _chunks(self, x: Tensor, alpha: Tensor, sigma: Tensor):
        """Yield (ℓ (B, k), contract) per chunk of components, contract(p) = Σ_k p_k·E[x0 | x, k]."""
        a = alpha.reshape(-1, 1, 1, 1, 1)
        s2 = (sigma**2).reshape(-1, 1, 1, 1, 1)
        log_pi = self._buffer64("weights", x.device).log()
        means = self._buffer64("means", x.device)
        svar = self._component_variances64(x.device)
        dims = tuple(range(2, x.ndim + 1))
        for start in range(0, means.shape[0], self.config.chunk_size):
            sl = slice(start, start + self.config.chunk_size)
            mu, s = means[sl][None], svar[sl][None]  # (1, k, C, H, W)
            v = a**2 * s + s2  # (B, k, C|1, H|1, W|1)
            r = x[:, None] - a * mu
            # Σ log v over the broadcast pixels, without materialising the broadcast: each entry of v repeats
            # (pixels / entries of v) times.
            logdet = torch.log(v).sum(dim=dims) * (r[0, 0].numel() // v[0, 0].numel())
            logits = log_pi[sl][None] - 0.5 * ((r**2 / v).sum(dim=dims) + logdet)
            comp_mean = mu + a * s / v * r  # (B, k, C, H, W)

            def contract(p: Tensor, comp_mean: Tensor = comp_mean) -> Tensor:
                return torch.einsum("bk,bk...->b...", p, comp_mean)

            yield logits, contract

    def posterior_weights(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """P(k | x) (B, K), float64 (log-softmax of ℓ_k)."""
        x64, a64, s64 = self._check_inputs(x, alpha, sigma)
        logits = torch.cat([lg for lg, _ in self._chunks(x64, a64, s64)], dim=1)
        return torch.log_softmax(logits, dim=1).exp()

    def _posterior_mean(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        return _online_softmax_average(self._chunks(x, alpha, sigma))

    def _sample_data(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        w = self._buffer64("weights", device)
        idx = torch.multinomial(w, n, replacement=True, generator=generator) if n else torch.zeros(0, dtype=torch.long)
        z = torch.randn((n, *self.data_shape), generator=generator, device=device, dtype=torch.float64)
        std = self._component_variances64(device).sqrt().expand(-1, *self.data_shape)
        return self._buffer64("means", device)[idx] + std[idx] * z


# ----------------------------------------------------------------------------------------------------------------------
# Empirical distribution
# ----------------------------------------------------------------------------------------------------------------------


class EmpiricalDenoiser(AnalyticDenoiser):
    """Data x0 uniform over N images y_n (the limit of a GMM with zero variances): the exact denoiser is

        x̂0 = Σ_n softmax_n(ℓ)·y_n,   ℓ_n = −‖x − α·y_n‖² / (2σ²) = (2α·⟨x, y_n⟩ − α²‖y_n‖²) / (2σ²) + const(x),

    in float64, streamed over chunks of ``chunk_size`` images (memory B·chunk). Buffer ``images`` (N, C, H, W).
    Build with ``from_images`` or ``digits``.
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
        super().__init__(
            sample_size, in_channels, num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
            prediction_type,
        )
        if num_images < 1 or chunk_size < 1:
            raise ValueError("num_images and chunk_size must be >= 1")
        shape = (num_images, *self.data_shape)
        images = _checked(images, "images", shape, torch.zeros(shape), _buffer_dtype(images))
        self.register_buffer("images", images)

    @classmethod
    def from_images(cls, images: Tensor, **kwargs: Any) -> "EmpiricalDenoiser":
        """Empirical distribution of images (N, C, H, W). kwargs: chunk_size, schedule, prediction_type."""
        n, c, h, w = torch.as_tensor(images).shape
        return cls(sample_size=_sample_size(h, w), in_channels=c, num_images=n, images=images, **kwargs)

    @classmethod
    def digits(cls, size: int = 16, split: str = "train", **kwargs: Any) -> "EmpiricalDenoiser":
        """Empirical distribution of ``digits_dataset(size, split)`` (``lml_sampler.data.digits``: 1438 "train" /
        359 "test" images in [-1, 1]); its training-set truth is exactly the bundled digits models' training data."""
        return cls.from_images(digits_dataset(size, split), **kwargs)

    def _posterior_mean(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        xf = x.reshape(x.shape[0], -1)
        a, s2 = alpha[:, None], (sigma**2)[:, None]
        ys = self._buffer64("images", x.device).reshape(self.images.shape[0], -1)

        def chunks():
            for start in range(0, ys.shape[0], self.config.chunk_size):
                y = ys[start : start + self.config.chunk_size]
                logits = (2.0 * a * (xf @ y.T) - a**2 * (y**2).sum(dim=1)[None]) / (2.0 * s2)
                yield logits, (lambda p, y=y: p @ y)

        return _online_softmax_average(chunks()).reshape(x.shape)

    def _sample_data(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        idx = torch.randint(self.images.shape[0], (n,), generator=generator, device=device)
        return self._buffer64("images", device)[idx]
