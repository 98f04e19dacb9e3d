"""Deblurring (circular FFT convolution) and inpainting operators."""

from __future__ import annotations

import math

import torch

from ..validation import check_int, check_kernel, check_mask, check_shape
from .base import LinearOperator

__all__ = ["Blur", "gaussian_kernel", "motion_kernel", "Inpainting", "box_mask", "random_mask"]


def gaussian_kernel(size: int = 9, sigma: float = 1.5) -> torch.Tensor:
    """Normalised isotropic Gaussian kernel ``(size, size)`` (sums to 1)."""
    if not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be an odd int >= 1, got {size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


def motion_kernel(size: int = 9, length: float = 7.0, angle: float = 30.0, samples: int = 200) -> torch.Tensor:
    """Normalised linear motion-blur kernel ``(size, size)``: a segment of ``length`` pixels at ``angle`` degrees,
    rasterised by bilinear splatting of ``samples`` points along it (sums to 1)."""
    if not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be an odd int >= 1, got {size!r}")
    if not 0 < length <= size:
        raise ValueError(f"length must be in (0, size], got {length!r}")
    a = math.radians(angle)
    t = torch.linspace(-length / 2, length / 2, samples, dtype=torch.float64)
    fx, fy = t * math.cos(a) + size // 2, -t * math.sin(a) + size // 2
    k = torch.zeros(size, size, dtype=torch.float64)
    x0, y0 = torch.floor(fx).long(), torch.floor(fy).long()
    wx, wy = fx - x0, fy - y0
    for dx, dy, w in ((0, 0, (1 - wx) * (1 - wy)), (1, 0, wx * (1 - wy)), (0, 1, (1 - wx) * wy), (1, 1, wx * wy)):
        xi, yi = (x0 + dx).clamp(0, size - 1), (y0 + dy).clamp(0, size - 1)
        k.index_put_((yi, xi), w, accumulate=True)
    return k / k.sum()


class Blur(LinearOperator):
    """Circular convolution ``y = k ⊛ x`` on real images ``(B, C, H, W)`` via the real FFT.

    The adjoint is correlation, ``irfft2(rfft2(y) · conj(K))``. ``kernel`` must be finite and non-negative with a
    positive sum, and is normalised to sum 1 (``self.kernel`` is the normalised one): a point-spread function keeps
    the image's mean, and then ``‖A‖ = max|K| = K(0) = 1``.
    """

    def __init__(self, kernel: torch.Tensor, image_shape: tuple[int, int, int]):
        k = check_kernel(kernel)
        if k.ndim != 2:
            raise ValueError(f"kernel must be 2D (kh, kw), got shape {tuple(k.shape)}")
        C, H, W = check_shape(image_shape, "image_shape", 3)
        if k.shape[0] > H or k.shape[1] > W:
            raise ValueError(f"kernel {tuple(k.shape)} larger than the image {H}x{W}")
        super().__init__((C, H, W), (C, H, W))
        pad = torch.zeros(H, W, dtype=torch.float64)
        pad[: k.shape[0], : k.shape[1]] = k
        pad = torch.roll(pad, shifts=(-(k.shape[0] // 2), -(k.shape[1] // 2)), dims=(0, 1))
        self.kernel = k
        self._K = torch.fft.rfft2(pad)
        self._cache: dict = {}

    def _Kc(self, like):
        key = (like.dtype, like.device)
        if key not in self._cache:
            cdt = torch.complex128 if like.dtype == torch.float64 else torch.complex64
            self._cache[key] = self._K.to(cdt).to(like.device)
        return self._cache[key]

    def _forward(self, x):
        return torch.fft.irfft2(torch.fft.rfft2(x) * self._Kc(x), s=x.shape[-2:])

    def _adjoint(self, y):
        return torch.fft.irfft2(torch.fft.rfft2(y) * self._Kc(y).conj(), s=y.shape[-2:])


def box_mask(size: int, box_fraction: float = 0.35) -> torch.Tensor:
    """``(size, size)`` float mask, 1 = observed, with a centred square hole of side ``box_fraction * size``."""
    if not 0 < box_fraction < 1:
        raise ValueError(f"box_fraction must be in (0, 1), got {box_fraction!r}")
    size = check_int(size, "size", minimum=1)
    m = torch.ones(size, size)
    b = max(int(round(box_fraction * size)), 1)
    s = (size - b) // 2
    m[s : s + b, s : s + b] = 0
    return m


def random_mask(size: int, missing_fraction: float = 0.7, generator=None) -> torch.Tensor:
    """``(size, size)`` float mask with ``missing_fraction`` of the pixels (exactly, rounded) unobserved."""
    if not 0 <= missing_fraction < 1:
        raise ValueError(f"missing_fraction must be in [0, 1), got {missing_fraction!r}")
    size = check_int(size, "size", minimum=1)
    n = size * size
    m = torch.ones(n)
    m[torch.randperm(n, generator=generator)[: int(round(missing_fraction * n))]] = 0
    return m.view(size, size)


class Inpainting(LinearOperator):
    """Pixel mask ``y = m ⊙ x`` on real images ``(B, C, H, W)``; self-adjoint, ``AᴴA = m²``.

    ``mask``: 1 = observed, 0 = missing, not all zero. A binary mask makes ``AᴴA`` a projection and ``‖A‖ = 1``.
    Soft values in [0, 1] are accepted as per-pixel transmission (e.g. a feathered hole edge): the pixel is seen
    attenuated by ``m``, ``‖A‖ = max m <= 1``, and noise goes wherever ``m > 0`` (:meth:`measurement_support`).
    """

    def __init__(self, mask: torch.Tensor, image_shape: tuple[int, int, int]):
        m = check_mask(mask, soft=True)
        C, H, W = check_shape(image_shape, "image_shape", 3)
        if tuple(m.shape) not in ((H, W), (C, H, W)):
            raise ValueError(f"mask must be (H, W) or (C, H, W) matching image {image_shape}, got {tuple(m.shape)}")
        super().__init__((C, H, W), (C, H, W))
        self.mask = m.expand(C, H, W).clone()

    def measurement_support(self):
        return (self.mask > 0).to(self.mask.dtype)

    def _forward(self, x):
        return self.mask.to(x.dtype).to(x.device) * x

    def _adjoint(self, y):
        return self.mask.to(y.dtype).to(y.device) * y
