"""Users' data in and reconstructions out: fastMRI k-space, CT sinograms, image volumes; HDF5, PNG and metrics.

A *source* validates a file when it is opened (one-line :class:`DataError` naming the file and the dataset, before
any reconstruction) and then reads it one batch of slices at a time, so memory is bounded in the number of slices:

* :class:`KspaceSource`: a fastMRI ``.h5`` file: ``kspace`` (slices, coils, H, W) complex (multi-coil) or
  (slices, H, W) (single-coil), centred orthonormal 2-D FFT; an optional ``mask`` (W,) or (H, W) means the data are
  already under-sampled, otherwise a mask is drawn (one per file, as in fastMRI); ``reconstruction_rss`` /
  ``reconstruction_esc`` is the reference, and fixes the (centre-cropped) output size; coil sensitivities come from
  a ``sensitivities`` dataset (slices, coils, H, W) or are estimated per slice by ESPIRiT.
* :class:`SinogramSource`: a parallel-beam sinogram ``.npy`` (views, detectors) or (slices, views, detectors) of
  line integrals in units of the pixel side (the geometry of :class:`~lml_sampler.operators.ParallelBeamCT`),
  angles in degrees from a ``.npy`` or ``views`` evenly over [0°, 180°).
* :class:`ImageSource`: an image (``.png``, ``.npy`` (H, W)) or volume (``.npy`` (slices, H, W)) from which a task's
  measurements are simulated at the image's own size; the image is the reference.

``source.problem(indices)`` returns a :class:`Problem`: the operator, the measurements, the reference and the
classical baseline (zero-filled RSS or FBP or ``Aᴴy``), so a notebook needs no CLI::

    src = KspaceSource("file1000001.h5", acceleration=4)
    p = src.problem([0])
    out = DDSPipeline(unet, scheduler)(p.operator, p.y, operator_range=p.operator_range)
    image = p.to_output(out.images)            # (1, 320, 320) float32, in the file's units

Intensities: each slice is divided by ``scale`` (the 99.9th percentile of its baseline's magnitude, or the volume's
maximum for simulated measurements) so that the prior sees images of magnitude ≲ 1; ``to_output`` multiplies it
back. :class:`ReconstructionWriter` writes ``reconstruction.h5`` (dataset ``reconstruction`` (slices, h, w)
float32, the fastMRI submission layout), one PNG per slice and ``metrics.json`` (PSNR / SSIM per slice and mean,
``data_range`` = the reference volume's maximum, the fastMRI convention).
"""

from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from lml_sampler._io import atomic_open, atomic_path, atomic_write_json
from lml_sampler.operators import (
    LinearOperator,
    MultiCoilMRI,
    ParallelBeamCT,
    RealInput,
    SingleCoilMRI,
    add_noise,
    fft2c,
    ifft2c,
    make_mask,
    real_to_complex,
    sparse_view_angles,
)
from lml_sampler.operators.coils import calibration_region, espirit_maps

from .common import psnr, ssim

__all__ = [
    "DataError",
    "Problem",
    "KspaceSource",
    "SinogramSource",
    "ImageSource",
    "ReconstructionWriter",
    "write_kspace_file",
    "simulate_kspace",
    "data_files",
    "peak_memory_mb",
]

#: Reference datasets of fastMRI files, multi-coil first.
REFERENCE_DATASETS = ("reconstruction_rss", "reconstruction_esc")
#: Quantile of a slice's baseline magnitude mapped to 1 (robust to a few hot pixels, unlike the maximum).
SCALE_QUANTILE = 0.999


class DataError(ValueError):
    """A user's data file does not fit: the message names the file and the dataset and says what is wrong."""

    def __init__(self, path: str | os.PathLike, dataset: str | None, message: str):
        where = f"{path}" if dataset is None else f"{path}: dataset '{dataset}'"
        super().__init__(f"{where}: {message}")


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, MB (``ru_maxrss``; kilobytes on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def center_crop(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The central ``shape`` of the last two dims (fastMRI's ``center_crop``: start at ``(H − h)//2``)."""
    H, W = x.shape[-2:]
    h, w = shape
    r, c = (H - h) // 2, (W - w) // 2
    return x[..., r : r + h, c : c + w]


def _quantile_scale(images: torch.Tensor) -> torch.Tensor:
    """Per-slice scale ``(B,)``: the :data:`SCALE_QUANTILE` quantile of ``|images|`` (B, H, W), floored at a tiny
    positive number so that an empty slice stays finite."""
    flat = images.abs().to(torch.float64).flatten(1)
    q = torch.quantile(flat, SCALE_QUANTILE, dim=1) if flat.shape[1] <= 16_000_000 else flat.amax(1)
    return q.clamp_min(1e-30)


@dataclass
class Problem:
    """A batch of slices to reconstruct: ``y = operator(x)`` with ``x`` the slices divided by ``scale``.

    Attributes:
        operator: acts on images in ``operator_range`` (magnitude ≲ 1); a complex operator for complex images.
        y: measurements ``(B, *operator.out_shape)``.
        scale: ``(B,)`` file units per unit of the normalised image.
        baseline: ``(B, h, w)`` float32 classical reconstruction in file units (zero-filled RSS, FBP or ``|Aᴴy|``).
        reference: ``(B, h, w)`` float32 in file units, or None.
        output_shape: ``(h, w)``, the centre crop written out (the reference's size).
        indices: slice numbers in the file.
        complex_image: the unknown image is complex (2-channel prior).
        sigma: noise std of the normalised measurements (0 when unknown: the noiseless data consistency).
        weight: ``(B, H, W)`` multiplying the image before output, or None: for SENSE, ``‖S(r)‖``, so that the output
            is the root-sum-of-squares of the model's coil images ``S_c·x`` (the quantity the fastMRI reference
            measures) and pixels no coil sees (where ESPIRiT's maps are 0 and the prior alone fills ``x``) are 0.
    """

    operator: LinearOperator
    y: torch.Tensor
    scale: torch.Tensor
    baseline: torch.Tensor
    reference: torch.Tensor | None
    output_shape: tuple[int, int]
    indices: list[int]
    complex_image: bool
    sigma: float = 0.0
    weight: torch.Tensor | None = None

    @property
    def operator_range(self) -> tuple[float, float]:
        """Value range of the normalised image: (Re, Im) in [−1, 1] for complex images, [0, 1] for real ones."""
        return (-1.0, 1.0) if self.complex_image else (0.0, 1.0)

    def to_output(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(B, C, H, W)`` in the operator's domain (or a pipeline's 2-channel (Re, Im) output for
        a complex image) -> ``(B, h, w)`` float32 magnitude or real image, centre-cropped, in file units."""
        if self.complex_image and not x.is_complex():
            x = real_to_complex(x)
        img = x.abs() if x.is_complex() else x
        img = img[:, 0] if img.ndim == 4 else img
        if self.weight is not None:
            img = img * self.weight.to(img.dtype)
        return (center_crop(img, self.output_shape).to(torch.float64)
                * self.scale.to(torch.float64)[:, None, None]).to(torch.float32)


class _Source:
    """Common attributes of the sources: ``path``, ``n_slices``, ``image_shape`` (the reconstruction grid (H, W)),
    ``output_shape``, ``complex_image``, ``task`` (a name of ``pipelines.tasks.TASKS``), ``data_range`` (the
    reference volume's maximum, None without a reference) and ``info`` (JSON-safe description)."""

    path: Path
    n_slices: int
    image_shape: tuple[int, int]
    output_shape: tuple[int, int]
    complex_image: bool
    task: str
    data_range: float | None
    info: dict

    def __len__(self) -> int:
        return self.n_slices

    def problem(self, indices: Sequence[int]) -> Problem:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_indices(self, indices: Sequence[int]) -> list[int]:
        idx = [int(i) for i in indices]
        if not idx or min(idx) < 0 or max(idx) >= self.n_slices:
            raise IndexError(f"{self.path}: slice indices must be in [0, {self.n_slices}), got {idx}")
        return idx


# -- fastMRI k-space -------------------------------------------------------------------------------------------------


def _h5(path: Path):
    import h5py

    if not path.is_file():
        raise DataError(path, None, "no such file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataError(path, None, f"not an HDF5 file ({e})") from None


class KspaceSource(_Source):
    """A fastMRI-layout HDF5 file (see the module docstring); validated on construction.

    Args:
        path: the ``.h5`` file.
        acceleration, mask: retrospective under-sampling (``make_mask`` kind and nominal acceleration) when the file
            has no ``mask``; ignored otherwise (``info["mask_source"]`` says which).
        seed: seed of the retrospective mask.
        real_image: reconstruct a real image with a 1-channel (magnitude) prior through ``RealInput``.
        espirit: keyword arguments of :func:`~lml_sampler.operators.coils.espirit_maps`.
    """

    task = "mri"

    def __init__(self, path: str | os.PathLike, acceleration: float = 4, mask: str = "uniform1d", seed: int = 0,
                 real_image: bool = False, espirit: dict | None = None):
        self.path = Path(path)
        self.real_image, self.espirit = bool(real_image), dict(espirit or {})
        self.complex_image = not self.real_image
        with _h5(self.path) as f:
            names = sorted(f.keys())
            if "kspace" not in f:
                raise DataError(self.path, "kspace", f"missing (the file has {names}); fastMRI files store "
                                                     "(slices, coils, H, W) or (slices, H, W) complex k-space there")
            ks = f["kspace"]
            if ks.dtype.kind != "c":
                raise DataError(self.path, "kspace", f"must be complex (fastMRI stores complex64), got {ks.dtype}")
            if ks.ndim not in (3, 4):
                raise DataError(self.path, "kspace", f"must be (slices, coils, H, W) or (slices, H, W), got shape "
                                                     f"{ks.shape}")
            if min(ks.shape) < 1:
                raise DataError(self.path, "kspace", f"is empty, shape {ks.shape}")
            self.n_slices = int(ks.shape[0])
            self.n_coils = int(ks.shape[1]) if ks.ndim == 4 else 1
            self.multicoil = ks.ndim == 4
            H, W = (int(s) for s in ks.shape[-2:])
            self.image_shape = (H, W)
            self.mask = self._file_mask(f, H, W)
            self.has_file_mask = self.mask is not None
            if self.mask is None:
                if not acceleration >= 1:
                    raise ValueError(f"acceleration must be >= 1, got {acceleration!r}")
                sampling = make_mask(mask, (H, W), acceleration, generator=torch.Generator().manual_seed(seed))
                self.mask = sampling.mask.to(torch.float32)
            self.sens_name = self._sensitivities(f, H, W)
            self.reference_name = next((r for r in REFERENCE_DATASETS if r in f), None)
            self.output_shape, self.data_range = (H, W), None
            if self.reference_name is not None:
                self.output_shape, self.data_range = self._reference(f, H, W)
        eff = float(self.mask.numel() / self.mask.sum().clamp_min(1))
        self.info = {"file": str(self.path), "kind": "kspace", "slices": self.n_slices, "coils": self.n_coils,
                     "kspace_shape": [H, W], "output_shape": list(self.output_shape),
                     "mask_source": "file" if self.has_file_mask else f"retrospective {mask} x{acceleration}",
                     "effective_acceleration": round(eff, 3), "reference": self.reference_name,
                     "sensitivities": self.sens_name or ("espirit" if self.multicoil else None),
                     "real_image": self.real_image}

    def _file_mask(self, f, H: int, W: int) -> torch.Tensor | None:
        if "mask" not in f:
            return None
        m = np.asarray(f["mask"][()])
        if m.ndim == 1:
            if m.shape[0] != W:
                raise DataError(self.path, "mask", f"has length {m.shape[0]} but kspace has W = {W} columns")
            m = np.broadcast_to(m, (H, W))
        elif m.shape != (H, W):
            raise DataError(self.path, "mask", f"must be (W,) = ({W},) or (H, W) = {(H, W)}, got {m.shape}")
        if m.dtype.kind == "c" or not np.isin(m, (0, 1)).all():
            raise DataError(self.path, "mask", "must hold only 0 and 1 (sampled k-space columns)")
        if not m.any():
            raise DataError(self.path, "mask", "samples nothing (all zeros)")
        return torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))

    def _sensitivities(self, f, H: int, W: int) -> str | None:
        if "sensitivities" not in f:
            if self.multicoil:
                esp = {k: v for k, v in self.espirit.items() if k in ("calib", "kernel")}
                try:
                    calibration_region(self.mask, **esp)
                except ValueError as e:
                    where = "mask" if self.has_file_mask else "kspace"
                    raise DataError(self.path, where, f"coil maps by ESPIRiT: {e}") from None
            return None
        s = f["sensitivities"]
        expected = (self.n_slices, self.n_coils, H, W)
        if s.dtype.kind != "c" or tuple(s.shape) != expected:
            raise DataError(self.path, "sensitivities", f"must be complex {expected}, got {s.dtype} {s.shape}")
        return "sensitivities"

    def _reference(self, f, H: int, W: int) -> tuple[tuple[int, int], float]:
        ref = f[self.reference_name]
        if ref.ndim != 3 or ref.shape[0] != self.n_slices or ref.shape[1] > H or ref.shape[2] > W:
            raise DataError(self.path, self.reference_name,
                            f"must be (slices, h, w) = ({self.n_slices}, <= {H}, <= {W}), got {ref.shape}")
        if ref.dtype.kind not in "fiu":
            raise DataError(self.path, self.reference_name, f"must be real, got {ref.dtype}")
        vmax = f.attrs.get("max")
        if vmax is None:
            vmax = max(float(np.max(ref[i])) for i in range(self.n_slices))
        return (int(ref.shape[1]), int(ref.shape[2])), float(vmax)

    def problem(self, indices: Sequence[int]) -> Problem:
        idx = self._check_indices(indices)
        with _h5(self.path) as f:
            ks = torch.from_numpy(np.stack([f["kspace"][i] for i in idx])).to(torch.complex64)
            ref = None
            if self.reference_name is not None:
                ref = torch.from_numpy(np.stack([f[self.reference_name][i] for i in idx]).astype(np.float32))
            sens = None
            if self.sens_name is not None:
                sens = torch.from_numpy(np.stack([f[self.sens_name][i] for i in idx])).to(torch.complex64)
        if not self.multicoil:
            ks = ks[:, None]
        y = ks * self.mask  # a file mask: the data are zero there already; retrospective: under-sample now
        coil_images = ifft2c(y)
        zero_filled = coil_images.abs().pow(2).sum(1).sqrt()  # RSS (single coil: the magnitude)
        scale = _quantile_scale(zero_filled)
        y = y / scale.to(torch.float32)[:, None, None, None]
        if self.multicoil:
            if sens is None:
                sens = torch.stack([espirit_maps(y[b], self.mask, **self.espirit) for b in range(len(idx))])
            else:
                sens = sens / sens.abs().pow(2).sum(1).sqrt().amax().clamp_min(1.0)  # keep ‖A‖ <= 1
            op: LinearOperator = MultiCoilMRI(self.mask, sens if len(idx) > 1 else sens[0])
            weight = sens.abs().pow(2).sum(1).sqrt()
        else:
            op, weight = SingleCoilMRI(self.mask), None
        if self.real_image:
            op = RealInput(op)
        return Problem(op, y, scale, center_crop(zero_filled, self.output_shape).to(torch.float32), ref,
                       self.output_shape, idx, self.complex_image, weight=weight)


# -- CT sinograms --------------------------------------------------------------------------------------------------


def _load_npy(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(path, None, "no such file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(path, None, f"not a .npy array ({what}): {e}") from None


class SinogramSource(_Source):
    """A parallel-beam sinogram ``.npy`` (views, detectors) or (slices, views, detectors); validated on
    construction.

    Layout and units (those of :class:`~lml_sampler.operators.ParallelBeamCT`): row ``v`` is the projection at
    ``angles[v]`` degrees; detector ``d`` sits at ``(d − (n_det−1)/2)·det_spacing`` pixels from the rotation axis
    through the image centre; values are line integrals with path length in pixel sides (attenuation per pixel ×
    pixels), so the reconstruction is in attenuation per pixel.

    Args:
        path: the sinogram.
        angles: a ``.npy`` path or array of the angles (degrees, one per view), or None with ``views``.
        views: the views are ``k·180°/views`` (must equal the sinogram's number of views).
        size: image side N (default: the largest N whose ``ceil(√2·N/det_spacing)`` fits the detector).
        det_spacing: detector bin width in pixels.
        reference: optional ``.npy`` (slices, N, N) or (N, N) ground truth for metrics.
    """

    task = "ct-sparse"
    complex_image = False

    def __init__(self, path: str | os.PathLike, angles=None, views: int | None = None, size: int | None = None,
                 det_spacing: float = 1.0, reference: str | os.PathLike | None = None):
        self.path = Path(path)
        sino = _load_npy(self.path, "sinogram")
        if sino.ndim not in (2, 3) or sino.dtype.kind not in "fiu":
            raise DataError(self.path, "sinogram", f"must be real (views, detectors) or (slices, views, detectors), "
                                                   f"got {sino.dtype} {sino.shape}")
        self._3d = sino.ndim == 3
        self.n_slices = int(sino.shape[0]) if self._3d else 1
        V, n_det = (int(s) for s in sino.shape[-2:])
        if angles is None and views is None:
            raise ValueError("a sinogram needs its angles: pass angles (a .npy of degrees) or views")
        if angles is not None:
            apath = Path(angles) if isinstance(angles, (str, os.PathLike)) else None
            a = _load_npy(apath, "angles") if apath is not None else np.asarray(angles)
            src = apath or "angles"
            if a.ndim != 1 or a.dtype.kind not in "fiu" or not np.isfinite(a).all():
                raise DataError(src, "angles", f"must be a finite 1-D array of degrees, got {a.dtype} {a.shape}")
            if a.shape[0] != V:
                raise DataError(self.path, "sinogram", f"has {V} views (axis -2) but angles {src} has {a.shape[0]}")
            self.angles = torch.from_numpy(np.array(a, dtype=np.float64))
        else:
            if views != V:
                raise DataError(self.path, "sinogram", f"has {V} views (axis -2) but views={views}")
            self.angles = sparse_view_angles(V)
        if not det_spacing > 0:
            raise ValueError(f"det_spacing must be > 0 (pixels), got {det_spacing!r}")
        N = int(size) if size is not None else int(math.floor(n_det * det_spacing / math.sqrt(2) + 1e-9))
        if N < 2:
            raise DataError(self.path, "sinogram", f"{n_det} detectors leave no image (size {N}); pass size")
        self.n_det, self.det_spacing = n_det, float(det_spacing)
        self.image_shape = self.output_shape = (N, N)
        self.reference_path = Path(reference) if reference is not None else None
        self.data_range = None
        if self.reference_path is not None:
            ref = _load_npy(self.reference_path, "reference")
            want = (self.n_slices, N, N) if ref.ndim == 3 else (N, N)
            if tuple(ref.shape) != want or ref.dtype.kind not in "fiu":
                raise DataError(self.reference_path, "reference", f"must be real {want} to match the sinogram, got "
                                                                  f"{ref.dtype} {ref.shape}")
            self.data_range = float(np.max(ref))
        self._op: ParallelBeamCT | None = None
        self.info = {"file": str(self.path), "kind": "sinogram", "slices": self.n_slices, "views": V,
                     "detectors": n_det, "det_spacing": self.det_spacing, "size": N,
                     "angles_deg": [float(self.angles.min()), float(self.angles.max())],
                     "reference": str(self.reference_path) if self.reference_path else None}

    @property
    def operator(self) -> ParallelBeamCT:
        """The projector, built on first use (seconds at 256² / 180 views) and shared by all slices."""
        if self._op is None:
            N = self.image_shape[0]
            self._op = ParallelBeamCT(N, self.angles, n_detectors=self.n_det, det_spacing=self.det_spacing)
        return self._op

    def problem(self, indices: Sequence[int]) -> Problem:
        idx = self._check_indices(indices)
        sino = _load_npy(self.path, "sinogram")
        rows = np.stack([sino[i] for i in idx]) if self._3d else np.asarray(sino)[None]
        op = self.operator
        y = op.scale * torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))[:, None]
        fbp = op.fbp(y)[:, 0]
        scale = _quantile_scale(fbp)
        ref = None
        if self.reference_path is not None:
            r = _load_npy(self.reference_path, "reference")
            ref = torch.from_numpy(np.stack([r[i] for i in idx]) if r.ndim == 3 else np.asarray(r)[None]).float()
        return Problem(op, y / scale.to(torch.float32)[:, None, None, None], scale, fbp.to(torch.float32), ref,
                       self.output_shape, idx, False)


# -- images and volumes: simulated measurements ---------------------------------------------------------------------


def _load_image(path: Path) -> np.ndarray:
    """A 2-D PNG as float in [0, 1] (RGB(A) -> luminance), or a ``.npy`` (H, W) / (slices, H, W) as stored."""
    if path.suffix.lower() == ".png":
        if not path.is_file():
            raise DataError(path, None, "no such file")
        import matplotlib.image

        try:
            img = np.asarray(matplotlib.image.imread(path), dtype=np.float32)  # PNGs come back in [0, 1]
        except (ValueError, OSError, SyntaxError) as e:
            raise DataError(path, None, f"not a readable PNG ({e})") from None
        if img.ndim == 3:
            img = img[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32) if img.shape[2] >= 3 else img[..., 0]
        return img
    if path.suffix.lower() == ".npy":
        return _load_npy(path, "image")
    raise DataError(path, None, "images must be .png or .npy")


class ImageSource(_Source):
    """An image or volume from which ``task``'s measurements are simulated at its own size (validated on
    construction). The image (divided by the volume's maximum) is the ground truth and the reference.

    Args:
        path: ``.png`` (H, W), or ``.npy`` (H, W) or (slices, H, W), real; square (the task operators are).
        task: a name of ``pipelines.tasks.TASKS``.
        complex_image: simulate complex MRI (2-channel prior) of the real image.
        sigma: measurement noise std on the normalised image (``Task`` convention).
        seed: seed of the operator (masks, coil maps) and of the noise (per slice, independent of batching).
        task_kwargs: ``views``, ``acc``, ``mask``, ``coils``, ``kernel`` of :func:`pipelines.tasks.make_task`.
    """

    def __init__(self, path: str | os.PathLike, task: str, complex_image: bool = False, sigma: float = 0.0,
                 seed: int = 0, **task_kwargs):
        from .tasks import TASKS

        self.path = Path(path)
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if complex_image and task != "mri":
            raise ValueError("a complex image (2-channel prior) is only meaningful for the mri task")
        arr = _load_image(self.path)
        if arr.ndim not in (2, 3) or arr.dtype.kind not in "fiu":
            raise DataError(self.path, "image", f"must be real (H, W) or (slices, H, W), got {arr.dtype} {arr.shape}")
        self._3d = arr.ndim == 3
        self.n_slices = int(arr.shape[0]) if self._3d else 1
        H, W = (int(s) for s in arr.shape[-2:])
        if H != W or H < 4:
            raise DataError(self.path, "image", f"must be square and at least 4×4 for the task operators, got "
                                                f"{H}×{W}: crop it first")
        if not np.isfinite(arr).all():
            raise DataError(self.path, "image", "has NaN or infinite values")
        self.task, self.complex_image, self.sigma, self.seed = task, bool(complex_image), float(sigma), int(seed)
        self.task_kwargs = task_kwargs
        self.image_shape = self.output_shape = (H, W)
        self.data_range = float(np.max(arr))
        if not self.data_range > 0:
            raise DataError(self.path, "image", "has no positive value: the images are normalised by their maximum")
        self._array = arr
        self._op: LinearOperator | None = None
        self.info = {"file": str(self.path), "kind": "volume" if self._3d else "image", "slices": self.n_slices,
                     "size": H, "task": task, "sigma": self.sigma, "seed": self.seed,
                     **{k: v for k, v in task_kwargs.items() if v is not None}}

    @property
    def operator(self) -> LinearOperator:
        """The task's operator at this size (``make_task``'s masks and coil maps for ``seed``)."""
        if self._op is None:
            from .tasks import make_task

            self._op = make_task(self.task, n=1, size=self.image_shape[0], complex_image=self.complex_image,
                                 seed=self.seed, **{k: v for k, v in self.task_kwargs.items() if v is not None}
                                 ).operator
            self.info.update(operator=self._op.name)
        return self._op

    def problem(self, indices: Sequence[int]) -> Problem:
        idx = self._check_indices(indices)
        op = self.operator
        truth = torch.from_numpy(np.stack([self._array[i] for i in idx]) if self._3d else np.asarray(self._array)[None])
        truth = truth.to(torch.float32)
        x = (truth / self.data_range)[:, None]
        if op.dtype == "complex":
            x = x.to(torch.complex64)
        ys = []
        for b, i in enumerate(idx):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            ys.append(add_noise(op.A(x[b : b + 1]), self.sigma, g, support=op.measurement_support()))
        y = torch.cat(ys)
        if self.task.startswith("ct"):
            base = op.fbp(y)
        else:
            base = op.A_adjoint(y)
        base = (base.abs() if base.is_complex() else base)[:, 0] * self.data_range
        scale = torch.full((len(idx),), self.data_range, dtype=torch.float64)
        return Problem(op, y, scale, base.to(torch.float32), truth, self.output_shape, idx, self.complex_image,
                       self.sigma)


# -- output ----------------------------------------------------------------------------------------------------------


class ReconstructionWriter:
    """Writes one file's outputs into ``out_dir`` as slices arrive: ``reconstruction.h5`` (dataset
    ``reconstruction`` (slices, h, w) float32, moved into place when complete), ``png/slice_XXXX.png`` (reference |
    baseline | reconstruction side by side, or baseline | reconstruction; window [0, data_range]) and, on
    :meth:`close`, ``metrics.json``.

    Only running sums and per-slice metrics are kept, so memory does not grow with the number of slices.
    """

    def __init__(self, out_dir: str | os.PathLike, n_slices: int, output_shape: tuple[int, int],
                 data_range: float | None, png: bool = True):
        import h5py

        self.out_dir = Path(out_dir)
        self.n_slices, self.output_shape, self.data_range, self.png = n_slices, tuple(output_shape), data_range, png
        self.per_slice: dict[str, list[float]] = {"psnr": [], "ssim": [], "baseline_psnr": [], "baseline_ssim": []}
        self._written = 0
        self._start = time.perf_counter()
        self._path_ctx = atomic_path(self.out_dir / "reconstruction.h5")
        tmp = self._path_ctx.__enter__()
        self._h5 = h5py.File(tmp, "w")
        self._dset = self._h5.create_dataset("reconstruction", (n_slices, *self.output_shape), dtype="float32",
                                             chunks=(1, *self.output_shape))

    def add(self, indices: Sequence[int], recon: torch.Tensor, baseline: torch.Tensor,
            reference: torch.Tensor | None) -> dict[str, list[float]]:
        """Store slices ``indices`` (each ``(B, h, w)`` in file units); returns their metrics (empty without a
        reference)."""
        out: dict[str, list[float]] = {}
        for b, i in enumerate(indices):
            self._dset[i] = recon[b].numpy()
        self._written += len(indices)
        vmax = self.data_range
        if reference is not None:
            r = reference[:, None].to(torch.float64)
            for name, img in (("", recon), ("baseline_", baseline)):
                p = img[:, None].to(torch.float64)
                out[f"{name}psnr"] = psnr(p, r, vmax).tolist()
                out[f"{name}ssim"] = ssim(p, r, vmax).tolist()
            for k, v in out.items():
                self.per_slice[k].extend(v)
        if self.png:
            self._save_pngs(indices, recon, baseline, reference)
        return out

    def _save_pngs(self, indices, recon, baseline, reference) -> None:
        import matplotlib.image

        for b, i in enumerate(indices):
            panels = ([reference[b]] if reference is not None else []) + [baseline[b], recon[b]]
            strip = torch.cat([p.to(torch.float32) for p in panels], dim=1).numpy()
            vmax = self.data_range or float(np.quantile(recon[b].numpy(), SCALE_QUANTILE)) or 1.0
            with atomic_open(self.out_dir / "png" / f"slice_{i:04d}.png") as fh:
                matplotlib.image.imsave(fh, strip, cmap="gray", vmin=0.0, vmax=vmax, format="png")

    def close(self, info: dict) -> dict:
        """Finish ``reconstruction.h5`` and write ``metrics.json`` (``info`` merged in); returns the metrics."""
        if self._written != self.n_slices:
            self.abort()
            raise RuntimeError(f"{self.out_dir}: {self._written} of {self.n_slices} slices were written")
        self._h5.close()
        self._path_ctx.__exit__(None, None, None)
        seconds = time.perf_counter() - self._start
        metrics = {**info, "slices": self.n_slices, "output_shape": list(self.output_shape),
                   "data_range": self.data_range, "seconds": seconds, "seconds_per_slice": seconds / self.n_slices,
                   "peak_memory_mb": peak_memory_mb()}
        if self.per_slice["psnr"]:
            metrics["per_slice"] = self.per_slice
            metrics.update({k: float(np.mean(v)) for k, v in self.per_slice.items()})
        atomic_write_json(self.out_dir / "metrics.json", metrics)
        return metrics

    def abort(self) -> None:
        """Drop the partial ``reconstruction.h5`` (an interrupted file is redone on the next run)."""
        try:
            self._h5.close()
        finally:
            self._path_ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


# -- synthetic fastMRI-layout files -----------------------------------------------------------------------------------


def simulate_kspace(images: torch.Tensor, sensitivities: torch.Tensor | None, noise: float = 0.0,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fully sampled k-space of complex ``images`` (slices, H, W) and its reference, fastMRI-style.

    Multi-coil (``sensitivities`` (C, H, W)): ``k_c = F(S_c·x) + n``, reference = RSS of the coil images
    ``ifft2c(k)``; single-coil (None): ``k = F(x) + n``, reference ``|ifft2c(k)|``. ``noise``: std of the circular
    complex Gaussian noise per k-space entry. Returns ``(kspace (slices, [C,] H, W) complex64, reference (slices,
    H, W) float32)``.
    """
    x = torch.as_tensor(images).to(torch.complex64)
    coils = x[:, None] if sensitivities is None else torch.as_tensor(sensitivities).to(torch.complex64)[None] * x[:, None]
    k = add_noise(fft2c(coils), noise, generator)
    ref = ifft2c(k).abs().pow(2).sum(1).sqrt()
    return (k[:, 0] if sensitivities is None else k), ref.to(torch.float32)


def write_kspace_file(path: str | os.PathLike, kspace, reference=None, mask=None, sensitivities=None,
                      crop: tuple[int, int] | None = None) -> Path:
    """Write a fastMRI-layout ``.h5`` atomically: ``kspace`` (complex64), optional ``mask`` (W,) or (H, W) (the data
    are zeroed off it), ``reconstruction_rss`` (multi-coil) / ``reconstruction_esc`` (single-coil) centre-cropped to
    ``crop``, its maximum as the ``max`` attribute, and optional ``sensitivities``."""
    import h5py

    k = np.asarray(kspace).astype(np.complex64)
    if mask is not None:
        m = np.asarray(mask, dtype=np.float32)
        k = k * (m if m.ndim == 2 else m[None, :])
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("kspace", data=k)
        if mask is not None:
            f.create_dataset("mask", data=np.asarray(mask, dtype=np.float32))
        if reference is not None:
            ref = torch.as_tensor(reference)
            ref = center_crop(ref, crop) if crop is not None else ref
            name = "reconstruction_rss" if k.ndim == 4 else "reconstruction_esc"
            f.create_dataset(name, data=ref.numpy().astype(np.float32))
            f.attrs["max"] = float(ref.max())
        if sensitivities is not None:
            f.create_dataset("sensitivities", data=np.asarray(sensitivities).astype(np.complex64))
    return Path(path)


def data_files(path: str | os.PathLike, suffixes: tuple[str, ...]) -> list[Path]:
    """``[path]`` for a file, or the files with one of ``suffixes`` in folder ``path`` (sorted, not recursive)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in suffixes)
        if not files:
            raise DataError(p, None, f"the folder holds no {'/'.join(suffixes)} file")
        return files
    if not p.exists():
        raise DataError(p, None, "no such file or folder")
    return [p]
