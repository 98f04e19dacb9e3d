"""The exact denoiser of a Gaussian N(μ, Σ), Σ diagonal, diagonal-plus-low-rank or stationary (Fourier-diagonal).

``GaussianDenoiser.stationary()`` is the stationary benchmark of ``docs/exact-score-benchmark.md §1``.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from torch import Tensor

from .base import AnalyticDenoiser, _buffer_dtype, _checked_buffer, _finite_float_copy, _sample_size_entry
from .schedule import NoiseSchedule

__all__ = ["GaussianDenoiser", "stationary_spectrum"]

# Dense covariances beyond this dimension cost > 128 MiB in float64; covariance() refuses unless asked.
_MAX_DENSE_DIM = 4096


def stationary_spectrum(size: int = 16, channels: int = 1, total_variance: float = 64.0) -> Tensor:
    """Power spectrum p (channels, size, size), float64, of the stationary benchmark of
    ``docs/exact-score-benchmark.md §1``.

    p(f) ∝ 1/|f|², |f| = √(f_y² + f_x²) with f from ``torch.fft.fftfreq(size)``, where the DC term |f| is set to 1/16
    (so the raw DC power is 256, that of the lowest non-zero frequency at 16×16); then p is scaled so that
    trace Σ = Σ_f p(f) = ``total_variance`` (summed over all channels; the default gives a mean per-pixel variance of
    0.25 at 16×16×1).

    "DC set to 1/16" is read as the DC *frequency*: with this reading the transfer-matrix Fréchet distances of
    ``docs/exact-score-benchmark.md §2`` (DDIM trailing 11.81 / 4.049 / 1.184 / 0.2114, DPM-Solver++ 2M 9.919 /
    2.540 / 0.4041 / 0.01282 at NFE 5 / 10 / 20 / 50) are reproduced to all printed digits; setting the DC *power* to
    1/16 gives 11.93 / 4.061 / ….
    """
    if size < 2 or channels < 1 or not total_variance > 0:
        raise ValueError("stationary_spectrum needs size >= 2, channels >= 1 and total_variance > 0")
    f = torch.fft.fftfreq(size, dtype=torch.float64)
    radius2 = f[:, None] ** 2 + f[None, :] ** 2
    radius2[0, 0] = (1.0 / 16.0) ** 2
    p = 1.0 / radius2
    p = p.expand(channels, size, size).clone()
    return p * (total_variance / p.sum())


class GaussianDenoiser(AnalyticDenoiser):
    """Data x0 ~ N(μ, Σ) on (C, H, W) images; posterior mean x̂0 = μ + α·Σ·(α²Σ + σ²I)⁻¹·(x − α·μ).

    ``covariance_type``:

    * ``"diag"``: Σ = diag(variance), variance (C, H, W) ≥ 0.
    * ``"lowrank"``: Σ = diag(variance) + U·Uᵀ, variance (C, H, W) > 0, U = ``factor`` (d, rank); Woodbury in float64.
    * ``"fourier"``: Σ = F⁻¹·diag(p)·F with F the unitary 2-D DFT over (H, W), per channel, p = ``spectrum`` (C, H, W)
      ≥ 0 and Hermitian-symmetric (p[c, −i, −j] = p[c, i, j], so Σ is real). x̂0 = μ + F⁻¹[α·p/(α²p + σ²)·F(x − α·μ)].

    Use the factories ``from_diag``, ``from_lowrank``, ``from_spectrum`` and ``stationary``; the constructor takes the
    same tensors (not stored in the config; they are buffers) and, without them, builds N(0, I). The schedule entries
    ``num_train_timesteps`` … ``prediction_type`` are those of :class:`NoiseSchedule`.
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
        schedule = NoiseSchedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type)
        super().__init__(sample_size, in_channels, schedule)
        shape, d = self.data_shape, self.dim
        if covariance_type not in ("diag", "lowrank", "fourier"):
            raise ValueError(f"covariance_type must be 'diag', 'lowrank' or 'fourier', got {covariance_type!r}")
        if covariance_type == "lowrank" and rank < 1:
            raise ValueError("covariance_type='lowrank' needs rank >= 1")
        dtype = _buffer_dtype(mean, variance, factor, spectrum)
        self.register_buffer("mean", _checked_buffer(mean, "mean", shape, torch.zeros(shape), dtype))
        if covariance_type in ("diag", "lowrank"):
            var = _checked_buffer(variance, "variance", shape, torch.ones(shape), dtype)
            if torch.any(var < 0) or (covariance_type == "lowrank" and torch.any(var <= 0)):
                raise ValueError("variance must be >= 0 ('diag') or > 0 ('lowrank', for the Woodbury solve)")
            self.register_buffer("variance", var)
        if covariance_type == "lowrank":
            self.register_buffer("factor", _checked_buffer(factor, "factor", (d, rank), torch.zeros(d, rank), dtype))
        if covariance_type == "fourier":
            p = _checked_buffer(spectrum, "spectrum", shape, torch.ones(shape), dtype)
            if torch.any(p < 0):
                raise ValueError("spectrum must be >= 0")
            mirrored = torch.roll(torch.flip(p, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
            if not torch.allclose(p, mirrored, rtol=1e-6, atol=0.0):
                raise ValueError("spectrum must be Hermitian-symmetric, p[c, -i, -j] == p[c, i, j], for a real Σ")
            self.register_buffer("spectrum", p)
        optional = {"variance": variance, "factor": factor, "spectrum": spectrum}
        needed = {"diag": {"variance"}, "lowrank": {"variance", "factor"}, "fourier": {"spectrum"}}[covariance_type]
        extra = [k for k, v in optional.items() if v is not None and k not in needed]
        if extra:
            raise ValueError(f"{extra} given but unused with covariance_type={covariance_type!r}")

    # -- factories ----------------------------------------------------------------------------------------------------

    @classmethod
    def from_diag(cls, mean: Tensor, variance: Tensor, **kwargs: Any) -> "GaussianDenoiser":
        """N(mean, diag(variance)); mean, variance (C, H, W). kwargs: the schedule entries (``NoiseSchedule``)."""
        c, h, w = _finite_float_copy(mean, "mean").shape
        return cls(sample_size=_sample_size_entry(h, w), in_channels=c, covariance_type="diag",
                   mean=mean, variance=variance, **kwargs)

    @classmethod
    def from_lowrank(cls, mean: Tensor, variance: Tensor, factor: Tensor, **kwargs: Any) -> "GaussianDenoiser":
        """N(mean, diag(variance) + U·Uᵀ); mean, variance (C, H, W), factor U (C·H·W, rank). kwargs: the schedule
        entries."""
        c, h, w = _finite_float_copy(mean, "mean").shape
        rank = torch.as_tensor(factor).shape[-1]
        return cls(sample_size=_sample_size_entry(h, w), in_channels=c, covariance_type="lowrank", rank=rank,
                   mean=mean, variance=variance, factor=factor, **kwargs)

    @classmethod
    def from_spectrum(cls, spectrum: Tensor, mean: Tensor | None = None, **kwargs: Any) -> "GaussianDenoiser":
        """Stationary N(mean, F⁻¹·diag(spectrum)·F); spectrum (C, H, W) in ``torch.fft.fft2`` frequency order.
        kwargs: the schedule entries."""
        c, h, w = torch.as_tensor(spectrum).shape
        return cls(sample_size=_sample_size_entry(h, w), in_channels=c, covariance_type="fourier",
                   mean=mean, spectrum=spectrum, **kwargs)

    @classmethod
    def stationary(
        cls, size: int = 16, channels: int = 1, total_variance: float = 64.0, dtype: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> "GaussianDenoiser":
        """The stationary benchmark of ``docs/exact-score-benchmark.md §1``: N(0, Σ), spectrum ``stationary_spectrum``.

        ``total_variance`` = trace Σ over all channels (64 = 0.25 per pixel at 16×16×1; keep 0.25 per pixel with
        ``total_variance=0.25 * channels * size**2``). ``dtype``: the buffers' (and pipelines' noise) dtype; use
        torch.float64 for the reference measurements. kwargs: the schedule entries (``NoiseSchedule``).
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
        """Σ·x for float64 x (B, C, H, W)."""
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
