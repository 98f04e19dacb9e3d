"""The study's error estimators: pure functions of sampler outputs (tested in tests/test_verdict_harness.py).

On the stationary Gaussian (``docs/exact-score-benchmark.md §1``) the output law of a shift-equivariant, odd
sampler fed stationary noise is stationary with zero mean, so its covariance is circulant and the Fréchet distance to
N(0, Σ) is Σ_f (√c_f − √p_f)² over the output power spectrum c_f (``docs/exact-score-benchmark.md §3``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lml_sampler.eval import compute_statistics, frechet_distance

#: Radial frequency bands |f| (cycles/pixel) of the diagnostics: low, mid, high.
BANDS = {"low": (0.0, 0.125), "mid": (0.125, 0.3), "high": (0.3, 1.0)}


def power_spectrum(x: torch.Tensor) -> torch.Tensor:
    """Per-sample power |F x|² (N, C, H, W) in float64 with the unitary 2-D DFT (``norm="ortho"``)."""
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    z = torch.fft.fft2(x.double(), norm="ortho")
    return z.real.square() + z.imag.square()


def stationary_fd(out: torch.Tensor, spectrum: torch.Tensor, noise: torch.Tensor | None = None,
                  blocks: int = 16) -> tuple[float, float]:
    """Fréchet distance of a stationary zero-mean output law to N(0, F⁻¹ diag(spectrum) F), and its jackknife SE.

    For a stationary, zero-mean law both covariances are diagonal in the DFT basis, so
    FD = Σ_f (√c_f − √p_f)² with c_f = E|F x|²_f (no matrix square root, no mean term: the mean is 0 by the odd
    symmetry of the samplers). With ``noise`` (the initial noise that produced ``out``, E|F z|²_f = 1) c_f is
    estimated by the ratio mean|F x|²_f / mean|F z|²_f: exact (to rounding) for any linear sampler, which is a
    Fourier multiplier here, and a strong control variate for nearly linear ones. Without it, c_f is the plain mean.

    Args:
        out: sampler outputs (N, C, H, W).
        spectrum: the data power spectrum p (C, H, W) in ``torch.fft.fft2`` order.
        noise: the matching initial noise (N, C, H, W), or None.
        blocks: number of jackknife blocks for the standard error (N must be divisible into ≥ 2 blocks).

    Returns:
        (fd, se): the estimate and its delete-one-block jackknife standard error.
    """
    if out.ndim != 4 or tuple(out.shape[1:]) != tuple(spectrum.shape):
        raise ValueError(f"out must be (N, *spectrum.shape) = (N, {tuple(spectrum.shape)}), got {tuple(out.shape)}")
    n = out.shape[0]
    blocks = min(blocks, n)
    if blocks < 2:
        raise ValueError("stationary_fd needs at least 2 samples")
    if noise is not None and noise.shape != out.shape:
        raise ValueError(f"noise must have the shape of out {tuple(out.shape)}, got {tuple(noise.shape)}")
    root = spectrum.double().sqrt()
    edges = torch.linspace(0, n, blocks + 1).round().long()

    def block_sums(x: torch.Tensor) -> torch.Tensor:
        power = power_spectrum(x)
        return torch.stack([power[a:b].sum(dim=0) for a, b in zip(edges[:-1], edges[1:])])

    num = block_sums(out)
    den = block_sums(noise) if noise is not None else torch.stack(
        [torch.full_like(num[0], float(b - a)) for a, b in zip(edges[:-1], edges[1:])])

    def fd(num_sum: torch.Tensor, den_sum: torch.Tensor) -> float:
        return float(((num_sum / den_sum).sqrt() - root).square().sum())

    full = fd(num.sum(0), den.sum(0))
    leave_one_out = np.array([fd(num.sum(0) - num[j], den.sum(0) - den[j]) for j in range(blocks)])
    se = math.sqrt((blocks - 1) / blocks * float(((leave_one_out - leave_one_out.mean()) ** 2).sum()))
    return full, se


def full_fd(out: torch.Tensor, truth) -> float:
    """Plain sample Fréchet distance: (mean, unbiased covariance) of the flattened outputs against ``truth``."""
    return frechet_distance(compute_statistics(out.reshape(out.shape[0], -1)), truth)


@dataclass(frozen=True)
class BandDiagnostic:
    """Where a stationary sampler's error sits, per radial frequency band (:data:`BANDS`).

    ``var_ratio`` is tr C / tr Σ; ``*_power_ratio`` the band mean of c_f/p_f; ``*_fd`` the band's part of
    Σ_f (√c_f − √p_f)².
    """

    var_ratio: float
    low_power_ratio: float
    mid_power_ratio: float
    high_power_ratio: float
    low_fd: float
    mid_fd: float
    high_fd: float

    @property
    def total_fd(self) -> float:
        return self.low_fd + self.mid_fd + self.high_fd


def band_diagnostic(out: torch.Tensor, noise: torch.Tensor, spectrum: torch.Tensor) -> BandDiagnostic:
    """Band split of a stationary sampler's error; c_f is the control-variate power estimate of
    :func:`stationary_fd` (``out`` and the ``noise`` that produced it)."""
    c = power_spectrum(out).mean(0) / power_spectrum(noise).mean(0)
    p = spectrum.double()
    h, w = p.shape[-2:]
    fy, fx = torch.fft.fftfreq(h, dtype=torch.float64), torch.fft.fftfreq(w, dtype=torch.float64)
    radius = (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt().expand_as(p)
    values = {"var_ratio": float(c.sum() / p.sum())}
    for name, (lo, hi) in BANDS.items():
        # the lowest band includes f = 0
        mask = (radius > lo) & (radius <= hi) if lo > 0 else radius <= hi
        values[f"{name}_power_ratio"] = float((c[mask] / p[mask]).mean())
        values[f"{name}_fd"] = float(((c[mask].sqrt() - p[mask].sqrt()) ** 2).sum())
    return BandDiagnostic(**values)


def relative_deviation(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ over the whole batch, in float64."""
    return float((a.double() - b.double()).norm() / b.double().norm())
