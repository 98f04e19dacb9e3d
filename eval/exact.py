"""Exact metrics for analytic models: Fréchet distance of a sampler's output to the *known* data distribution.

* Gaussian data N(μ, Σ): the Fréchet distance of an output N(m, C) is closed form (:func:`gaussian_frechet_distance`).
* Linear samplers on a linear denoiser (DDIM, DPM-Solver(++), UniPC on Gaussian data): the sampler is a linear map
  ``x_T ↦ x_0 = M x_T``; running it on the d basis vectors at once gives ``M`` and the output law ``N(0, M Mᵀ)``
  exactly, with no Monte-Carlo error (:func:`transfer_matrix`). See ``docs/exact-score-benchmark.md``.
* Anything else (nonlinear samplers such as LML with κ > 0, mixtures): estimate (m, C) from samples and report the
  floor — the distance of as many *exact* data samples to the truth (:func:`monte_carlo_floor`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from lml_sampler.sampling import sample

from .fid import Statistics, compute_statistics, frechet_distance

__all__ = [
    "gaussian_frechet_distance",
    "transfer_matrix",
    "linear_sampler_distance",
    "mixture_moments",
    "monte_carlo_floor",
]


def gaussian_frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Closed-form Fréchet (2-Wasserstein²) distance between N(mu1, sigma1) and N(mu2, sigma2), float64."""
    return frechet_distance((mu1, sigma1), (mu2, sigma2))


def transfer_matrix(model: Callable, scheduler, num_inference_steps: int, sample_shape: tuple[int, ...],
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Matrix ``M`` (d, d) with ``x_0 = M x_T`` of a *linear* sampler on a *linear* model: column i is the output
    for ``x_T = e_i`` (the d basis vectors run as one batch)."""
    d = int(np.prod(sample_shape))
    basis = torch.eye(d, dtype=dtype).reshape(d, *sample_shape)
    out, _ = sample(model, scheduler, basis, num_inference_steps)
    return out.double().reshape(d, d).T


def linear_sampler_distance(model, scheduler, num_inference_steps: int, dtype: torch.dtype = torch.float64) -> float:
    """Exact Fréchet distance of a linear sampler's output law N(M·0 + b, MMᵀ) to Gaussian data N(μ, Σ).

    ``model`` is a linear-Gaussian denoiser with ``data_shape``, ``covariance()`` and (optionally) a ``mean``
    buffer, e.g. ``lml_sampler.models.analytic.GaussianDenoiser``. The sampler is affine, ``x_0 = M x_T + b``:
    ``b`` is its output at ``x_T = 0`` and M is measured on the basis vectors with b subtracted.
    """
    shape = tuple(model.data_shape)
    d = int(np.prod(shape))
    x = torch.cat([torch.zeros(1, *shape, dtype=dtype), torch.eye(d, dtype=dtype).reshape(d, *shape)])
    out, _ = sample(model, scheduler, x, num_inference_steps)
    out = out.double().reshape(d + 1, d)
    b, m = out[0], (out[1:] - out[0]).T
    mean = getattr(model, "mean", None)
    mu = torch.zeros(d, dtype=torch.float64) if mean is None else mean.double().reshape(-1).cpu()
    return gaussian_frechet_distance(b, m @ m.T, mu, model.covariance().double())


def mixture_moments(weights, means, covariances=None) -> Statistics:
    """Exact mean and covariance of a Gaussian mixture: ``μ = Σ wₖ μₖ``, ``Σ = Σ wₖ(Σₖ + μₖμₖᵀ) − μμᵀ``.

    ``covariances`` may be (K, d, d), (K, ...) diagonal variances with d entries each, (K,) isotropic variances, a
    scalar, or None (point masses). ``n`` is None.
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
        if c.ndim == 1:  # isotropic variances s_k²
            cov_k = c.reshape(-1, 1, 1) * torch.eye(d, dtype=torch.float64)
        elif c.ndim == 3 and tuple(c.shape[1:]) == (d, d):  # full covariances
            cov_k = c
        elif c[0].numel() == d:  # diagonal variances, any (K, ...) shape
            cov_k = torch.diag_embed(c.reshape(-1, d))
        else:
            raise ValueError(f"covariances must be (K,), (K, d), (K, d, d) or (K, C, H, W); got {tuple(c.shape)}")
    mu = w @ mu_k
    second = torch.einsum("k,kij->ij", w, cov_k) + torch.einsum("k,ki,kj->ij", w, mu_k, mu_k)
    return Statistics(mu.numpy(), (second - torch.outer(mu, mu)).numpy(), None)


def monte_carlo_floor(sample_data: Callable[[int, torch.Generator], torch.Tensor], truth: Statistics, n: int,
                      seed: int = 0) -> float:
    """Fréchet distance of ``n`` exact samples to the true moments: the estimator's bias floor at this ``n``."""
    x = sample_data(n, torch.Generator().manual_seed(seed))
    return frechet_distance(compute_statistics(x.reshape(n, -1)), truth)
