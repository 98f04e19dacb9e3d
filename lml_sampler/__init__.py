"""lml-sampler: Levenberg–Marquardt–Langevin schedulers, DDS data consistency and FID evaluation for diffusers."""

from .math import lm_correct
from .schedulers import LMLDDIMScheduler, LMLDPMSolverMultistepScheduler, LMLFlowMatchEulerDiscreteScheduler

__version__ = "0.1.0"

__all__ = [
    "LMLDDIMScheduler",
    "LMLDPMSolverMultistepScheduler",
    "LMLFlowMatchEulerDiscreteScheduler",
    "lm_correct",
]
