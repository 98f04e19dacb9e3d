"""Pure tensor math of lml-sampler: no diffusers imports, no state."""

from .cg import conjugate_gradient
from .lm import LM_FORMULAS, check_lm_params, lm_correct
from .reductions import batch_sq_norm, batch_vdot, per_sample, sample_dims

__all__ = ["conjugate_gradient", "LM_FORMULAS", "batch_sq_norm", "batch_vdot", "check_lm_params", "lm_correct", "per_sample", "sample_dims"]
