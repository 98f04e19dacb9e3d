"""Inverse-problem tasks on synthetic phantoms and the method runner shared by the CLI and the benchmark.

Ground truths are ellipse phantoms in [0, 1] (``lml_sampler.data.phantoms``); test phantoms use generator seeds
``TEST_SEED + seed`` and validation phantoms (for tuning baselines' knobs) ``VALID_SEED + seed``, both disjoint from
the global-RNG stream used in training. Operators act on physical images in [0, 1] (``operator_range=(0, 1)``;
for complex phantoms on (Re, Im) in [-1, 1]); ``‖A‖ <= 1`` for every task, so σ is comparable across tasks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from lml_sampler.operators import (
    Blur,
    Inpainting,
    LinearOperator,
    MultiCoilMRI,
    ParallelBeamCT,
    RealInput,
    SingleCoilMRI,
    add_noise,
    box_mask,
    gaussian_kernel,
    limited_angle_angles,
    make_mask,
    motion_kernel,
    random_mask,
    simulate_coil_sensitivities,
    sparse_view_angles,
)
from lml_sampler.operators.base import complex_to_real, real_to_complex

from .baselines import adjoint_reconstruction, cg_least_squares, ddnm_kwargs, fbp_reconstruction, tv_pdhg
from .common import psnr, relative_residual, ssim

TEST_SEED = 10_000
VALID_SEED = 20_000
TASKS = ("ct-sparse", "ct-limited", "mri", "deblur", "inpaint")
METHODS = ("dds", "dds-m0", "ddnm", "dps", "cgls", "fbp", "zerofill", "tv")


@dataclass
class Task:
    """An inverse problem: physical operator, ground truth ``x`` (operator domain), measurement ``y``."""

    name: str
    operator: LinearOperator
    x: torch.Tensor
    y: torch.Tensor
    sigma: float
    complex_image: bool
    info: dict = field(default_factory=dict)

    @property
    def operator_range(self) -> tuple[float, float]:
        return (-1.0, 1.0) if self.complex_image else (0.0, 1.0)

    def truth_image(self) -> torch.Tensor:
        """Ground truth for metrics: magnitude for complex images (data range 1)."""
        return self.x.abs() if self.x.is_complex() else self.x


def make_task(
    task: str,
    n: int = 4,
    size: int = 32,
    views: int | None = None,
    acc: float = 4,
    mask: str = "uniform1d",
    coils: int = 4,
    sigma: float = 0.0,
    kernel: str = "gaussian",
    complex_image: bool = False,
    seed: int = 0,
    split: str = "test",
) -> Task:
    """Build a task with ``n`` phantoms. ``views``: CT views (8 for ct-sparse, 120 over 0..119° for ct-limited);
    ``acc``/``mask``/``coils``: MRI (``coils=1`` = single coil); ``kernel``: "gaussian" | "motion"; ``mask`` for
    inpainting: "random" (70 % missing) | "box"."""
    from lml_sampler.data.phantoms import random_complex_phantoms, random_ellipse_phantoms

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if split not in ("test", "valid"):
        raise ValueError("split must be 'test' or 'valid'")
    base = TEST_SEED if split == "test" else VALID_SEED
    g = torch.Generator().manual_seed(base + seed)
    if complex_image:
        if task != "mri":
            raise ValueError("complex images (2-channel model) are only meaningful for the mri task")
        x = real_to_complex(random_complex_phantoms(n, size, g))
    else:
        x = random_ellipse_phantoms(n, size, g)
    gop = torch.Generator().manual_seed(base + 7919 * (seed + 1))
    info: dict = {"task": task, "size": size, "sigma": sigma, "n": n}
    if task == "ct-sparse":
        v = views or 8
        op = ParallelBeamCT(size, sparse_view_angles(v))
        info["views"] = v
    elif task == "ct-limited":
        v = views or 120
        op = ParallelBeamCT(size, limited_angle_angles(v, 120.0))
        info["views"], info["angles"] = v, "0-119 deg"
    elif task == "mri":
        m = make_mask(mask, size, acc, generator=gop)
        info.update(mask=mask, acc=acc, effective_acceleration=round(m.effective_acceleration, 3), coils=coils)
        op = SingleCoilMRI(m) if coils == 1 else MultiCoilMRI(m, simulate_coil_sensitivities(coils, size, gop))
        if not complex_image:
            op = RealInput(op)
    elif task == "deblur":
        k = gaussian_kernel(9, 2.0) if kernel == "gaussian" else motion_kernel(9, 7.0, 30.0)
        op = Blur(k, (1, size, size))
        info["kernel"] = kernel
    else:
        mk = random_mask(size, 0.7, gop) if mask in ("random", "uniform1d") else box_mask(size)
        op = Inpainting(mk, (1, size, size))
        info["mask"] = "box" if mask == "box" else "random70"
    clean = op.A(x if x.is_complex() or op.dtype == "real" else x.to(torch.complex64))
    y = add_noise(clean, sigma, g, support=op.measurement_support())
    return Task(task, op, x, y, float(sigma), complex_image, info)


def run_method(
    method: str,
    task: Task,
    pipe=None,
    nfe: int = 50,
    generator: torch.Generator | None = None,
    **kw,
) -> tuple[torch.Tensor, dict]:
    """Run one method on a task; returns ``(reconstruction in the operator domain, stats)``.

    ``pipe`` is a ``(unet, scheduler_config)`` source: any diffusers pipeline with ``unet`` and ``scheduler``.
    Keyword knobs: dds: ``gamma, cg_iters, eta, eta_type, noiseless, clip`` (default False); dps: ``zeta, dps_eta,
    clip`` (default True); cgls: ``cgls_iters``;
    tv: ``tv_lambda, tv_iters``.
    """
    op, y = task.operator, task.y
    stats: dict = {"method": method}
    t0 = time.perf_counter()
    if method in ("dds", "dds-m0", "ddnm"):
        from .dds import DDSPipeline
        from lml_sampler.schedulers.dds import DDSScheduler

        # Official DDS never clips x̂0 (default); ``clip=True`` clamps Tweedie's x̂0 to [-1, 1] before DC.
        clip = bool(kw.get("clip", False))
        dds = DDSPipeline(pipe.unet, DDSScheduler.from_config(pipe.scheduler.config, clip_sample=clip))
        dds.set_progress_bar_config(disable=True)
        noiseless = kw.get("noiseless", task.sigma == 0)
        args = dict(gamma=kw.get("gamma", 1.0), cg_iters=kw.get("cg_iters", 5), noiseless=noiseless)
        if method == "dds-m0":
            args["cg_iters"] = 0
        if method == "ddnm":
            args.update(ddnm_kwargs())
        out = dds(op, y, num_inference_steps=nfe, eta=kw.get("eta", 0.85), eta_type=kw.get("eta_type", "ddnm"),
                  generator=generator, operator_range=task.operator_range, **args)
        x = out.images
        stats.update(nfe=out.nfe, cg_seconds=dds.scheduler.cg_seconds, clip=clip, **{k: v for k, v in args.items()})
        stats["eta"], stats["eta_type"] = kw.get("eta", 0.85), kw.get("eta_type", "ddnm")
    elif method == "dps":
        from .dps import DPSPipeline
        from diffusers import DDIMScheduler

        # Official DPS clips x̂0 to [-1, 1] (``clip_denoised=True``); the gradient flows through the clamp.
        clip = bool(kw.get("clip", True))
        dps = DPSPipeline(pipe.unet, DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=clip))
        dps.set_progress_bar_config(disable=True)
        out = dps(op, y, num_inference_steps=nfe, zeta=kw.get("zeta", 1.0), eta=kw.get("dps_eta", 1.0),
                  generator=generator, operator_range=task.operator_range)
        x = out.images
        stats.update(nfe=out.nfe, zeta=kw.get("zeta", 1.0), clip=clip)
    elif method == "cgls":
        x = cg_least_squares(op, y, kw.get("cgls_iters", 10))
        stats["iters"] = kw.get("cgls_iters", 10)
    elif method == "fbp":
        x = fbp_reconstruction(op, y)
    elif method == "zerofill":
        x = adjoint_reconstruction(op, y)
    elif method == "tv":
        x = tv_pdhg(op, y, lam=kw.get("tv_lambda", 0.01), iters=kw.get("tv_iters", 300))
        stats["lambda"] = kw.get("tv_lambda", 0.01)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    stats["seconds"] = time.perf_counter() - t0
    if task.complex_image and not x.is_complex():
        x = real_to_complex(x)
    return x, stats


def evaluate(task: Task, x: torch.Tensor) -> dict:
    """Per-sample PSNR / SSIM (data_range 1 on [0, 1] images or magnitudes) and relative data residual."""
    xr = x.abs() if x.is_complex() else x
    xx = x if (x.is_complex() or task.operator.dtype == "real") else x.to(torch.complex64)
    res = relative_residual(task.operator, xx.to(task.x.dtype) if not x.is_complex() else xx, task.y)
    truth = task.truth_image()
    return {
        "psnr": psnr(xr, truth, 1.0).tolist(),
        "ssim": ssim(xr, truth, 1.0).tolist(),
        "residual": res.tolist(),
    }


__all__ = ["Task", "make_task", "run_method", "evaluate", "TASKS", "METHODS", "complex_to_real"]
