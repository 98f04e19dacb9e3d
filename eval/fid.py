"""Fréchet distance core: image quantisation, TF1-compatible resize, float64 feature statistics, .npz statistics.

Conventions follow pytorch-fid / clean-fid / torchmetrics:

* statistics are ``(mu, sigma, n)`` with the *unbiased* covariance ``sigma = (Σxxᵀ − n·μμᵀ)/(n−1)``;
  the ``.npz`` file has keys ``mu`` and ``sigma`` (pytorch-fid, clean-fid) plus ``n`` and optional metadata;
* the running sums are float64 torchmetrics states with ``dist_reduce_fx="sum"`` (DDP / accelerate safe);
* ``d² = ‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2·Σᵢ √λᵢ(Σ₁Σ₂)`` in float64 (torchmetrics' eigvals formulation, no scipy).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torchmetrics import Metric

from lml_sampler._io import atomic_open

from .features import as_features, check_same_dim
from .uncertainty import DEFAULT_SE_GROUPS, jackknife_groups, jackknife_se

__all__ = [
    "Statistics",
    "FeatureStatistics",
    "quantize_uint8",
    "resize_bilinear_tf1",
    "compute_statistics",
    "save_statistics",
    "load_statistics",
    "frechet_distance",
    "FrechetReference",
    "fid_jackknife",
    "fid_from_features",
    "torchmetrics_fid",
]


class Statistics(NamedTuple):
    """Gaussian summary of a feature set: mean ``mu`` (d,), unbiased covariance ``sigma`` (d, d), count ``n``.

    ``n`` is ``None`` for statistics files that do not record it (pytorch-fid / clean-fid ``.npz``).
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None


def quantize_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Map float images in ``value_range`` to uint8 ``[0, 255]`` by *rounding* (what saving a PNG does).

    torchmetrics' ``normalize=True`` truncates (``(x*255).byte()``), which biases intensities by about −0.5 LSB;
    diffusers' ``numpy_to_pil`` rounds (half to even, as ``torch.round``), and so does this function.
    Values outside ``value_range`` are clipped. uint8 input is returned unchanged.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point or uint8, got dtype {images.dtype}")
    lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range!r}")
    # float64 so that exact half-LSB values (k + 0.5)/255 are not perturbed by float32 rounding before round().
    x = (images.double() - lo) / (hi - lo)
    return torch.round(x.clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def resize_bilinear_tf1(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize exactly as TensorFlow 1.x ``tf.image.resize_bilinear(align_corners=False)``.

    This is the resize of the original TTUR/Inception FID and of torch-fidelity
    (``interpolate_bilinear_2d_like_tensorflow1x``, method "slow"), i.e. torchmetrics ``antialias=False``.
    Output pixel ``y`` samples the input at ``y · in/out`` — no half-pixel offset, no antialiasing — with the upper
    neighbour clamped to the border. Coordinates are computed in float32 like torch-fidelity so results are
    bit-identical on CPU.

    Args:
        images: float tensor ``(N, C, H, W)``.
        size: output ``(height, width)``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point (convert uint8 with .float()), got {images.dtype}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (height, width) of positive ints, got {size!r}")
    out_h, out_w = int(size[0]), int(size[1])
    in_h, in_w = images.shape[-2:]

    def grid(n_out: int, n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = torch.arange(n_out, dtype=torch.float32, device=images.device) * torch.tensor(
            n_in / n_out, dtype=torch.float32, device=images.device
        )
        lo = pos.long()
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, (pos - lo.float()).to(images.dtype)

    ylo, yhi, dy = grid(out_h, in_h)
    xlo, xhi, dx = grid(out_w, in_w)
    top, bottom = images[:, :, ylo, :], images[:, :, yhi, :]
    t = top[..., xlo] + (top[..., xhi] - top[..., xlo]) * dx.view(1, 1, 1, out_w)
    b = bottom[..., xlo] + (bottom[..., xhi] - bottom[..., xlo]) * dx.view(1, 1, 1, out_w)
    return t + (b - t) * dy.view(1, 1, out_h, 1)


class FeatureStatistics(Metric):
    """Streaming float64 mean/covariance of ``(N, d)`` features; memory is O(d²), independent of N.

    The states are torchmetrics sum-states, so under ``torch.distributed`` (``accelerate launch``, torchrun)
    ``compute()`` all-reduces them across processes: each process feeds only its own samples.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_features: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        self.num_features = num_features
        self.add_state("feature_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state(
            "cov_sum", torch.zeros(num_features, num_features, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("num_samples", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, features: torch.Tensor) -> None:  # type: ignore[override]
        """Add a batch of features ``(N, d)`` (any float dtype; accumulated in float64)."""
        features = torch.as_tensor(features)
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(
                f"features must have shape (N, {self.num_features}), got {tuple(features.shape)}; "
                "flatten extractor outputs with .flatten(1)"
            )
        f = features.to(device=self.feature_sum.device, dtype=torch.float64)
        self.feature_sum += f.sum(dim=0)
        self.cov_sum += f.T @ f
        self.num_samples += f.shape[0]

    def compute(self) -> Statistics:  # type: ignore[override]
        n = int(self.num_samples)
        if n < 2:
            raise ValueError(f"need at least 2 samples for a covariance, got {n}")
        mu = self.feature_sum / n
        sigma = (self.cov_sum - n * torch.outer(mu, mu)) / (n - 1)
        return Statistics(mu.cpu().numpy(), sigma.cpu().numpy(), n)


def compute_statistics(features: torch.Tensor | np.ndarray) -> Statistics:
    """``(mu, sigma, n)`` of features ``(N, d)`` in float64 (two-pass: centred before the outer product)."""
    f = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    if f.ndim != 2:
        raise ValueError(f"features must be (N, d), got shape {tuple(f.shape)}")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {f.shape[0]}")
    f = f.detach().cpu().to(torch.float64)
    mu = f.mean(dim=0)
    c = f - mu
    sigma = (c.T @ c) / (f.shape[0] - 1)
    return Statistics(mu.numpy(), sigma.numpy(), int(f.shape[0]))


def save_statistics(
    path: str | os.PathLike,
    stats: Statistics | np.ndarray,
    sigma: np.ndarray | None = None,
    n: int | None = None,
    **metadata: str,
) -> Path:
    """Write statistics to ``.npz`` (``mu``, ``sigma``, ``n`` + string metadata such as the extractor), atomically.

    Call as ``save_statistics(path, stats)`` or ``save_statistics(path, mu, sigma, n)``. The metadata is compared
    by :func:`load_statistics` users to refuse mixing feature spaces (statistics are only comparable with the same
    extractor, resize and quantisation).
    """
    if isinstance(stats, Statistics) or (isinstance(stats, tuple) and sigma is None):
        mu, sigma, n = stats
    else:
        mu = stats
    if sigma is None:
        raise ValueError("save_statistics needs sigma: pass a Statistics or (mu, sigma, n)")
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"mu must be (d,) and sigma (d, d); got {mu.shape} and {sigma.shape}")
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"statistics path must end in .npz, got {str(path)!r}")
    arrays = {"mu": mu, "sigma": sigma, "n": np.asarray(-1 if n is None else int(n), dtype=np.int64)}
    arrays.update({f"meta_{k}": np.asarray(str(v)) for k, v in metadata.items()})
    with atomic_open(path) as fh:
        np.savez(fh, **arrays)
    return path


def load_statistics(path: str | os.PathLike, with_metadata: bool = False):
    """Read ``mu``/``sigma`` (and ``n`` if present) from a pytorch-fid / clean-fid / lml-eval ``.npz``.

    Returns a :class:`Statistics`; with ``with_metadata=True`` a pair ``(Statistics, dict)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"statistics file {str(path)!r} not found (create it with `lml-eval stats`)")
    with np.load(path) as data:
        if "mu" not in data or "sigma" not in data:
            raise ValueError(f"{path} has no 'mu'/'sigma' arrays (keys: {sorted(data.keys())})")
        n = int(data["n"]) if "n" in data else -1
        stats = Statistics(data["mu"].astype(np.float64), data["sigma"].astype(np.float64), None if n < 0 else n)
        meta = {k[5:]: str(data[k]) for k in data.keys() if k.startswith("meta_")}
    return (stats, meta) if with_metadata else stats


def frechet_distance(stats_a, stats_b) -> float:
    """Fréchet distance between two Gaussians given as ``Statistics`` or ``(mu, sigma[, n])`` tuples, in float64.

    ``‖μa−μb‖² + tr Σa + tr Σb − 2·Σ √eig(Σa Σb)`` — the eigenvalues of ΣaΣb equal those of the PSD matrix
    Σa^½ Σb Σa^½, so their square roots sum to tr √(Σa^½ Σb Σa^½) without a matrix square root; tiny negative
    round-off eigenvalues give imaginary roots whose real part (0) is what is summed.
    """
    mu_a, sig_a = _as_mu_sigma(stats_a, "stats_a")
    mu_b, sig_b = _as_mu_sigma(stats_b, "stats_b")
    check_same_dim(mu_a.shape[0], mu_b.shape[0], "the two statistics")
    diff = (mu_a - mu_b).square().sum()
    tr = torch.trace(sig_a) + torch.trace(sig_b)
    covmean = torch.linalg.eigvals(sig_a @ sig_b).sqrt().real.sum()
    return float(diff + tr - 2.0 * covmean)


def _as_mu_sigma(stats, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        mu, sigma = stats[0], stats[1]
    except (TypeError, IndexError, KeyError):
        raise TypeError(f"{name} must be Statistics or a (mu, sigma[, n]) tuple, got {type(stats).__name__}") from None
    mu = torch.as_tensor(np.asarray(mu), dtype=torch.float64).reshape(-1)
    sigma = torch.as_tensor(np.asarray(sigma), dtype=torch.float64)
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: sigma must be ({mu.shape[0]}, {mu.shape[0]}), got {tuple(sigma.shape)}")
    return mu, sigma


class FrechetReference:
    """Fréchet distance of many statistics to one fixed reference ``(μr, Σr)``, with ``Σr^½`` factored once.

    ``tr(Σr^½ Σ Σr^½)^½ = Σᵢ √λᵢ`` with λ the eigenvalues of the *symmetric* PSD matrix ``Σr^½ Σ Σr^½`` (``eigvalsh``,
    several times cheaper than the general ``eigvals`` of ``Σr Σ``); mathematically the same number as
    :func:`frechet_distance`, which stays the one that reports a cell's FID. Used for the jackknife replicates.
    """

    def __init__(self, reference) -> None:
        mu, sigma = _as_mu_sigma(reference, "reference")
        lam, vec = torch.linalg.eigh((sigma + sigma.T) / 2)
        self.mu, self.trace = mu, float(torch.trace(sigma))
        self.sqrt = (vec * lam.clamp_min(0).sqrt()) @ vec.T

    def __call__(self, mu: torch.Tensor, sigma: torch.Tensor) -> float:
        check_same_dim(mu.shape[0], self.mu.shape[0], "the statistics and the reference")
        m = self.sqrt @ sigma @ self.sqrt
        covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
        return float((mu - self.mu).square().sum() + torch.trace(sigma) + self.trace - 2.0 * covmean)


def fid_jackknife(features, reference, groups: int = DEFAULT_SE_GROUPS) -> tuple[float, np.ndarray]:
    """Jackknife standard error of the FID of ``features`` (N, d) against fixed ``reference`` statistics.

    Each of the ``G`` leave-one-group-out FIDs uses the one-pass float64 moments of the sweep (the sums minus the
    group's sums), so the cost is one pass over the features plus ``G`` symmetric eigendecompositions of d×d
    matrices. Returns ``(se, leave_out_fids)`` (docs/metrics.md §4).
    """
    f = as_features(features, "features", min_samples=3)
    if isinstance(reference, (str, os.PathLike)):
        reference = load_statistics(reference)
    frechet = FrechetReference(reference)
    check_same_dim(f.shape[1], frechet.mu.shape[0], "the features and the reference")
    s1, s2, n = f.sum(0), f.T @ f, f.shape[0]
    values = []
    for block in jackknife_groups(n, groups):
        g = f[block]
        k = n - g.shape[0]
        mu = (s1 - g.sum(0)) / k
        sigma = ((s2 - g.T @ g) - k * torch.outer(mu, mu)) / (k - 1)
        values.append(frechet(mu, sigma))
    values = np.asarray(values)
    return jackknife_se(values), values


def fid_from_features(features: torch.Tensor | np.ndarray, reference: Statistics | str | os.PathLike) -> float:
    """FID of a feature set ``(N, d)`` against reference statistics (a ``Statistics`` or an ``.npz`` path)."""
    if isinstance(reference, (str, os.PathLike)):
        reference = load_statistics(reference)
    return frechet_distance(compute_statistics(features), reference)


def torchmetrics_fid(extractor: torch.nn.Module, reference: Statistics | str | os.PathLike, num_features: int,
                     reference_n: int | None = None):
    """A torchmetrics ``FrechetInceptionDistance`` over ``extractor`` whose *real* side is preloaded with
    ``reference`` statistics (docs/fid.md §4), for code that wants the torchmetrics object.

    ``extractor`` must take what you ``update`` with (the extractors of :mod:`eval.extractors` take uint8 images).
    The real sums are set as ``N·μ`` and ``(N−1)Σ + N·μμᵀ`` (exact for any N ≥ 2) on rank 0 only — torchmetrics
    sum-reduces states across processes, so setting them on every rank would distort Σ. ``reset()`` keeps them.
    torchmetrics returns float32; :func:`frechet_distance` is the float64 path used by the sweeps.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if isinstance(reference, (str, os.PathLike)):
        reference = load_statistics(reference)
    n = reference_n or reference.n or 50_000
    if n < 2:
        raise ValueError(f"reference_n must be >= 2, got {n}")
    extractor.num_features = num_features  # torchmetrics reads it instead of a dummy forward
    metric = FrechetInceptionDistance(feature=extractor, reset_real_features=False, normalize=False)
    rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    if rank == 0:
        mu = torch.as_tensor(reference.mu, dtype=torch.float64)
        sigma = torch.as_tensor(reference.sigma, dtype=torch.float64)
        metric.real_features_sum = n * mu
        metric.real_features_cov_sum = (n - 1) * sigma + n * torch.outer(mu, mu)
        metric.real_features_num_samples = torch.tensor(n, dtype=torch.long)
    return metric
