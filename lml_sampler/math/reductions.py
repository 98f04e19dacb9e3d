"""Per-sample reductions over every non-batch dimension.

Every vector in this package is a batch of samples: dim 0 is the batch, all other dims (channels, height, width,
frames, tokens) belong to one sample. Reductions therefore run over ``dim=tuple(range(1, x.ndim))`` whatever the
rank, and inner products accumulate in float64 (or complex128) because the LM and CG algebra subtract nearly equal
quantities.
"""

from __future__ import annotations

import torch


def sample_dims(x: torch.Tensor) -> tuple[int, ...]:
    """All non-batch dims of ``x``: ``(1, ..., x.ndim - 1)``."""
    if x.ndim < 1:
        raise ValueError(f"expected a batched tensor with a leading batch dim, got a 0-d tensor of shape {tuple(x.shape)}")
    return tuple(range(1, x.ndim))


def batch_vdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product ⟨a, b⟩ = Σ conj(a)·b over all non-batch dims, accumulated in double precision.

    Returns shape ``(B,)``: float64 for real inputs, complex128 for complex ones. Shapes must match exactly: a
    silent broadcast over the batch would couple samples.
    """
    if a.shape != b.shape:
        raise ValueError(f"batch_vdot needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    wide = torch.complex128 if (a.is_complex() or b.is_complex()) else torch.float64
    a, b = a.to(wide), b.to(wide)
    if a.is_complex():
        a = a.conj()
    dims = sample_dims(a)
    if not dims:  # a batch of scalars
        return a * b
    return (a * b).sum(dim=dims)


def batch_sq_norm(x: torch.Tensor) -> torch.Tensor:
    """Per-sample squared norm ‖x‖² over all non-batch dims, float64, shape ``(B,)``."""
    return batch_vdot(x, x).real


def per_sample(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample scalar ``(B,)`` to ``(B, 1, ..., 1)`` so it broadcasts against ``like`` sample-wise."""
    if s.ndim != 1 or s.shape[0] != like.shape[0]:
        raise ValueError(f"per-sample scalars need shape ({like.shape[0]},), got {tuple(s.shape)}")
    return s.reshape(s.shape[0], *([1] * (like.ndim - 1)))
