"""Reconstruction pipelines (DDS, DPS), classical baselines and the ``lml-reconstruct`` CLI."""

from .baselines import adjoint_reconstruction, cg_least_squares, fbp_reconstruction, pseudo_inverse, tv_pdhg
from .common import Prior, ReconstructionOutput, psnr, relative_residual, ssim
from .dds import DDSPipeline
from .dps import DPSPipeline

__all__ = [
    "DDSPipeline",
    "DPSPipeline",
    "Prior",
    "ReconstructionOutput",
    "adjoint_reconstruction",
    "cg_least_squares",
    "fbp_reconstruction",
    "pseudo_inverse",
    "tv_pdhg",
    "psnr",
    "ssim",
    "relative_residual",
]
