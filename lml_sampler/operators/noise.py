"""Measurement noise with a known level σ: real Gaussian, or circular complex Gaussian for k-space."""

from __future__ import annotations

import math

import torch

__all__ = ["add_noise"]


def add_noise(y: torch.Tensor, sigma: float, generator: torch.Generator | None = None, support=None) -> torch.Tensor:
    """Return ``y + n`` with ``n ~ N(0, σ² I)`` (real ``y``) or ``CN(0, σ² I)`` (complex ``y``: Re and Im each with
    std ``σ/√2``, so ``E|n|² = σ²`` per entry), restricted to ``support`` (1 = measured entry, e.g. the sampled
    k-space locations; unmeasured entries stay exactly 0). The official DDS code never adds noise (docs/dds.md §4).
    """
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    if sigma == 0:
        return y.clone()
    real = y.real.dtype if y.is_complex() else y.dtype
    n = torch.randn(y.shape, generator=generator, dtype=real).to(y.device)
    if y.is_complex():
        n = torch.complex(n, torch.randn(y.shape, generator=generator, dtype=real).to(y.device)) / math.sqrt(2)
    n = sigma * n
    if support is not None:
        n = n * torch.as_tensor(support).to(real).to(y.device)
    return y + n
