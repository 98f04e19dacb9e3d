"""Exact metrics for analytic models: Fréchet distance of a sampler's output to the *known* data distribution.

* Gaussian data N(μ, Σ): the Fréchet distance of an output N(m, C) is closed form (:func:`gaussian_frechet_distance`).
* Linear samplers on a linear denoiser (DDIM, DPM-Solver(++), UniPC on Gaussian data): the sampler is a linear map
  ``x_T ↦ x_0 = M x_T``; running it on the d basis vectors at once gives ``M`` and the output law ``N(0, M Mᵀ)``
  exactly, with no Monte-Carlo error (:func:`transfer_matrix`). See ``/work/shared/spec/benchmarks.md``.
* Anything else (nonlinear samplers such as LML with κ > 0, mixtures): estimate (m, C) from samples and report the
  floor — the distance of as many *exact* data samples to the truth (:func:`monte_carlo_floor`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from .fid import Statistics, compute_statistics, frechet_distance

__all__ = [
    "gaussian_frechet_distance",
    "stationary_gaussian_spectrum",
    "StationaryGaussianDenoiser",
    "sample_loop",
    "transfer_matrix",
    "linear_sampler_distance",
    "mixture_moments",
    "monte_carlo_floor",
]


def gaussian_frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Closed-form Fréchet (2-Wasserstein²) distance between N(mu1, sigma1) and N(mu2, sigma2), float64."""
    return frechet_distance((mu1, sigma1), (mu2, sigma2))


def stationary_gaussian_spectrum(size: int = 16, mean_variance: float = 0.25) -> torch.Tensor:
    """Power spectrum ``p`` (size, size), float64, of the stationary Gaussian benchmark of benchmarks.md.

    ``p ∝ 1/|f|²`` with ``|f|`` the radial frequency from ``torch.fft.fftfreq``; the DC frequency is set to
    ``|f| = 1/size`` (the lowest non-zero frequency; this is the choice that reproduces the reference table);
    scaled so the mean per-pixel variance is ``mean_variance`` (trace Σ = mean_variance · size²).
    """
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}")
    f = torch.fft.fftfreq(size, dtype=torch.float64)
    radial = (f[:, None] ** 2 + f[None, :] ** 2).sqrt()
    radial[0, 0] = 1.0 / size
    p = radial.pow(-2)
    return p * (mean_variance / p.mean())


class StationaryGaussianDenoiser(nn.Module):
    """Exact ε-predictor of x0 ~ N(0, Σ), Σ = F⁻¹ diag(p) F (unitary 2-D DFT), single-channel images.

    ``ε̂(x_t, t) = F⁻¹[ √(1−ᾱ_t) · F x_t / (ᾱ_t p + 1 − ᾱ_t) ]`` — linear in x_t. Called like a diffusers
    ``UNet2DModel`` (``model(sample, timestep).sample``); integer timesteps index ``alphas_cumprod``.
    """

    def __init__(self, spectrum: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        if spectrum.ndim != 2:
            raise ValueError(f"spectrum must be (H, W), got {tuple(spectrum.shape)}")
        self.register_buffer("spectrum", spectrum.double())
        self.register_buffer("alphas_cumprod", torch.as_tensor(alphas_cumprod, dtype=torch.float64))

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (1, *self.spectrum.shape)

    def covariance(self) -> torch.Tensor:
        """Σ in the pixel basis, (d, d) float64, d = H·W."""
        d = self.spectrum.numel()
        eye = torch.eye(d, dtype=torch.float64).reshape(d, 1, *self.spectrum.shape)
        cols = torch.fft.ifft2(torch.fft.fft2(eye, norm="ortho") * self.spectrum, norm="ortho").real
        return cols.reshape(d, d)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples (n, 1, H, W), float64."""
        z = torch.randn(n, *self.sample_shape, generator=generator, dtype=torch.float64)
        return torch.fft.ifft2(torch.fft.fft2(z, norm="ortho") * self.spectrum.sqrt(), norm="ortho").real

    def forward(self, sample: torch.Tensor, timestep, return_dict: bool = True):
        from diffusers.models.unets.unet_2d import UNet2DOutput

        t = torch.as_tensor(timestep).reshape(-1)[0].round().long()
        a = self.alphas_cumprod[t]
        x = sample.double()
        eps = torch.fft.ifft2((1 - a).sqrt() * torch.fft.fft2(x, norm="ortho") / (a * self.spectrum + 1 - a),
                              norm="ortho").real.to(sample.dtype)
        return UNet2DOutput(sample=eps) if return_dict else (eps,)


def sample_loop(model: Callable, scheduler, x_T: torch.Tensor, num_inference_steps: int,
                generator=None) -> tuple[torch.Tensor, int]:
    """Run a diffusers scheduler on an unconditional model the way ``DDPMPipeline`` does; no clamping.

    Returns ``(x_0, nfe)`` with ``nfe`` the number of model calls. ``generator`` (one per sample, a list, or
    None) is forwarded to ``scheduler.step`` when the step accepts it (stochastic samplers).
    """
    import inspect

    scheduler.set_timesteps(num_inference_steps)
    x = x_T * getattr(scheduler, "init_noise_sigma", 1.0)
    step_kw = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    nfe = 0
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        out = model(x_in, t)
        out = out.sample if hasattr(out, "sample") else out[0] if isinstance(out, tuple) else out
        nfe += 1
        x = scheduler.step(out, t, x, **step_kw).prev_sample
    return x, nfe


def transfer_matrix(model: Callable, scheduler, num_inference_steps: int, sample_shape: tuple[int, ...],
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Matrix ``M`` (d, d) with ``x_0 = M x_T`` of a *linear* sampler on a *linear* model: column i is the output
    for ``x_T = e_i`` (the d basis vectors run as one batch)."""
    d = int(np.prod(sample_shape))
    basis = torch.eye(d, dtype=dtype).reshape(d, *sample_shape)
    out, _ = sample_loop(model, scheduler, basis, num_inference_steps)
    return out.double().reshape(d, d).T


def linear_sampler_distance(model: StationaryGaussianDenoiser, scheduler, num_inference_steps: int,
                            dtype: torch.dtype = torch.float64) -> float:
    """Exact Fréchet distance of a linear sampler's output law N(0, MMᵀ) to the Gaussian data N(0, Σ)."""
    m = transfer_matrix(model, scheduler, num_inference_steps, model.sample_shape, dtype=dtype)
    zero = torch.zeros(m.shape[0], dtype=torch.float64)
    return gaussian_frechet_distance(zero, m @ m.T, zero, model.covariance())


def mixture_moments(weights, means, covariances=None) -> Statistics:
    """Exact mean and covariance of a Gaussian mixture: ``μ = Σ wₖ μₖ``, ``Σ = Σ wₖ(Σₖ + μₖμₖᵀ) − μμᵀ``.

    ``covariances`` may be (K, d, d), (K,) isotropic variances, a scalar, or None (point masses). ``n`` is None.
    """
    w = torch.as_tensor(np.asarray(weights), dtype=torch.float64).reshape(-1)
    mu_k = torch.as_tensor(np.asarray(means), dtype=torch.float64).reshape(w.shape[0], -1)
    if torch.any(w < 0) or abs(float(w.sum()) - 1.0) > 1e-9:
        raise ValueError("weights must be non-negative and sum to 1")
    d = mu_k.shape[1]
    if covariances is None:
        cov_k = torch.zeros(w.shape[0], d, d, dtype=torch.float64)
    else:
        c = torch.as_tensor(np.asarray(covariances), dtype=torch.float64)
        if c.ndim == 0:
            c = c.expand(w.shape[0])
        cov_k = c.reshape(-1, 1, 1) * torch.eye(d, dtype=torch.float64) if c.ndim == 1 else c
    mu = w @ mu_k
    second = torch.einsum("k,kij->ij", w, cov_k) + torch.einsum("k,ki,kj->ij", w, mu_k, mu_k)
    return Statistics(mu.numpy(), (second - torch.outer(mu, mu)).numpy(), None)


def monte_carlo_floor(sample_data: Callable[[int, torch.Generator], torch.Tensor], truth: Statistics, n: int,
                      seed: int = 0) -> float:
    """Fréchet distance of ``n`` exact samples to the true moments: the estimator's bias floor at this ``n``."""
    x = sample_data(n, torch.Generator().manual_seed(seed))
    return frechet_distance(compute_statistics(x.reshape(n, -1)), truth)
