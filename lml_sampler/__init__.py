"""lml-sampler: Levenberg–Marquardt–Langevin schedulers, DDS data consistency and FID evaluation for diffusers."""

from . import operators
from .math import conjugate_gradient, lm_correct
from .models import (
    EmpiricalDenoiser,
    GaussianDenoiser,
    GMMDenoiser,
    load_classifier,
    load_pipeline,
)
from .sampling import LangevinCorrector, sample
from .schedulers import (
    DDSScheduler,
    LMLDDIMScheduler,
    LMLDPMSolverMultistepScheduler,
    LMLFlowMatchEulerDiscreteScheduler,
)

__version__ = "0.1.0"

__all__ = [
    "DDSScheduler",
    "EmpiricalDenoiser",
    "GMMDenoiser",
    "GaussianDenoiser",
    "LMLDDIMScheduler",
    "LMLDPMSolverMultistepScheduler",
    "LMLFlowMatchEulerDiscreteScheduler",
    "LangevinCorrector",
    "conjugate_gradient",
    "lm_correct",
    "load_classifier",
    "load_pipeline",
    "operators",
    "sample",
]
