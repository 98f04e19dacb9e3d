"""diffusers schedulers of lml-sampler: LML variants of DDIM, DPM-Solver(++) and flow-matching Euler."""

from .ddim import LMLDDIMScheduler
from .dds import DDSScheduler, ddnm_to_ddim_eta
from .dpmsolver import LMLDPMSolverMultistepScheduler
from .flow_match import LMLFlowMatchEulerDiscreteScheduler

__all__ = ["DDSScheduler", "ddnm_to_ddim_eta", "LMLDDIMScheduler", "LMLDPMSolverMultistepScheduler", "LMLFlowMatchEulerDiscreteScheduler"]
