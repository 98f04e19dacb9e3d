"""``lml-reconstruct``: reconstruct users' data (fastMRI k-space, CT sinograms, images, volumes) or synthetic phantoms.

Synthetic phantoms, every method compared::

    lml-reconstruct --task ct-sparse --views 8 --model phantoms --method dds,fbp --nfe 50 --out runs/ct8

writes ``DIR/comparison.png`` (ground truth, input, every method) and ``DIR/metrics.json`` (per-sample and mean
PSNR / SSIM with data_range 1, relative data residual ‖Ax−y‖/‖y‖, seconds per reconstruction).

Users' data, one method (a file or a folder of files; ``pipelines/io.py`` documents the layouts)::

    lml-reconstruct --task mri --kspace file.h5 [--acc 4 --mask uniform1d] --model gaussian --nfe 20 --out DIR
    lml-reconstruct --task ct --sinogram sino.npy --angles angles.npy | --views 180 --model gaussian --out DIR
    lml-reconstruct --task ct-sparse --views 60 --image slice.png --model gaussian --out DIR    # simulated
    lml-reconstruct --task ct-sparse --views 8 --volume vol.npy --tv-z 0.02 --model gaussian --out DIR

writes ``DIR/reconstruction.h5`` (dataset ``reconstruction`` (slices, h, w) float32), ``DIR/png/slice_XXXX.png``
(reference | baseline | reconstruction) and ``DIR/metrics.json`` (PSNR / SSIM per slice and mean against the
reference, when there is one, beside the baseline: zero-filled RSS for k-space, FBP for CT, ``|Aᴴy|`` otherwise). A
folder is reconstructed file by file into ``DIR/<file stem>/``, skipping finished files, sharded across processes
under ``accelerate launch`` (as ``lml-eval sweep``), with ``DIR/metrics.csv`` summarising the files. Bad input
(missing or misnamed datasets, shapes that disagree, a model that does not fit the data) stops with one line on
stderr and exit status 2 before any reconstruction.
"""

from __future__ import annotations

import argparse
import csv
import math
import io as _stringio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lml_sampler._io import CellStore, atomic_open, atomic_write, atomic_write_json
from lml_sampler._io import check_output_folder
from lml_sampler.validation import check_float, check_fraction, check_int

from .common import Prior
from .tasks import METHODS, PRIOR_METHODS, TASKS, Task, evaluate, make_task, run_method

__all__ = ["main", "build_parser", "load_prior", "gaussian_prior", "fitted_gaussian_prior", "power_law_fit",
           "check_prior_fits"]

#: Suffixes of the data files a folder is searched for, per input option.
_SUFFIXES = {"kspace": (".h5",), "sinogram": (".npy",), "volume": (".npy",), "image": (".png", ".npy")}


def _radius(h: int, w: int, centred: bool) -> torch.Tensor:
    """|f| (cycles per pixel) on an (h, w) DFT grid, in ``fftfreq`` order or centred (``fftshift``-ed)."""
    fy, fx = torch.fft.fftfreq(h, dtype=torch.float64), torch.fft.fftfreq(w, dtype=torch.float64)
    r = (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt()
    return torch.fft.fftshift(r) if centred else r


def power_law_fit(power: torch.Tensor, measured: torch.Tensor, bins: int = 24) -> tuple[float, float]:
    """``(log c, α)`` of ``P(f) ≈ c·|f|^−α``: least squares of the log of the mean power against the mean log radius
    in log-spaced annuli of the measured frequencies (``power``, ``measured``: centred (H, W); DC excluded). The mean
    power (not the mean log power, biased by −0.58 for |X|² of Gaussian data) estimates ``E|X(k)|²``; α is clamped
    to [1, 4]."""
    h, w = power.shape
    r = _radius(h, w, centred=True)
    use = measured.to(torch.bool) & (r > 0) & (power > 0)
    if int(use.sum()) < 8:
        raise ValueError("too few measured frequencies to fit the Gaussian prior's spectrum")
    rr, pp = r[use], power[use].to(torch.float64)
    edges = torch.logspace(math.log10(float(rr.min())), math.log10(float(rr.max()) * (1 + 1e-9)), bins + 1,
                           dtype=torch.float64)
    which = torch.bucketize(rr, edges[1:-1])
    lr, lp = [], []
    for b in range(bins):
        sel = which == b
        if int(sel.sum()) >= 4:
            lr.append(rr[sel].log().mean())
            lp.append(pp[sel].mean().log())
    if len(lr) < 2:
        raise ValueError("the measured frequencies span too few annuli to fit the Gaussian prior's spectrum")
    A = torch.stack([torch.ones(len(lr), dtype=torch.float64), torch.stack(lr)], 1)
    coef = torch.linalg.lstsq(A, torch.stack(lp)[:, None]).solution[:, 0]
    return float(coef[0]), float(min(max(-coef[1], 1.0), 4.0))


def gaussian_prior(shape: tuple[int, int] = (32, 32), channels: int = 1,
                   power_law: tuple[float, float] | None = None) -> Prior:
    """The exact stationary Gaussian prior sized to the data: ``GaussianDenoiser`` in its Fourier form (never a
    dense covariance), channels independent (Re and Im for complex images).

    Spectrum per channel ``p(f) = c·max(|f|, f_min)^−α`` with ``f_min = 1/max(H, W)`` (the lowest non-zero
    frequency, so the mean is as free as the coarsest structure); ``power_law = (log c, α)`` of the image in model
    space (:func:`fitted_gaussian_prior`), default ``α = 2`` and ``c`` for a variance of 0.25 per pixel (images in
    [−1, 1]).
    """
    from diffusers import DDPMScheduler

    from lml_sampler.models.analytic import GaussianDenoiser

    h, w = (int(v) for v in shape)
    r = _radius(h, w, centred=False).clamp_min(1.0 / max(h, w))
    if power_law is None:
        p = r ** -2.0
        p = p * (0.25 * h * w / p.sum())
    else:
        log_c, alpha = power_law
        p = math.exp(log_c) * r ** -alpha
    return Prior(GaussianDenoiser.from_spectrum(p.expand(channels, h, w).to(torch.float32)), DDPMScheduler())


def fitted_gaussian_prior(problem, task: str) -> Prior:
    """:func:`gaussian_prior` with its power law fitted to the problem's own data (empirical Bayes).

    * MRI: at a sampled k-space location the coils' summed power ``Σ_c |y_c(k)|²`` estimates the image's ``|X(k)|²``
      (``Σ_c |S_c|² = 1``, smooth maps), unbiased by the missing data;
    * CT: the power spectrum of the FBP image (all frequencies; streaks of sparse views add a little power);
    * other tasks: the default spectrum (their ``Aᴴy`` is biased: blurred, masked).

    The fit sees the image's own decay (≈ |f|^−2.7 for the ellipse phantoms, against the default's |f|^−2, whose
    samples carry too much high-frequency power: +7 dB on multi-coil MRI at 320², +3 dB on 60-view CT at 128²). The
    power is split evenly between Re and Im for complex images and scaled to model space for real ones.
    """
    shape = tuple(problem.baseline.shape[-2:]) if not task.startswith("ct") else tuple(problem.operator.in_shape[-2:])
    channels = 2 if problem.complex_image else 1
    if task == "mri":
        power = problem.y.abs().pow(2).to(torch.float64).sum(1).mean(0)
        measured = problem.operator.mask > 0
        shape = tuple(power.shape)
    elif task.startswith("ct"):
        from lml_sampler.operators import fft2c

        image = problem.baseline.to(torch.float64) / problem.scale.to(torch.float64)[:, None, None]
        power = fft2c(image.to(torch.complex128)).abs().pow(2).mean(0)
        measured = torch.ones_like(power, dtype=torch.bool)
    else:
        return gaussian_prior(problem.operator.in_shape[-2:], channels)
    log_c, alpha = power_law_fit(power, measured)
    lo, hi = problem.operator_range
    log_c += math.log((2.0 / (hi - lo)) ** 2 / channels)
    return gaussian_prior(shape, channels, (log_c, alpha))


def load_prior(name: str, device: str = "cpu", shape: tuple[int, int] | None = None, channels: int = 1) -> Prior:
    """The prior: ``"phantoms"`` / ``"phantoms-complex"`` (bundled), a local diffusers folder, ``"random-tiny"``
    (an untrained 32×32 ``UNet2DModel``, for smoke tests) or ``"gaussian"`` (the exact stationary Gaussian prior,
    :func:`gaussian_prior`, of size ``shape`` (default 32×32) with ``channels``)."""
    from diffusers import DDPMScheduler

    if name == "random-tiny":
        from diffusers import UNet2DModel

        torch.manual_seed(0)
        unet = UNet2DModel(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                           down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                           layers_per_block=1, norm_num_groups=4)
        return Prior(unet.eval(), DDPMScheduler())
    if name == "gaussian":
        if shape is None:
            from lml_sampler.models.analytic import GaussianDenoiser

            return Prior(GaussianDenoiser.stationary(size=32, channels=1, total_variance=0.25 * 32 * 32),
                         DDPMScheduler())
        return gaussian_prior(shape, channels)
    from lml_sampler.models.bundled import load_pipeline

    pipe = load_pipeline(name)
    return Prior(pipe.unet.eval().requires_grad_(False).to(device), pipe.scheduler)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose user errors are one line on stderr and exit status 2 (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lml-reconstruct", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=TASKS + ("ct",), default=None,
                   help="synthetic phantoms, or the task of --image/--volume; implied by --kspace (mri) and "
                        "--sinogram (ct = ct-sparse)")
    p.add_argument("--method", default="dds",
                   help=f"comma-separated list from {','.join(METHODS)} (default dds; one method for data inputs)")
    p.add_argument("--model", default="phantoms", help="phantoms | phantoms-complex | folder | random-tiny | gaussian")
    p.add_argument("--nfe", type=int, default=50, help="network evaluations of the diffusion methods")
    p.add_argument("--n", type=int, default=4, help="number of test phantoms")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--views", type=int, default=None, help="CT views (ct-sparse 8, ct-limited 120 over 0..119 deg); "
                                                           "with --sinogram: its views, evenly over [0, 180) deg")
    p.add_argument("--acc", type=float, default=4, help="MRI nominal acceleration")
    p.add_argument("--mask", default="uniform1d",
                   help="MRI: uniform1d | gaussian1d | gaussian2d | poisson; inpaint: random | box")
    p.add_argument("--coils", type=int, default=4, help="MRI coils (1 = single coil)")
    p.add_argument("--kernel", default="gaussian", choices=("gaussian", "motion"))
    p.add_argument("--sigma", type=float, default=0.0, help="measurement noise std (complex: E|n|^2 = sigma^2)")
    p.add_argument("--gamma", type=float, default=None, help="DDS constant proximal weight (default: noise-aware DC "
                                                             "from --sigma; noiseless DC if sigma=0)")
    p.add_argument("--cg-iters", type=int, default=None, help="DDS CG iterations (default: the task's DDS_DEFAULTS)")
    p.add_argument("--eta", type=float, default=None, help="DDS eta (default: the task's DDS_DEFAULTS, DDNM form)")
    p.add_argument("--eta-type", default="ddnm", choices=("ddnm", "ddim"))
    p.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None,
                   help="DDS and DPS: clamp Tweedie's x0 to [-1, 1] (default: DDS per task, DPS on)")
    p.add_argument("--prior-variance", type=float, default=None,
                   help="DDS noise-aware weight: per-pixel prior variance in model space (default: per task)")
    p.add_argument("--zeta", type=float, default=1.0, help="DPS step size")
    p.add_argument("--cgls-iters", type=int, default=10)
    p.add_argument("--tv-lambda", type=float, default=0.01)
    data = p.add_argument_group("users' data (a file or a folder of files)")
    data.add_argument("--kspace", help="fastMRI-layout .h5 k-space")
    data.add_argument("--sinogram", help="parallel-beam sinogram .npy (views, detectors) or (slices, views, detectors)")
    data.add_argument("--angles", help="with --sinogram: .npy of the angles in degrees, one per view")
    data.add_argument("--size", type=int, default=None, help="with --sinogram: image side (default from the detector)")
    data.add_argument("--det-spacing", type=float, default=1.0, help="with --sinogram: detector bin width in pixels")
    data.add_argument("--reference", help="with --sinogram: ground-truth .npy (slices, N, N) for metrics")
    data.add_argument("--image", help=".png or .npy (H, W): simulate --task's measurements at its own size")
    data.add_argument("--volume", help=".npy (slices, H, W): simulate --task's measurements slice by slice")
    data.add_argument("--real-image", action="store_true",
                      help="k-space: reconstruct a real image with a 1-channel (magnitude) prior through RealInput")
    data.add_argument("--tv-z", type=float, default=0.0,
                      help="DDS: couple the slices of a volume by TV along z with this weight (0: independent "
                           "slices, streamed; > 0: the whole volume at once)")
    data.add_argument("--tv-z-rho", type=float, default=None, help="ADMM penalty of the TV-z coupling (default "
                                                                   "10 x --tv-z: differences below 0.1 vanish)")
    data.add_argument("--admm-iters", type=int, default=2, help="ADMM iterations per DDS step of the TV-z coupling")
    data.add_argument("--batch", type=int, default=1, help="slices reconstructed together (independent mode)")
    data.add_argument("--espirit-calib", type=int, default=24, help="ESPIRiT calibration region side")
    data.add_argument("--espirit-crop", type=float, default=0.95, help="ESPIRiT eigenvalue crop threshold")
    data.add_argument("--no-png", action="store_true", help="skip the per-slice PNGs")
    data.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, help="output folder")
    return p


def _save_png(path: Path, columns: list[tuple[str, torch.Tensor]], n_rows: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n_rows, len(columns), figsize=(1.6 * len(columns), 1.6 * n_rows), squeeze=False)
    for j, (title, imgs) in enumerate(columns):
        for i in range(n_rows):
            ax = axes[i, j]
            ax.imshow(imgs[i, 0].detach().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    with atomic_open(path) as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


def _mean_std(v: list[float]) -> dict:
    t = torch.tensor(v, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std()) if len(v) > 1 else 0.0}


#: The numeric options and their ranges (``None`` = unset, the default applies): refused before any work.
_INT_OPTIONS = {"nfe": 1, "n": 1, "seed": 0, "views": 1, "coils": 1, "cg_iters": 0, "cgls_iters": 1, "size": 1,
                "admm_iters": 1, "batch": 1, "espirit_calib": 2}
_FLOAT_OPTIONS = {"acc": dict(minimum=1.0), "sigma": dict(minimum=0.0), "gamma": dict(positive=True),
                  "zeta": dict(positive=True), "tv_lambda": dict(minimum=0.0), "det_spacing": dict(positive=True),
                  "tv_z": dict(minimum=0.0), "tv_z_rho": dict(positive=True),
                  "prior_variance": dict(positive=True)}


def check_options(args) -> None:
    """Every numeric option in range and ``--out`` a writable folder (ValueError naming the option)."""
    for key, minimum in _INT_OPTIONS.items():
        if getattr(args, key) is not None:
            check_int(getattr(args, key), "--" + key.replace("_", "-"), minimum=minimum)
    for key, bounds in _FLOAT_OPTIONS.items():
        if getattr(args, key) is not None:
            check_float(getattr(args, key), "--" + key.replace("_", "-"), **bounds)
    if args.eta is not None:
        check_fraction(args.eta, "--eta")
    elif args.eta_type == "ddim":
        raise ValueError("--eta-type ddim needs an explicit --eta (the defaults are in the DDNM form)")
    if check_fraction(args.espirit_crop, "--espirit-crop") == 1.0:
        raise ValueError("--espirit-crop must be < 1 (1 would zero every coil map), got 1.0")
    check_output_folder(args.out, "--out")


def check_nfe_fits(args, prior: Prior | None) -> None:
    """``--nfe`` at most the prior's training steps (a diffusion model has no noise levels between them)."""
    if prior is not None:
        check_int(args.nfe, "--nfe", minimum=1, maximum=int(prior.scheduler.config.num_train_timesteps))


def _knobs(args) -> dict:
    """The methods' keyword knobs from the command line (``run_method`` gives each method its own). Unset DDS knobs
    stay out, so that ``run_method`` takes the task's tuned ``DDS_DEFAULTS``."""
    return {k: v for k, v in dict(gamma=args.gamma, cg_iters=args.cg_iters, eta=args.eta, eta_type=args.eta_type,
                                  zeta=args.zeta, cgls_iters=args.cgls_iters, tv_lambda=args.tv_lambda,
                                  clip=args.clip, prior_variance=args.prior_variance).items() if v is not None}


def _prepare_synthetic(args, methods: list[str]) -> tuple[Prior | None, Task]:
    """The prior and the synthetic task (raises ValueError / TypeError on a bad model or task option)."""
    prior = load_prior(args.model) if any(m in PRIOR_METHODS for m in methods) else None
    check_nfe_fits(args, prior)
    complex_image = bool(prior is not None and prior.unet.config.in_channels == 2)
    size = prior.unet.config.sample_size if prior is not None else 32
    task = make_task(args.task, n=args.n, size=size, views=args.views, acc=args.acc, mask=args.mask,
                     coils=args.coils, sigma=args.sigma, kernel=args.kernel, complex_image=complex_image,
                     seed=args.seed)
    return prior, task


def _synthetic(args, methods: list[str], prior: Prior | None, task: Task) -> int:
    """Synthetic phantoms: every method on ``--n`` test phantoms, ``comparison.png`` and ``metrics.json``."""
    out = Path(args.out)
    knobs = _knobs(args)
    results = {"task": task.info, "model": args.model, "methods": {}}
    columns = [("ground truth", task.truth_image())]
    # The classical "input" picture: FBP for CT, the adjoint (zero-filled / blurred / masked image) otherwise.
    from .baselines import adjoint_reconstruction, fbp_reconstruction

    inp = fbp_reconstruction(task.operator, task.y) if task.name.startswith("ct") else \
        adjoint_reconstruction(task.operator, task.y)
    columns.append(("input (FBP)" if task.name.startswith("ct") else "input (Aᴴy)", inp.abs() if inp.is_complex() else inp))
    for m in methods:
        g = torch.Generator().manual_seed(args.seed)
        x, stats = run_method(m, task, prior, nfe=args.nfe, generator=g, **knobs)
        metrics = evaluate(task, x)
        stats["seconds_per_image"] = stats["seconds"] / args.n
        results["methods"][m] = {
            "stats": stats,
            "per_sample": metrics,
            **{k: _mean_std(v) for k, v in metrics.items()},
        }
        columns.append((f"{m} {results['methods'][m]['psnr']['mean']:.1f}dB", x.abs() if x.is_complex() else x))
        print(f"{m:9s} PSNR {results['methods'][m]['psnr']['mean']:6.2f} ± {results['methods'][m]['psnr']['std']:.2f}"
              f"  SSIM {results['methods'][m]['ssim']['mean']:.3f}  residual {results['methods'][m]['residual']['mean']:.3f}"
              f"  {stats['seconds_per_image']:.2f} s/image")
    _save_png(out / "comparison.png", columns, args.n)
    atomic_write_json(out / "metrics.json", results)
    return 0


def _data_input(args) -> tuple[str, str]:
    """``(option, path)`` of the one data input given."""
    given = [(k, getattr(args, k)) for k in _SUFFIXES if getattr(args, k) is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of --kspace, --sinogram, --image, --volume (got {[k for k, _ in given]})")
    return given[0]


def _data_task(args, kind: str) -> str:
    """The task of a data input: mri for k-space, ct-sparse / ct-limited for sinograms, --task otherwise."""
    if kind == "kspace":
        if args.task not in (None, "mri"):
            raise ValueError(f"--kspace reconstructs MRI: drop --task {args.task} or pass --task mri")
        return "mri"
    if kind == "sinogram":
        if args.task not in (None, "ct", "ct-sparse", "ct-limited"):
            raise ValueError(f"--sinogram reconstructs CT: drop --task {args.task} or pass --task ct")
        return "ct-limited" if args.task == "ct-limited" else "ct-sparse"
    if args.task in (None, "ct"):
        raise ValueError(f"--{kind} simulates a task's measurements: pass --task, one of {TASKS}")
    return args.task


def _open_sources(args, kind: str, path: str, task: str, complex_image: bool) -> list:
    """Open (and so validate) every data file before anything is reconstructed."""
    from .io import ImageSource, KspaceSource, SinogramSource, data_files

    files = data_files(path, _SUFFIXES[kind])
    if kind == "kspace":
        esp = {"calib": args.espirit_calib, "crop": args.espirit_crop}
        return [KspaceSource(f, acceleration=args.acc, mask=args.mask, seed=args.seed, real_image=args.real_image,
                             espirit=esp) for f in files]
    if kind == "sinogram":
        if args.reference is not None and len(files) > 1:
            raise ValueError("--reference holds one file's ground truth: use it with a single --sinogram file")
        return [SinogramSource(f, angles=args.angles, views=args.views if args.angles is None else None,
                               size=args.size, det_spacing=args.det_spacing, reference=args.reference)
                for f in files]
    return [ImageSource(f, task, complex_image=complex_image, sigma=args.sigma, seed=args.seed, views=args.views,
                        acc=args.acc, mask=args.mask if task in ("mri", "inpaint") else None, coils=args.coils,
                        kernel=args.kernel) for f in files]


def check_prior_fits(prior: Prior, source) -> None:
    """ValueError (naming the file and the fix) unless the prior's size and channels fit the source's images."""
    cfg = prior.unet.config
    size = cfg.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    want = 2 if source.complex_image else 1
    if cfg.in_channels != want:
        if source.complex_image:
            fix = ("complex data need a 2-channel (Re, Im) model, or --real-image to reconstruct a real image with a "
                   "1-channel (magnitude) prior through RealInput")
        else:
            fix = "real images need a 1-channel model"
        raise ValueError(f"{source.path}: the model has {cfg.in_channels} channel(s): {fix}")
    if (h, w) != tuple(source.image_shape):
        raise ValueError(f"{source.path}: the model is {h}×{w} but the images are "
                         f"{source.image_shape[0]}×{source.image_shape[1]}: use --model gaussian (it sizes itself to "
                         "the data) or a model trained at that size")


def _reconstruct_file(args, source, prior: Prior | None, method: str, out_dir: Path, progress: bool) -> dict:
    """Reconstruct one source slice batch by slice batch (or as one volume with --tv-z) into ``out_dir``.

    With ``--model gaussian`` on MRI and CT the prior's spectrum is fitted to each batch's data
    (:func:`fitted_gaussian_prior`); ``prior`` is then only the size and channel check's stand-in.
    """
    from tqdm.auto import tqdm

    from .io import ReconstructionWriter
    from .volume import dds_volume

    knobs = _knobs(args)
    n = len(source)
    coupled = args.tv_z > 0
    batches = [list(range(n))] if coupled else [list(range(a, min(a + args.batch, n))) for a in range(0, n, args.batch)]
    steps = args.nfe if method in PRIOR_METHODS else 1
    fit = prior is not None and args.model == "gaussian" and (source.task == "mri" or source.task.startswith("ct"))
    bar = tqdm(total=len(batches) * steps, desc=f"{source.path.name} ({n} slices)", unit="step",
               disable=not progress, leave=False)
    writer = ReconstructionWriter(out_dir, n, source.output_shape, source.data_range, png=not args.no_png)
    try:
        for idx in batches:
            problem = source.problem(idx)
            p = fitted_gaussian_prior(problem, source.task) if fit else prior
            hook = p.unet.register_forward_hook(lambda *_: bar.update(1) and None) if p is not None else None
            g = torch.Generator().manual_seed(args.seed * 1_000_003 + idx[0])
            try:
                if coupled:
                    # data consistency as run_method's "dds" chooses it: constant γ if given, else noise-aware
                    dc = {"gamma": knobs["gamma"]} if "gamma" in knobs else {"noise_std": problem.sigma}
                    x = dds_volume(p, problem.operator, problem.y, problem.operator_range, args.tv_z,
                                   num_inference_steps=args.nfe, cg_iters=args.cg_iters, eta=args.eta,
                                   eta_type=args.eta_type, clip=args.clip, prior_variance=args.prior_variance,
                                   rho=args.tv_z_rho, admm_iters=args.admm_iters, generator=g, **dc)
                else:
                    task = Task(source.task, problem.operator, None, problem.y, problem.sigma, problem.complex_image)
                    x, _ = run_method(method, task, p, nfe=args.nfe, generator=g, **knobs)
                    if steps == 1:
                        bar.update(1)
            finally:
                if hook is not None:
                    hook.remove()
            writer.add(problem.indices, problem.to_output(x), problem.baseline, problem.reference)
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    return writer.close({"source": source.info, "method": method, "model": args.model, "nfe": args.nfe,
                         "tv_z": args.tv_z, "batch": args.batch,
                         "prior": "gaussian, spectrum fitted per batch" if fit else args.model})


def _manifest(args, source, method: str) -> dict:
    """What a file's output folder holds: a rerun with other settings must not mix into it."""
    keys = ("model", "nfe", "seed", "sigma", "gamma", "cg_iters", "eta", "eta_type", "clip", "zeta", "cgls_iters",
            "tv_lambda", "tv_z", "tv_z_rho", "admm_iters", "batch", "espirit_calib", "espirit_crop")
    return {"source": source.info, "method": method, **{k: getattr(args, k) for k in keys}}


def _summary_csv(rows: list[dict]) -> str:
    cols = ["file", "slices", "psnr", "ssim", "baseline_psnr", "baseline_ssim", "seconds", "seconds_per_slice",
            "peak_memory_mb"]
    buf = _stringio.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "file": r["source"]["file"]})
    return buf.getvalue()


@dataclass
class _DataRun:
    """A validated data run: one source, prior (None for prior-free methods), output folder and cell key per file."""

    method: str
    sources: list
    priors: list
    dirs: list[Path]
    keys: list[str]
    out: Path
    single: bool
    dist: object


def _prepare_data(args, methods: list[str]) -> _DataRun:
    """Validate the options, every data file, the model and the output folder (raises ValueError / TypeError)."""
    from lml_sampler.eval.distributed import dist_info

    if len(methods) != 1:
        raise ValueError(f"data inputs take one --method, got {methods}")
    method = methods[0]
    if args.tv_z > 0 and method != "dds":
        raise ValueError("--tv-z couples the slices in DDS's data consistency: use it with --method dds")
    kind, path = _data_input(args)
    task = _data_task(args, kind)
    out = Path(args.out)
    sources = _open_sources(args, kind, path, task, False)  # the data first: their errors come before a model loads
    model = None
    if method in PRIOR_METHODS and args.model != "gaussian":
        if args.no_progress:
            from diffusers.utils import logging as diffusers_logging

            diffusers_logging.disable_progress_bar()
        model = load_prior(args.model)
        if model.unet.config.in_channels == 2 and kind in ("image", "volume") and task == "mri":
            sources = _open_sources(args, kind, path, task, True)  # complex MRI of the images: a 2-channel prior
    sized: dict = {}
    priors = []
    for src in sources:
        if method not in PRIOR_METHODS:
            priors.append(None)
            continue
        if args.model == "gaussian":  # one per image size and channel count
            key = (tuple(src.image_shape), 2 if src.complex_image else 1)
            sized.setdefault(key, load_prior("gaussian", shape=key[0], channels=key[1]))
            priors.append(sized[key])
        else:
            priors.append(model)
        check_prior_fits(priors[-1], src)
        check_nfe_fits(args, priors[-1])
    single = Path(path).is_file()
    keys = ["." if single else src.path.stem for src in sources]
    dist = dist_info()
    store = CellStore(out)
    if dist.is_main:  # the main process writes the manifests, the others check them after the barrier
        for src, key in zip(sources, keys):
            store.cell(key, _manifest(args, src, method))
    dist.barrier()
    for src, key in zip(sources, keys):
        store.cell(key, _manifest(args, src, method), check_only=True)
    return _DataRun(method, sources, priors, [out / k for k in keys], keys, out, single, dist)


def _run_data(args, run: _DataRun) -> int:
    """Reconstruct the files this process owns (finished ones are skipped); the main process writes metrics.csv."""
    import json

    from lml_sampler.eval.shards import owned_shards

    dist = run.dist
    for k in owned_shards(len(run.sources), dist.rank, dist.world_size):
        src, d = run.sources[k], run.dirs[k]
        if (d / "metrics.json").is_file():
            continue
        m = _reconstruct_file(args, src, run.priors[k], run.method, d, not args.no_progress)
        line = f"{src.path.name}: {m['slices']} slices, {m['seconds_per_slice']:.2f} s/slice"
        if "psnr" in m:
            line += (f", PSNR {m['psnr']:.2f} dB (baseline {m['baseline_psnr']:.2f}), SSIM {m['ssim']:.3f} "
                     f"(baseline {m['baseline_ssim']:.3f})")
        print(line)
    dist.barrier()
    if dist.is_main and not run.single:
        rows = [json.loads((d / "metrics.json").read_text()) for d in run.dirs if (d / "metrics.json").is_file()]
        atomic_write(run.out / "metrics.csv", _summary_csv(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        print(f"lml-reconstruct: unknown method(s) {bad}; choose from {METHODS}", file=sys.stderr)
        return 2
    data = any(getattr(args, k) is not None for k in _SUFFIXES)
    try:  # user errors: one line, exit 2, before any reconstruction
        check_options(args)
        if data:
            run = _prepare_data(args, methods)
        elif args.task is None or args.task == "ct":
            raise ValueError(f"pass --task (one of {TASKS}) for synthetic phantoms, or a data input (--kspace, "
                             "--sinogram, --image, --volume)")
        else:
            prior, task = _prepare_synthetic(args, methods)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"lml-reconstruct: {e}", file=sys.stderr)
        return 2
    return _run_data(args, run) if data else _synthetic(args, methods, prior, task)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
