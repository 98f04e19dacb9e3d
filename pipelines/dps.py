"""``DPSPipeline``: Diffusion Posterior Sampling (Chung et al., ICLR 2023) on DDIM, the gradient baseline of DDS.

Each step back-propagates the data misfit through the network (docs/dds.md §7):

    x'_{t-1} = DDIM(x_t, ε_θ(x_t, t), η)
    x_{t-1}  = x'_{t-1} − ζ · ∇_{x_t} ‖y − A x̂0(x_t)‖        (gradient of the norm, not its square, as officially)

At ``num_inference_steps=1000`` with ``eta=1`` this is the original ancestral (DDPM) DPS.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from lml_sampler.operators.base import LinearOperator

from .common import ReconstructionOutput, model_space_problem, to_operator_domain

__all__ = ["DPSPipeline"]


class DPSPipeline(DiffusionPipeline):
    """DPS with any pixel-space diffusers UNet; the scheduler is converted to ``DDIMScheduler``."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler):
        super().__init__()
        if type(scheduler) is not DDIMScheduler:
            scheduler = DDIMScheduler.from_config(scheduler.config)
        self.register_modules(unet=unet, scheduler=scheduler)

    def __call__(
        self,
        operator: LinearOperator,
        y: torch.Tensor,
        num_inference_steps: int = 1000,
        zeta: float = 1.0,
        eta: float = 1.0,
        generator: torch.Generator | None = None,
        operator_range: tuple[float, float] | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
    ) -> ReconstructionOutput | tuple:
        """Reconstruct from ``y`` (see :class:`~lml_sampler.pipelines.dds.DDSPipeline` for ``operator``/``operator_range``).

        Args:
            zeta: step size ζ > 0 of the normalised gradient step (per sample).
            eta: DDIM η in the standard form (1.0 = DDPM-like ancestral sampling).
        """
        if not zeta > 0:
            raise ValueError(f"zeta must be > 0, got {zeta!r}")
        op, y_m, affine = model_space_problem(operator, y, operator_range)
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        dtype = self.unet.dtype
        x = randn_tensor((y.shape[0], self.unet.config.in_channels, h, w), generator=generator, device=self.device,
                         dtype=dtype)
        y_m = y_m.to(self.device)
        y_m = y_m.to(torch.complex128 if dtype == torch.float64 else torch.complex64) if y_m.is_complex() \
            else y_m.to(dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        nfe = 0
        for t in self.progress_bar(self.scheduler.timesteps):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                eps = self.unet(x, t).sample
                nfe += 1
                out = self.scheduler.step(eps, t, x, eta=eta, generator=generator)
                r = op.A(to_operator_domain(out.pred_original_sample, op)) - y_m
                norm = r.abs().pow(2).flatten(1).sum(1).sqrt()
                (grad,) = torch.autograd.grad(norm.sum(), x)
            x = (out.prev_sample - zeta * grad).detach()
        image = affine.from_model(x) if affine is not None else x
        image = image.detach()
        if output_type == "np":
            image = image.cpu().numpy()
        if not return_dict:
            return (image,)
        return ReconstructionOutput(images=image, nfe=nfe)
