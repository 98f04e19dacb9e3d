"""Inverse-problem tasks on synthetic phantoms and the method runner shared by the CLI and the benchmark.

Ground truths are ellipse phantoms in [0, 1] (``lml_sampler.data.phantoms``); test phantoms use generator seeds
``TEST_SEED + seed`` and validation phantoms (for tuning baselines' knobs) ``VALID_SEED + seed``, both disjoint from
the global-RNG stream used in training. Operators act on physical images in [0, 1] (``operator_range=(0, 1)``;
for complex phantoms on (Re, Im) in [-1, 1]); ``‖A‖ <= 1`` for every task, so σ is comparable across tasks.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Callable

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
from .common import Prior, psnr, relative_residual, ssim

TEST_SEED = 10_000
VALID_SEED = 20_000
TASKS = ("ct-sparse", "ct-limited", "mri", "deblur", "inpaint")


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


Result = tuple[torch.Tensor, dict]
RNG = torch.Generator | None

#: Method name -> function ``(task, [prior, nfe, generator,] **knobs) -> (x, stats)``, filled by :func:`_method`.
_METHODS: dict[str, Callable[..., Result]] = {}


def _method(name: str):
    """Register a method function under ``name``; its keyword parameters are the method's knobs."""

    def register(fn):
        _METHODS[name] = fn
        return fn

    return register


def _dds_run(task: Task, prior: Prior, nfe: int, generator: RNG, eta: float, eta_type: str, clip: bool,
             **dc) -> Result:
    """One :class:`DDSPipeline` call; ``dc`` are its data-consistency arguments (``gamma, cg_iters, noiseless,
    cg_tol``), reported in the stats."""
    from lml_sampler.schedulers.dds import DDSScheduler

    from .dds import DDSPipeline

    dds = DDSPipeline(prior.unet, DDSScheduler.from_config(prior.scheduler.config, clip_sample=clip))
    dds.set_progress_bar_config(disable=True)
    out = dds(task.operator, task.y, num_inference_steps=nfe, eta=eta, eta_type=eta_type, generator=generator,
              operator_range=task.operator_range, **dc)
    return out.images, dict(nfe=out.nfe, cg_seconds=out.cg_seconds, clip=clip, **dc, eta=eta, eta_type=eta_type)


# The official DDS code never clips x̂0, hence ``clip=False``; ``clip=True`` clamps Tweedie's x̂0 to [-1, 1] before
# data consistency. ``noiseless=None`` means noiseless data consistency exactly when the task has no noise.
@_method("dds")
def _dds(task: Task, prior: Prior, nfe: int, generator: RNG, gamma: float = 1.0, cg_iters: int = 5,
         noiseless: bool | None = None, eta: float = 0.85, eta_type: str = "ddnm", clip: bool = False) -> Result:
    """DDS: ``cg_iters`` CG steps of data consistency per DDIM step (docs/dds.md §1, §3, §4)."""
    noiseless = task.sigma == 0 if noiseless is None else noiseless
    return _dds_run(task, prior, nfe, generator, eta, eta_type, clip, gamma=gamma, cg_iters=cg_iters,
                    noiseless=noiseless)


@_method("dds-m0")
def _dds_m0(task: Task, prior: Prior, nfe: int, generator: RNG, gamma: float = 1.0,
            noiseless: bool | None = None, eta: float = 0.85, eta_type: str = "ddnm", clip: bool = False) -> Result:
    """DDS without data consistency (M = 0): plain DDIM from the same prior."""
    noiseless = task.sigma == 0 if noiseless is None else noiseless
    return _dds_run(task, prior, nfe, generator, eta, eta_type, clip, gamma=gamma, cg_iters=0, noiseless=noiseless)


@_method("ddnm")
def _ddnm(task: Task, prior: Prior, nfe: int, generator: RNG, gamma: float = 1.0, eta: float = 0.85,
          eta_type: str = "ddnm", clip: bool = False) -> Result:
    """DDNM-style hard projection: DDS with noiseless CG run to convergence (:func:`ddnm_kwargs`)."""
    return _dds_run(task, prior, nfe, generator, eta, eta_type, clip, gamma=gamma, **ddnm_kwargs())


@_method("dps")
def _dps(task: Task, prior: Prior, nfe: int, generator: RNG, zeta: float = 1.0, dps_eta: float = 1.0,
         clip: bool = True) -> Result:
    """DPS on DDIM (docs/dds.md §7). The official DPS clips x̂0 to [-1, 1] (``clip_denoised=True``), hence
    ``clip=True``; the gradient flows through the clamp."""
    from diffusers import DDIMScheduler

    from .dps import DPSPipeline

    dps = DPSPipeline(prior.unet, DDIMScheduler.from_config(prior.scheduler.config, clip_sample=clip))
    dps.set_progress_bar_config(disable=True)
    out = dps(task.operator, task.y, num_inference_steps=nfe, zeta=zeta, eta=dps_eta, generator=generator,
              operator_range=task.operator_range)
    return out.images, dict(nfe=out.nfe, zeta=zeta, clip=clip)


@_method("cgls")
def _cgls(task: Task, cgls_iters: int = 10) -> Result:
    """Early-stopped CG least squares from zero."""
    return cg_least_squares(task.operator, task.y, cgls_iters), {"iters": cgls_iters}


@_method("fbp")
def _fbp(task: Task) -> Result:
    """Filtered back-projection (CT only)."""
    return fbp_reconstruction(task.operator, task.y), {}


@_method("zerofill")
def _zerofill(task: Task) -> Result:
    """The adjoint ``Aᴴy`` (zero-filled for MRI)."""
    return adjoint_reconstruction(task.operator, task.y), {}


@_method("tv")
def _tv(task: Task, tv_lambda: float = 0.01, tv_iters: int = 300) -> Result:
    """Isotropic TV by PDHG."""
    return tv_pdhg(task.operator, task.y, lam=tv_lambda, iters=tv_iters), {"lambda": tv_lambda}


METHODS = tuple(_METHODS)
#: The methods that sample from a diffusion prior (:func:`run_method` needs ``prior`` for them).
PRIOR_METHODS = tuple(m for m, fn in _METHODS.items() if "prior" in inspect.signature(fn).parameters)


def run_method(
    method: str,
    task: Task,
    prior: Prior | None = None,
    nfe: int = 50,
    generator: RNG = None,
    **knobs,
) -> Result:
    """Run one method on a task; returns ``(reconstruction in the operator domain, stats)``.

    ``prior`` is needed by the diffusion methods (:data:`PRIOR_METHODS`), which run ``nfe`` network evaluations.
    ``knobs`` are the keyword parameters of the method's function; those another method takes are ignored, so one
    knob set serves a comparison of several methods: dds/dds-m0/ddnm: ``gamma, cg_iters, noiseless, eta, eta_type,
    clip`` (default False); dps: ``zeta, dps_eta, clip`` (default True); cgls: ``cgls_iters``; tv: ``tv_lambda,
    tv_iters``.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method in PRIOR_METHODS and prior is None:
        raise ValueError(f"method {method!r} samples from a diffusion prior: pass prior=Prior(unet, scheduler)")
    fn = _METHODS[method]
    params = inspect.signature(fn).parameters
    args = {k: v for k, v in {**knobs, "prior": prior, "nfe": nfe, "generator": generator}.items() if k in params}
    t0 = time.perf_counter()
    x, stats = fn(task, **args)
    stats = {"method": method, **stats, "seconds": time.perf_counter() - t0}
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


__all__ = ["Task", "make_task", "run_method", "evaluate", "TASKS", "METHODS", "PRIOR_METHODS", "complex_to_real"]
