"""Linear imaging operators for inverse problems, behind one interface (``A``, ``A_adjoint``, ``A_adjoint_A``)."""

from .base import AffineInput, LinearOperator, RealInput, complex_to_real, real_to_complex, from_operator_domain, to_operator_domain
from .blur import Blur, Inpainting, box_mask, gaussian_kernel, motion_kernel, random_mask
from .ct import ParallelBeamCT, limited_angle_angles, ramp_filter, sparse_view_angles
from .mri import (
    MultiCoilMRI,
    SamplingMask,
    SingleCoilMRI,
    fft2c,
    gaussian1d_mask,
    gaussian2d_mask,
    ifft2c,
    make_mask,
    poisson_disc_mask,
    simulate_coil_sensitivities,
    uniform1d_mask,
)
from .noise import add_noise

__all__ = [
    "LinearOperator", "RealInput", "AffineInput", "real_to_complex", "complex_to_real", "to_operator_domain", "from_operator_domain",
    "Blur", "Inpainting", "gaussian_kernel", "motion_kernel", "box_mask", "random_mask",
    "ParallelBeamCT", "sparse_view_angles", "limited_angle_angles", "ramp_filter",
    "SingleCoilMRI", "MultiCoilMRI", "SamplingMask", "fft2c", "ifft2c", "make_mask", "uniform1d_mask",
    "gaussian1d_mask", "gaussian2d_mask", "poisson_disc_mask", "simulate_coil_sensitivities", "add_noise",
]
