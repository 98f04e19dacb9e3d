"""``DDSPipeline``: DDS posterior sampling with any pixel-space diffusers ε/x0/v UNet (``UNet2DModel`` convention)."""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from lml_sampler.operators.base import LinearOperator
from lml_sampler.schedulers.dds import DEFAULT_PRIOR_VARIANCE, DDSScheduler, check_noise_std

from .common import ReconstructionOutput, model_space_problem
from .tasks import TASKS, dds_defaults, operator_task

__all__ = ["DDSPipeline"]


class DDSPipeline(DiffusionPipeline):
    """Decomposed Diffusion Sampler: Tweedie denoising, ``cg_iters`` CG data-consistency steps, DDIM re-noising.

    Components: ``unet`` (called as ``unet(x, t).sample``; ``config.sample_size``, ``config.in_channels``) and
    ``scheduler`` (any DDPM/DDIM-family scheduler; it is converted with ``DDSScheduler.from_config``).
    One network evaluation per step and no gradients, so ``num_inference_steps`` = NFE (``drop_last``: NFE − 1).
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler):
        super().__init__()
        if not isinstance(scheduler, DDSScheduler):
            scheduler = DDSScheduler.from_config(scheduler.config)
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self,
        operator: LinearOperator,
        y: torch.Tensor,
        num_inference_steps: int = 50,
        gamma: float | None = None,
        cg_iters: int | None = None,
        eta: float | None = None,
        eta_type: str = "ddnm",
        noiseless: bool = False,
        generator: torch.Generator | None = None,
        operator_range: tuple[float, float] | None = None,
        drop_last: bool = False,
        cg_tol: float = 1e-6,
        noise_std: float | None = None,
        prior_variance: float | None = None,
        clip: bool | None = None,
        task: str | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> ReconstructionOutput | tuple:
        """Reconstruct ``x`` from ``y = A x (+ noise)``; one sample per measurement in the batch of ``y``.

        ``cg_iters``, ``eta``, ``clip`` and ``prior_variance`` left at ``None`` take the tuned per-task defaults
        (:data:`lml_sampler.pipelines.tasks.DDS_DEFAULTS`, docs/dds.md §9) of ``task``, by default inferred from the
        operator (:func:`~lml_sampler.pipelines.tasks.operator_task`); data count as noisy when ``noise_std > 0`` or
        ``gamma`` is given.

        Args:
            operator: the forward model; it acts on images in ``operator_range`` (default: model space [-1, 1]).
                Complex operators need a model with 2·C channels (Re, Im); use ``RealInput(op)`` for real priors.
            y: measurements ``(B, *operator.out_shape)``; draw k samples per measurement by repeating ``y``.
            num_inference_steps: DDIM steps = NFE ("leading" spacing: 980, 960, …, 0 for 50).
            gamma, cg_iters, noiseless, cg_tol, eta_type, prior_variance: see :meth:`DDSScheduler.set_measurement`.
            noise_std: std σ of the noise in ``y`` (in the units of ``y``; complex: E|n|² = σ²). Given without
                ``gamma``, data consistency is noise-aware (γ_t = r_t²/σ², docs/dds.md §4); ``0`` = noiseless.
            eta: DDIM stochasticity in the ``eta_type`` parametrisation (official code: DDNM form, 0.85); the
                per-task defaults are in the DDNM form, so ``eta_type="ddim"`` needs an explicit ``eta``.
            clip: clamp Tweedie's x̂0 to [-1, 1] before data consistency, whatever the scheduler's ``clip_sample``
                (``clip_denoised`` of :meth:`DDSScheduler.set_measurement`; the official DDS never clips).
            task: a :data:`~lml_sampler.pipelines.tasks.TASKS` name selecting the defaults (``None``: inferred).
            operator_range: ``(lo, hi)`` of the images the operator was applied to (e.g. ``(0, 1)``); the problem is
                mapped to the model's [-1, 1] and the result mapped back.
            drop_last: stop after the second-to-last step and return its data-consistent ``x̂0'`` (the paper's
                T−1 NFE variant, docs/dds.md §6).
            latents: initial noise ``(B, C, H, W)`` (default: drawn with ``generator``).
            output_type: ``"pt"`` (tensor) or ``"np"``.
            callback: called as ``callback(i, t, x)`` after every step.
        """
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
        if output_type not in ("pt", "np"):
            raise ValueError(f"output_type must be 'pt' or 'np', got {output_type!r}")
        check_noise_std(noise_std, noiseless)
        if task is not None and task not in TASKS:
            raise ValueError(f"task must be one of {TASKS} (selects the tuned defaults) or None, got {task!r}")
        noisy = (noise_std or 0) > 0 or gamma is not None
        defaults = dds_defaults(operator_task(operator) if task is None else task, noisy)
        if eta is None:
            if eta_type != "ddnm":
                raise ValueError("eta_type='ddim' needs an explicit eta: the per-task defaults are in the DDNM form")
            eta = defaults["eta"]
        cg_iters = defaults["cg_iters"] if cg_iters is None else cg_iters
        clip = defaults["clip"] if clip is None else bool(clip)
        if prior_variance is None:
            prior_variance = defaults.get("prior_variance", DEFAULT_PRIOR_VARIANCE)
        op, y_m, affine = model_space_problem(operator, y, operator_range)
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        shape = (y.shape[0], self.unet.config.in_channels, h, w)
        dtype = self.unet.dtype
        if latents is None:
            x = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
            x = latents.to(device=self.device, dtype=dtype)
        real = torch.float64 if dtype == torch.float64 else torch.float32
        y_m = y_m.to(self.device, torch.complex128 if real == torch.float64 else torch.complex64) if y_m.is_complex() \
            else y_m.to(self.device, real)

        sched = self.scheduler
        sched.set_timesteps(num_inference_steps, device=self.device)
        sched.set_measurement(op, y_m, gamma=gamma, cg_iters=cg_iters, noiseless=noiseless, cg_tol=cg_tol,
                              eta_type=eta_type, noise_std=noise_std, prior_variance=prior_variance,
                              clip_denoised=clip)
        timesteps = sched.timesteps
        if drop_last:
            if len(timesteps) < 2:
                raise ValueError("drop_last needs num_inference_steps >= 2")
            timesteps = timesteps[:-1]
        nfe = 0
        out = None
        for i, t in enumerate(self.progress_bar(timesteps)):
            eps = self.unet(x, t).sample
            nfe += 1
            out = sched.step(eps, t, x, eta=eta, generator=generator)
            x = out.prev_sample
            if callback is not None:
                callback(i, int(t), x)
        if drop_last:
            x = out.pred_original_sample
        history = torch.stack(sched.cg_iteration_history) if sched.cg_iteration_history else None
        cg_seconds = sched.cg_seconds
        sched.clear_measurement()
        image = affine.from_model(x) if affine is not None else x
        if output_type == "np":
            image = image.cpu().numpy()
        if not return_dict:
            return (image,)
        return ReconstructionOutput(images=image, nfe=nfe, cg_iterations=history, cg_seconds=cg_seconds)
