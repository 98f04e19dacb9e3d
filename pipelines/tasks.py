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

from .baselines import (
    adjoint_reconstruction,
    cg_least_squares,
    ddnm_kwargs,
    fbp_reconstruction,
    pseudo_inverse,
    tv_pdhg,
)
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
    max_angle: float = 120.0,
    detectors: int | None = None,
    center_fraction: float = 0.08,
) -> Task:
    """Build a task with ``n`` phantoms. ``views``: CT views (8 for ct-sparse, 120 over [0, ``max_angle``) for
    ct-limited); ``detectors``: CT detector bins (default ⌈√2·size⌉); ``acc``/``mask``/``coils``/``center_fraction``:
    MRI (``coils=1`` = single coil; the ACS share of the 1-D masks); ``kernel``: "gaussian" | "motion"; ``mask`` for
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
        op = ParallelBeamCT(size, sparse_view_angles(v), n_detectors=detectors)
        info["views"], info["detectors"] = v, op.n_det
    elif task == "ct-limited":
        v = views or 120
        op = ParallelBeamCT(size, limited_angle_angles(v, max_angle), n_detectors=detectors)
        info["views"], info["angles"], info["detectors"] = v, f"0-{max_angle:g} deg", op.n_det
    elif task == "mri":
        kw = {"center_fraction": center_fraction} if mask in ("uniform1d", "gaussian1d") else {}
        m = make_mask(mask, size, acc, generator=gop, **kw)
        info.update(mask=mask, acc=acc, effective_acceleration=round(m.effective_acceleration, 3), coils=coils,
                    center_fraction=center_fraction)
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


#: Tuned DDS settings per task, keyed ``"<task>"`` (noiseless data) or ``"<task>-noisy"`` (σ > 0), with ``"generic"``
#: / ``"generic-noisy"`` for anything else. Chosen by ``python -m benchmarks.dds_benchmark`` on validation phantoms
#: (the best mean PSNR over the benchmark rows of the key; README section "dds" says whether these still equal the
#: tuned values). Knobs: ``clip`` (clamp x̂0 to [-1, 1]), ``cg_iters`` (M), ``eta`` (DDNM form) and, for noisy data,
#: ``prior_variance`` of the noise-aware weight (docs/dds.md §4). Used by :class:`DDSPipeline` (task inferred from
#: the operator, :func:`operator_task`), by :func:`run_method` and by ``lml-reconstruct`` for every knob not given.
DDS_DEFAULTS: dict[str, dict] = {
    "generic": dict(clip=True, cg_iters=10, eta=0.85),
    "generic-noisy": dict(clip=True, cg_iters=20, eta=0.85, prior_variance=0.25),
    # Tuned by the benchmark on 4 validation phantoms: CT 8 views with the `phantoms` prior (weights 290afdad6498),
    # single-coil MRI ×4 and 4-coil MRI ×4 at σ = 0.05 on complex images with `phantoms-complex` (a3ccaccd34c0).
    # Single-coil MRI ties across M (AᴴA is a projection: CG is exact after one iteration) and both MRI rows tie on
    # clipping (within 0.05 dB): the fewest iterations, then clipping on, win. The noise-aware prior variance
    # v = 0.05 is inside its grid {0.02, ..., 1}.
    "ct-sparse": dict(clip=True, cg_iters=20, eta=0.85),
    "mri": dict(clip=True, cg_iters=5, eta=0.85),
    "mri-noisy": dict(clip=True, cg_iters=5, eta=1.0, prior_variance=0.05),
}


def dds_defaults_key(task: str | None, noisy: bool) -> str:
    """The :data:`DDS_DEFAULTS` key of a task on noisy or noiseless data: ``"<task>"`` or ``"<task>-noisy"``."""
    return f"{task or 'generic'}{'-noisy' if noisy else ''}"


def dds_defaults(task: str | None, noisy: bool) -> dict:
    """A copy of the tuned DDS settings for ``task`` (a :data:`TASKS` name or ``None``) on noisy or noiseless data;
    the generic entry where the table has none for the task."""
    key = dds_defaults_key(task, noisy)
    return dict(DDS_DEFAULTS.get(key, DDS_DEFAULTS[dds_defaults_key(None, noisy)]))


def operator_task(operator: LinearOperator) -> str | None:
    """The :data:`TASKS` name an operator belongs to (through ``AffineInput``/``RealInput`` wrappers), else ``None``.

    Parallel-beam CT counts as sparse-view when its angles cover the half circle (span + spacing >= 179°) and as
    limited-angle otherwise.
    """
    op = operator
    while hasattr(op, "op") and not isinstance(op, (ParallelBeamCT, SingleCoilMRI, MultiCoilMRI, Blur, Inpainting)):
        op = op.op
    if isinstance(op, ParallelBeamCT):
        a = op.angles.sort().values
        spacing = float(a[1] - a[0]) if a.numel() > 1 else 180.0
        return "ct-sparse" if float(a[-1] - a[0]) + spacing >= 179.0 else "ct-limited"
    if isinstance(op, (SingleCoilMRI, MultiCoilMRI)):
        return "mri"
    if isinstance(op, Blur):
        return "deblur"
    if isinstance(op, Inpainting):
        return "inpaint"
    return None


def _dds_run(task: Task, prior: Prior, nfe: int, generator: RNG, **knobs) -> Result:
    """One :class:`DDSPipeline` call with ``knobs`` (its keyword arguments), reported in the stats."""
    from .dds import DDSPipeline

    dds = DDSPipeline(prior.unet, prior.scheduler)
    dds.set_progress_bar_config(disable=True)
    out = dds(task.operator, task.y, num_inference_steps=nfe, generator=generator, operator_range=task.operator_range,
              task=task.name, **knobs)
    return out.images, dict(nfe=out.nfe, cg_seconds=out.cg_seconds, **knobs)


def _given(**knobs) -> dict:
    return {k: v for k, v in knobs.items() if v is not None}


# Unset knobs (None) take the task's DDS_DEFAULTS. Data consistency: ``gamma=None`` passes the task's noise level
# (``noise_std=task.sigma``): noiseless DC for σ = 0, noise-aware DC (docs/dds.md §4) for σ > 0; an explicit
# ``gamma`` is the constant-weight proximal step of the official code, and ``noiseless=True`` forces hard DC.
@_method("dds")
def _dds(task: Task, prior: Prior, nfe: int, generator: RNG, gamma: float | None = None,
         cg_iters: int | None = None, noiseless: bool | None = None, eta: float | None = None,
         eta_type: str = "ddnm", clip: bool | None = None, prior_variance: float | None = None) -> Result:
    """DDS: ``cg_iters`` CG steps of data consistency per DDIM step (docs/dds.md §1, §3, §4)."""
    if noiseless:
        dc = {"noiseless": True}
    elif gamma is not None:
        dc = {"gamma": gamma}
    else:
        dc = {"noise_std": task.sigma}
    return _dds_run(task, prior, nfe, generator, **dc, **_given(cg_iters=cg_iters, eta=eta, clip=clip,
                                                                  prior_variance=prior_variance), eta_type=eta_type)


@_method("dds-m0")
def _dds_m0(task: Task, prior: Prior, nfe: int, generator: RNG, eta: float | None = None,
            clip: bool | None = None) -> Result:
    """DDS without data consistency (M = 0): plain DDIM from the same prior."""
    return _dds_run(task, prior, nfe, generator, cg_iters=0, noiseless=True, **_given(eta=eta, clip=clip))


@_method("ddnm")
def _ddnm(task: Task, prior: Prior, nfe: int, generator: RNG, eta: float | None = None,
          clip: bool | None = None) -> Result:
    """DDNM-style hard projection: DDS with noiseless CG run to convergence (:func:`ddnm_kwargs`)."""
    return _dds_run(task, prior, nfe, generator, **ddnm_kwargs(), **_given(eta=eta, clip=clip))


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


@_method("pinv")
def _pinv(task: Task, rcond: float = 1e-3) -> Result:
    """Truncated pseudo-inverse (singular values below ``rcond·s_max`` dropped): prior-free least squares."""
    return pseudo_inverse(task.operator, task.y, rcond), {"rcond": rcond}


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
    clip, prior_variance`` (unset: the task's :data:`DDS_DEFAULTS`); dps: ``zeta, dps_eta, clip`` (default True);
    pinv: ``rcond``; cgls: ``cgls_iters``; tv: ``tv_lambda, tv_iters``.
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


__all__ = ["Task", "make_task", "run_method", "evaluate", "TASKS", "METHODS", "PRIOR_METHODS", "DDS_DEFAULTS",
           "dds_defaults", "dds_defaults_key", "operator_task", "complex_to_real"]
