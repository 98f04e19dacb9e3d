"""diffusers schedulers of lml-sampler: LML variants of DDIM, DPM-Solver(++) and flow-matching Euler."""

from .ddim import LMLDDIMScheduler
from .dpmsolver import LMLDPMSolverMultistepScheduler
from .flow_match import LMLFlowMatchEulerDiscreteScheduler

__all__ = ["LMLDDIMScheduler", "LMLDPMSolverMultistepScheduler", "LMLFlowMatchEulerDiscreteScheduler"]
