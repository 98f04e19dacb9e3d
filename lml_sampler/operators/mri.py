"""Cartesian MRI: single- and multi-coil (SENSE) forward models, simulated coil maps and undersampling masks.

F is the centred orthonormal 2D FFT (fastMRI ``fft2c``: ifftshift -> fft2(norm="ortho") -> fftshift), so
``‖A‖ <= 1`` when the coil maps satisfy ``Σ_c |S_c|² = 1`` (docs/dds.md §8). Masks act on k-space columns (1D)
or points (2D), are shared by all coils, and report their *effective* acceleration ``H*W / #sampled``, which
differs from the nominal one (the official masks draw with replacement; docs/dds.md §8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..validation import check_coil_sensitivities, check_mask
from .base import LinearOperator

__all__ = [
    "fft2c",
    "ifft2c",
    "SamplingMask",
    "uniform1d_mask",
    "gaussian1d_mask",
    "gaussian2d_mask",
    "poisson_disc_mask",
    "make_mask",
    "simulate_coil_sensitivities",
    "SingleCoilMRI",
    "MultiCoilMRI",
]


def _shift(x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """``fftshift`` (or ``ifftshift``) over the last two dims as one ``torch.roll``: the same permutation, about 3×
    faster than ``torch.fft.fftshift`` on CPU, which matters inside CG (two shifts per FFT)."""
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    return torch.roll(x, (-h, -w) if inverse else (h, w), dims=(-2, -1))


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D FFT over the last two dims."""
    return _shift(torch.fft.fft2(_shift(x, inverse=True), norm="ortho"))


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2c` (also its adjoint, since it is unitary)."""
    return _shift(torch.fft.ifft2(_shift(k, inverse=True), norm="ortho"))


@dataclass
class SamplingMask:
    """A k-space sampling pattern ``mask`` (H, W) in {0, 1} with its nominal and effective acceleration."""

    mask: torch.Tensor
    kind: str
    nominal_acceleration: float

    @property
    def effective_acceleration(self) -> float:
        """``H*W / (number of sampled points)``: the real undersampling factor."""
        return float(self.mask.numel() / self.mask.sum().clamp_min(1))

    @property
    def sampling_rate(self) -> float:
        return float(self.mask.mean())


def _check_size(size) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or min(size) < 2:
        raise ValueError(f"size must be an int or (H, W) with H, W >= 2, got {size!r}")
    return int(size[0]), int(size[1])


def _check_acc(acc: float) -> None:
    if not acc >= 1:
        raise ValueError(f"acceleration must be >= 1, got {acc!r}")


def _columns_to_mask(cols: torch.Tensor, H: int, W: int) -> torch.Tensor:
    m = torch.zeros(W)
    m[cols] = 1.0
    return m.expand(H, W).clone()


def _acs(W: int, center_fraction: float) -> torch.Tensor:
    n = max(int(center_fraction * W), 1) if center_fraction > 0 else 0
    start = W // 2 - n // 2
    return torch.arange(start, start + n)


def uniform1d_mask(size, acceleration: float = 4, center_fraction: float = 0.08, generator=None) -> SamplingMask:
    """Random columns, uniform over k-space, plus a fully sampled centre (ACS) of ``int(center_fraction*W)`` columns.

    Unlike the official DDS ``get_mask`` (draws *with* replacement, effective ×4 -> ×4.4), the extra
    ``W/acceleration - ACS`` columns are drawn without replacement from the non-ACS columns, so the effective
    acceleration matches the nominal one up to rounding.
    """
    H, W = _check_size(size)
    _check_acc(acceleration)
    acs = _acs(W, center_fraction)
    n_total = max(int(round(W / acceleration)), len(acs))
    rest = torch.tensor([c for c in range(W) if c not in set(acs.tolist())], dtype=torch.long)
    extra = rest[torch.randperm(len(rest), generator=generator)[: max(n_total - len(acs), 0)]]
    return SamplingMask(_columns_to_mask(torch.cat([acs, extra]), H, W), "uniform1d", float(acceleration))


def gaussian1d_mask(size, acceleration: float = 4, center_fraction: float = 0.08, generator=None) -> SamplingMask:
    """ACS plus ``int(1.2*W/acceleration)`` column draws (with replacement) from ``N(W/2, (W*15/128)²)``.

    This is the official DDS rule; duplicates make the effective acceleration larger than nominal (report it).
    """
    H, W = _check_size(size)
    _check_acc(acceleration)
    acs = _acs(W, center_fraction)
    n = int(1.2 * W / acceleration)
    draws = torch.randn(n, generator=generator, dtype=torch.float64) * (W * 15 / 128) + W / 2
    cols = draws.round().long().clamp(0, W - 1)
    return SamplingMask(_columns_to_mask(torch.cat([acs, cols]), H, W), "gaussian1d", float(acceleration))


def gaussian2d_mask(size, acceleration: float = 8, std_fraction: float | None = None, generator=None) -> SamplingMask:
    """``H*W/acceleration`` distinct points drawn from a centred 2D Gaussian density (no ACS).

    ``std_fraction`` is the per-axis std as a fraction of the side (default ``sqrt(1.5/128)*...`` of the official
    code is ``sqrt(1.5/128) ≈ 0.108``); points are drawn without replacement (weighted by the density), so the
    effective acceleration equals the nominal one up to rounding.
    """
    H, W = _check_size(size)
    _check_acc(acceleration)
    s = math.sqrt(1.5 / 128) if std_fraction is None else float(std_fraction)
    yy = (torch.arange(H, dtype=torch.float64) - H // 2) / (s * H)
    xx = (torch.arange(W, dtype=torch.float64) - W // 2) / (s * W)
    dens = torch.exp(-0.5 * (yy[:, None] ** 2 + xx[None, :] ** 2)).flatten()
    n = max(int(round(H * W / acceleration)), 1)
    idx = torch.multinomial(dens, n, replacement=False, generator=generator)
    m = torch.zeros(H * W)
    m[idx] = 1.0
    return SamplingMask(m.view(H, W), "gaussian2d", float(acceleration))


def poisson_disc_mask(size, acceleration: float = 8, calib: int = 4, generator=None, max_tries: int = 14) -> SamplingMask:
    """Variable-density Poisson-disc pattern (dart throwing) with a ``calib × calib`` fully sampled centre.

    The minimum distance between samples grows linearly with the k-space radius, ``r(k) = r0 * (1 + 2|k|/k_max)``;
    ``r0`` is found by bisection so that the number of points matches ``H*W/acceleration`` as closely as possible.
    """
    H, W = _check_size(size)
    _check_acc(acceleration)
    target = H * W / acceleration
    ky = torch.arange(H, dtype=torch.float64) - H // 2
    kx = torch.arange(W, dtype=torch.float64) - W // 2
    KY, KX = torch.meshgrid(ky, kx, indexing="ij")
    coords = torch.stack([KY.flatten(), KX.flatten()], 1)
    rad = coords.norm(dim=1) / coords.norm(dim=1).max()
    order = torch.randperm(H * W, generator=generator)
    centre = (KY.abs() < calib / 2 + 1e-9) & (KX.abs() < calib / 2 + 1e-9)

    def throw(r0: float) -> torch.Tensor:
        m = centre.flatten().clone()
        taken = coords[m]
        for i in order.tolist():
            if m[i]:
                continue
            rmin = r0 * (1 + 2 * rad[i])
            if taken.shape[0] == 0 or (taken - coords[i]).norm(dim=1).min() >= rmin:
                m[i] = True
                taken = torch.cat([taken, coords[i : i + 1]])
        return m

    lo, hi = 0.0, float(max(H, W))
    best = throw(0.5)
    for _ in range(max_tries):
        mid = 0.5 * (lo + hi)
        m = throw(mid)
        if abs(int(m.sum()) - target) < abs(int(best.sum()) - target):
            best = m
        if m.sum() > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-3:
            break
    return SamplingMask(best.view(H, W).to(torch.float32), "poisson", float(acceleration))


_MASKS = {
    "uniform1d": uniform1d_mask,
    "gaussian1d": gaussian1d_mask,
    "gaussian2d": gaussian2d_mask,
    "poisson": poisson_disc_mask,
}


def make_mask(kind: str, size, acceleration: float, generator=None, **kw) -> SamplingMask:
    """Dispatch by name: ``uniform1d``, ``gaussian1d``, ``gaussian2d`` or ``poisson``."""
    if kind not in _MASKS:
        raise ValueError(f"mask kind must be one of {sorted(_MASKS)}, got {kind!r}")
    return _MASKS[kind](size, acceleration, generator=generator, **kw)


def simulate_coil_sensitivities(n_coils: int, size, generator=None, width: float = 0.7) -> torch.Tensor:
    """Smooth complex coil maps ``(n_coils, H, W)`` complex64 with ``Σ_c |S_c|² = 1`` at every pixel.

    Coil ``c`` sits on a circle of radius 1.3 (field of view [-1, 1]²) at angle ``2πc/n_coils`` (plus a random
    rotation); its magnitude is a Gaussian bump of the distance to the coil and its phase a smooth linear ramp.
    Normalising by the root-sum-of-squares makes ``‖A‖ <= 1`` for the SENSE operator (docs/dds.md §8).
    """
    H, W = _check_size(size)
    if not isinstance(n_coils, int) or n_coils < 1:
        raise ValueError(f"n_coils must be an int >= 1, got {n_coils!r}")
    yy = (torch.arange(H, dtype=torch.float64) + 0.5) / H * 2 - 1
    xx = (torch.arange(W, dtype=torch.float64) + 0.5) / W * 2 - 1
    Y, X = torch.meshgrid(yy, xx, indexing="ij")
    rot = float(torch.rand(1, generator=generator, dtype=torch.float64)) * 2 * math.pi
    maps = []
    for c in range(n_coils):
        ang = rot + 2 * math.pi * c / n_coils
        cy, cx = 1.3 * math.sin(ang), 1.3 * math.cos(ang)
        mag = torch.exp(-((Y - cy) ** 2 + (X - cx) ** 2) / (2 * width**2))
        g = torch.randn(3, generator=generator, dtype=torch.float64)
        phase = g[0] * math.pi + 0.5 * (g[1] * X + g[2] * Y)
        maps.append(mag * torch.exp(1j * phase))
    S = torch.stack(maps)
    S = S / S.abs().pow(2).sum(0, keepdim=True).sqrt()
    return S.to(torch.complex64)


def _as_mask(mask) -> torch.Tensor:
    m = check_mask(mask.mask if isinstance(mask, SamplingMask) else mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {tuple(m.shape)}")
    return m


class _MaskCache:
    """Casts stored (mask / coil map) tensors to the input's device and precision once and caches them."""

    def __init__(self, **tensors):
        self._src = tensors
        self._cache = {}

    def get(self, name: str, like: torch.Tensor) -> torch.Tensor:
        real = like.real.dtype if like.is_complex() else like.dtype
        key = (name, real, like.device)
        if key not in self._cache:
            t = self._src[name]
            if t.is_complex():
                t = t.to(torch.complex128 if real == torch.float64 else torch.complex64)
            else:
                t = t.to(real)
            self._cache[key] = t.to(like.device)
        return self._cache[key]


def _fft_dims(mask: torch.Tensor) -> tuple[int, ...]:
    """FFT dims the normal operator needs: ``(-1,)`` for a column mask (every row alike), else ``(-2, -1)``.

    With F = F_H F_W and a mask that selects whole k-space columns, ``F⁻¹ M F = F_W⁻¹ M F_W``: the transforms along
    H cancel, so ``AᴴA`` costs 1-D FFTs only (docs/dds.md §8).
    """
    return (-1,) if bool((mask == mask[:1]).all()) else (-2, -1)


def _normal_cache(mask: torch.Tensor, maps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The mask (and maps) ``ifftshift``-ed over :func:`_fft_dims`, so that ``AᴴA`` shifts only the image."""
    dims = _fft_dims(mask)
    out = {"mask_fft": torch.fft.ifftshift(mask[0] if dims == (-1,) else mask, dim=dims)}
    if maps is not None:
        out["maps_fft"] = torch.fft.ifftshift(maps, dim=dims)
        out["maps_fft_conj"] = out["maps_fft"].conj().resolve_conj()
    return out


def _masked_normal(x: torch.Tensor, mask_fft: torch.Tensor, maps_fft: torch.Tensor | None,
                   maps_fft_conj: torch.Tensor | None, dims: tuple[int, ...]) -> torch.Tensor:
    """``Σ_c conj(S_c)·F⁻¹(M·F(S_c·x))`` (``S = 1`` if ``maps_fft`` is None), F the centred orthonormal FFT over
    ``dims``, from the pre-shifted mask, maps and conjugate maps.

    Two image-sized shifts instead of four coil-sized ones; the unnormalised FFT pair (``ifft`` divides by the size
    once) instead of two ``norm="ortho"`` scalings; and one coil at a time, accumulated by a fused multiply-add into
    the output, since the element-wise passes over all coils at once are bound by memory bandwidth (measured in
    ``benchmarks/recon_scaling.py``).
    """
    z = torch.fft.ifftshift(x, dim=dims)
    if maps_fft is None:
        k = torch.fft.fftn(z, dim=dims)
        return torch.fft.fftshift(torch.fft.ifftn(k.mul_(mask_fft), dim=dims), dim=dims)
    coils = (slice(None),) * (maps_fft.ndim - 3)  # (C, H, W) shared, or (B, C, H, W) per sample
    out = torch.zeros_like(z)
    for c in range(maps_fft.shape[-3]):
        sel = (*coils, slice(c, c + 1))
        k = torch.fft.fftn(maps_fft[sel] * z, dim=dims)
        out.addcmul_(torch.fft.ifftn(k.mul_(mask_fft), dim=dims), maps_fft_conj[sel])
    return torch.fft.fftshift(out, dim=dims)


class SingleCoilMRI(LinearOperator):
    """``A x = M ⊙ F x`` on complex images ``(B, 1, H, W)``; measurements ``(B, 1, H, W)`` zero off the mask.

    ``mask``: a :class:`SamplingMask` or an ``(H, W)`` array of 0/1 (1 = sampled), not all zero; k-space locations
    are sampled or not, so fractional values are refused.

    ``Aᴴ y = F⁻¹(M ⊙ y)``; with the orthonormal FFT, ``AᴴA`` is an orthogonal projection (``‖A‖ = 1``).
    """

    dtype = "complex"
    range_dtype = "complex"

    def __init__(self, mask):
        m = _as_mask(mask)
        H, W = m.shape
        super().__init__((1, H, W), (1, H, W))
        self.mask = m
        self.sampling = mask if isinstance(mask, SamplingMask) else None
        self._dims = _fft_dims(m)
        self._t = _MaskCache(mask=m, **_normal_cache(m))

    def measurement_support(self):
        return self.mask.expand(*self.out_shape)

    def _forward(self, x):
        return self._t.get("mask", x) * fft2c(x)

    def _adjoint(self, y):
        return ifft2c(self._t.get("mask", y) * y)

    def A_adjoint_A(self, x):
        self._check(x, self.in_shape, self.dtype, "x", "A_adjoint_A")
        return _masked_normal(x, self._t.get("mask_fft", x), None, None, self._dims)


class MultiCoilMRI(LinearOperator):
    """SENSE model ``(A x)_c = M ⊙ F(S_c x)`` on complex images ``(B, 1, H, W)`` -> ``(B, C, H, W)``.

    ``Aᴴ k = Σ_c conj(S_c) ⊙ F⁻¹(M ⊙ k_c)``. ``sensitivities`` must be finite, not all zero and satisfy
    ``Σ_c |S_c|² <= 1`` at every pixel (:func:`simulate_coil_sensitivities` and
    :func:`~lml_sampler.operators.coils.espirit_maps` do), so ``‖A‖ <= 1``.

    ``sensitivities``: ``(C, H, W)`` shared by the batch, or ``(B, C, H, W)``, one set per sample (per slice of a
    volume); the operator then takes exactly that batch (``fixed_batch``).
    """

    dtype = "complex"
    range_dtype = "complex"

    def __init__(self, mask, sensitivities: torch.Tensor):
        m = _as_mask(mask)
        S = torch.as_tensor(sensitivities)
        if not S.is_complex() or S.ndim not in (3, 4):
            raise TypeError(f"sensitivities must be a complex (C, H, W) or (B, C, H, W) tensor, got {S.dtype} "
                            f"{tuple(S.shape)}")
        if tuple(S.shape[-2:]) != tuple(m.shape):
            raise ValueError(f"sensitivities {tuple(S.shape)} and mask {tuple(m.shape)} disagree on (H, W)")
        check_coil_sensitivities(S)
        H, W = m.shape
        super().__init__((1, H, W), (S.shape[-3], H, W))
        self.fixed_batch = int(S.shape[0]) if S.ndim == 4 else None
        self.mask, self.sensitivities = m, S
        self.sampling = mask if isinstance(mask, SamplingMask) else None
        self._dims = _fft_dims(m)
        self._t = _MaskCache(mask=m, sens=S, **_normal_cache(m, S))

    @property
    def n_coils(self) -> int:
        return self.sensitivities.shape[-3]

    def measurement_support(self):
        return self.mask.expand(*self.out_shape)

    def _forward(self, x):
        return self._t.get("mask", x) * fft2c(self._t.get("sens", x) * x)

    def _adjoint(self, y):
        S = self._t.get("sens", y)
        return (S.conj() * ifft2c(self._t.get("mask", y) * y)).sum(dim=1, keepdim=True)

    def A_adjoint_A(self, x):
        self._check(x, self.in_shape, self.dtype, "x", "A_adjoint_A")
        return _masked_normal(x, self._t.get("mask_fft", x), self._t.get("maps_fft", x),
                              self._t.get("maps_fft_conj", x), self._dims)
