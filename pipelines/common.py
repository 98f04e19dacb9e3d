"""Helpers shared by the reconstruction pipelines: the prior holder, operator ranges, real/complex conversion, outputs,
metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import ModelMixin, SchedulerMixin
from diffusers.utils import BaseOutput

from lml_sampler.operators.base import AffineInput, LinearOperator, from_operator_domain, to_operator_domain

__all__ = [
    "Prior",
    "ReconstructionOutput",
    "model_space_problem",
    "to_operator_domain",
    "from_operator_domain",
    "relative_residual",
    "psnr",
    "ssim",
    "as_image",
]


@dataclass
class Prior:
    """A diffusion prior for the reconstruction pipelines: a denoiser called as ``unet(x, t).sample`` (with
    ``config.sample_size`` and ``config.in_channels``) and the scheduler whose config defines its noise schedule.

    Not a pipeline: :class:`~lml_sampler.pipelines.dds.DDSPipeline` and :class:`~lml_sampler.pipelines.dps.DPSPipeline`
    are built from it per run, each converting the scheduler to its own class.
    """

    unet: ModelMixin
    scheduler: SchedulerMixin


@dataclass
class ReconstructionOutput(BaseOutput):
    """``images``: reconstructions in the operator's image range (``(B, C, H, W)`` tensor or numpy);
    ``nfe``: network evaluations used; ``cg_iterations``: per-step CG iterations ``(steps, B)`` (DDS only);
    ``cg_seconds``: wall time spent in CG data consistency (DDS only; 0 otherwise)."""

    images: torch.Tensor | np.ndarray
    nfe: int = 0
    cg_iterations: torch.Tensor | None = None
    cg_seconds: float = 0.0


def model_space_problem(
    operator: LinearOperator, y: torch.Tensor, operator_range: tuple[float, float] | None
) -> tuple[LinearOperator, torch.Tensor, AffineInput | None]:
    """Re-express ``y = A x_phys`` with ``x_phys`` in ``operator_range`` as a problem on model images in [-1, 1].

    Returns ``(A', y', affine)``; with ``operator_range=None`` the operator already acts on model space and is
    returned unchanged (``affine=None``).
    """
    if operator_range is None:
        return operator, y, None
    lo, hi = (float(v) for v in operator_range)
    if not hi > lo:
        raise ValueError(f"operator_range must be (lo, hi) with hi > lo, got {operator_range!r}")
    aff = AffineInput(operator, scale=(hi - lo) / 2, offset=(hi + lo) / 2)
    return aff, aff.shift_measurement(y), aff


def relative_residual(operator: LinearOperator, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``‖A x − y‖ / ‖y‖`` per sample, float64 ``(B,)`` (x in the operator's domain/range of values)."""
    r = operator.A(x) - y
    dims = tuple(range(1, r.ndim))
    num = r.abs().to(torch.float64).pow(2).sum(dims).sqrt()
    den = y.abs().to(torch.float64).pow(2).sum(dims).sqrt().clamp_min(1e-30)
    return num / den


def as_image(x: torch.Tensor) -> torch.Tensor:
    """Image for metrics/display: magnitude of complex images, 2-channel (Re, Im) real -> magnitude, else as is."""
    if x.is_complex():
        return x.abs()
    return x


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-sample PSNR (dB) with an explicit ``data_range`` (torchmetrics), float64 ``(B,)``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    p, t = as_image(pred).to(torch.float64), as_image(target).to(torch.float64)
    return peak_signal_noise_ratio(p, t, data_range=data_range, reduction="none", dim=tuple(range(1, p.ndim)))


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-sample SSIM (Gaussian window 11, σ 1.5) with an explicit ``data_range`` (torchmetrics), ``(B,)``."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    p, t = as_image(pred).to(torch.float64), as_image(target).to(torch.float64)
    return structural_similarity_index_measure(p, t, data_range=data_range, reduction="none")
