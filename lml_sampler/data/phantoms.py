"""Random CT/MRI-like phantoms: Shepp-Logan-style ellipse images and smooth random phase maps.

These are generated on the fly (no data files), so the phantoms prior can be trained for as long as CPU allows
without ever repeating an image, and tests can draw fresh ground truths for inverse problems.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Largest number of inner ellipses (features) per phantom; the actual count is uniform in [MIN, MAX].
MIN_INNER, MAX_INNER = 3, 8


def _check(n: int, size: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(size, int) or size < 4:
        raise ValueError(f"size must be an int >= 4, got {size!r}")


def _uniform(shape, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=generator, dtype=torch.float64)


def _ellipse_masks(cx, cy, a, b, theta, grid_x, grid_y) -> torch.Tensor:
    """Indicator of ellipses; parameters ``(n, k)``, grid ``(H, W)`` -> masks ``(n, k, H, W)`` in {0, 1}."""
    dx = grid_x - cx[..., None, None]
    dy = grid_y - cy[..., None, None]
    c, s = torch.cos(theta)[..., None, None], torch.sin(theta)[..., None, None]
    u = (c * dx + s * dy) / a[..., None, None]
    v = (-s * dx + c * dy) / b[..., None, None]
    return (u * u + v * v <= 1.0).to(torch.float64)


def random_ellipse_phantoms(
    n: int, size: int, generator: torch.Generator | None = None, supersample: int = 2
) -> torch.Tensor:
    """Random Shepp-Logan-like phantoms, float32 ``(n, 1, size, size)`` with values in ``[0, 1]``.

    Each phantom is a bright "skull" ellipse (intensity 1) around a darker "brain" ellipse (0.1..0.35) containing
    ``MIN_INNER..MAX_INNER`` smaller ellipses with random centre, semi-axes, angle and additive intensity
    (-0.15..+0.45), clamped to [0, 1]. Images are rendered on a ``supersample``-times finer grid and box-filtered,
    which anti-aliases the edges (a prior trained on jagged edges would learn the aliasing).

    Args:
        n: number of phantoms.
        size: side length in pixels; the field of view is [-1, 1]^2.
        generator: torch generator for reproducibility (``None`` uses the global RNG).
        supersample: render factor (>= 1).
    """
    _check(n, size)
    if not isinstance(supersample, int) or supersample < 1:
        raise ValueError(f"supersample must be an int >= 1, got {supersample!r}")
    fine = size * supersample
    coords = (torch.arange(fine, dtype=torch.float64) + 0.5) / fine * 2.0 - 1.0
    grid_y, grid_x = torch.meshgrid(coords, coords, indexing="ij")

    # Body: outer skull and inner brain share centre and angle; the brain is the skull shrunk by its thickness.
    cx, cy = _uniform((n, 1), -0.06, 0.06, generator), _uniform((n, 1), -0.06, 0.06, generator)
    a, b = _uniform((n, 1), 0.55, 0.78, generator), _uniform((n, 1), 0.72, 0.95, generator)
    theta = _uniform((n, 1), -0.35, 0.35, generator)
    thick = _uniform((n, 1), 0.04, 0.09, generator)
    skull = _ellipse_masks(cx, cy, a, b, theta, grid_x, grid_y)[:, 0]
    brain_mask = _ellipse_masks(cx, cy, a - thick, b - thick, theta, grid_x, grid_y)[:, 0]
    brain = _uniform((n, 1), 0.1, 0.35, generator)[..., None]
    img = skull * 1.0 + brain_mask * (brain - 1.0)

    # Inner features: centres drawn inside the brain (polar coordinates in its own frame), masked by count.
    k = MAX_INNER
    r = torch.sqrt(_uniform((n, k), 0.0, 1.0, generator)) * 0.75
    phi = _uniform((n, k), 0.0, 2 * math.pi, generator)
    ia, ib = (a - thick) * r * torch.cos(phi), (b - thick) * r * torch.sin(phi)
    ct, st = torch.cos(theta), torch.sin(theta)
    icx, icy = cx + ct * ia - st * ib, cy + st * ia + ct * ib
    iaxes_a, iaxes_b = _uniform((n, k), 0.04, 0.28, generator), _uniform((n, k), 0.04, 0.2, generator)
    itheta = _uniform((n, k), 0.0, math.pi, generator)
    sign = torch.where(_uniform((n, k), 0.0, 1.0, generator) < 0.25, -1.0, 1.0).to(torch.float64)
    amp = sign * _uniform((n, k), 0.08, 0.45, generator) * torch.where(sign < 0, 0.35, 1.0)
    count = torch.randint(MIN_INNER, MAX_INNER + 1, (n, 1), generator=generator)
    active = (torch.arange(k)[None, :] < count).to(torch.float64)
    masks = _ellipse_masks(icx, icy, iaxes_a, iaxes_b, itheta, grid_x, grid_y) * brain_mask[:, None]
    img = img + (masks * (amp * active)[..., None, None]).sum(dim=1)

    img = img.clamp(0.0, 1.0).unsqueeze(1)
    if supersample > 1:
        img = F.avg_pool2d(img, supersample)
    return img.to(torch.float32)


def random_smooth_phase(
    n: int, size: int, generator: torch.Generator | None = None, max_freq: int = 2, max_phase: float = math.pi
) -> torch.Tensor:
    """Smooth random phase maps, float32 ``(n, 1, size, size)`` in radians within ``[-max_phase, max_phase]``.

    A random constant offset plus a random linear ramp plus a sum of low-frequency cosine modes (frequencies
    ``<= max_freq`` cycles per field of view), as produced by B0 inhomogeneity and coil phase in MRI; the result is
    scaled so that its largest magnitude is at most ``max_phase``.
    """
    _check(n, size)
    coords = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2.0 - 1.0
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    phase = _uniform((n, 1, 1), -1.0, 1.0, generator) + _uniform((n, 1, 1), -0.6, 0.6, generator) * gx
    phase = phase + _uniform((n, 1, 1), -0.6, 0.6, generator) * gy
    for fx in range(max_freq + 1):
        for fy in range(max_freq + 1):
            if fx == fy == 0:
                continue
            amp = _uniform((n, 1, 1), -0.5, 0.5, generator) / (fx + fy)
            off_x = _uniform((n, 1, 1), 0, 2 * math.pi, generator)
            off_y = _uniform((n, 1, 1), 0, 2 * math.pi, generator)
            phase = phase + amp * torch.cos(math.pi * fx * gx + off_x) * torch.cos(math.pi * fy * gy + off_y)
    scale = phase.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    phase = phase * torch.clamp(max_phase / scale, max=1.0)
    return phase.unsqueeze(1).to(torch.float32)


def random_complex_phantoms(n: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Complex MRI-like phantoms as 2-channel float32 ``(n, 2, size, size)``: (real, imag) of
    ``magnitude * exp(i * phase)`` with ellipse-phantom magnitude in [0, 1] and a smooth random phase."""
    mag = random_ellipse_phantoms(n, size, generator)
    phase = random_smooth_phase(n, size, generator)
    return torch.cat([mag * torch.cos(phase), mag * torch.sin(phase)], dim=1)


def random_ellipsoid_volume(
    n_slices: int, size: int, generator: torch.Generator | None = None, supersample: int = 2
) -> torch.Tensor:
    """A random 3-D Shepp-Logan-like volume, float32 ``(n_slices, size, size)`` in ``[0, 1]``: the 3-D analogue of
    :func:`random_ellipse_phantoms`, whose slices change smoothly along z (what TV-z regularisation exploits).

    A bright shell (intensity 1) around a darker interior (0.1..0.35) holding ``MIN_INNER..MAX_INNER`` ellipsoids
    of random centre, semi-axes, rotation about z and intensity (-0.15..+0.45), clamped to [0, 1]; the field of view
    is [-1, 1]³ (z sampled at the slice centres), anti-aliased in-plane by ``supersample``.
    """
    _check(n_slices, size)
    fine = size * supersample
    xy = (torch.arange(fine, dtype=torch.float64) + 0.5) / fine * 2.0 - 1.0
    z = (torch.arange(n_slices, dtype=torch.float64) + 0.5) / n_slices * 2.0 - 1.0
    Z, Y, X = torch.meshgrid(z, xy, xy, indexing="ij")

    def ellipsoid(c, axes, theta):
        dx, dy, dz = X - c[0], Y - c[1], Z - c[2]
        ct, st = math.cos(theta), math.sin(theta)
        u, v = (ct * dx + st * dy) / axes[0], (-st * dx + ct * dy) / axes[1]
        return ((u * u + v * v + (dz / axes[2]) ** 2) <= 1.0).to(torch.float64)

    def draw(lo, hi):
        return float(_uniform((), lo, hi, generator))

    centre = [draw(-0.05, 0.05), draw(-0.05, 0.05), 0.0]
    axes = [draw(0.6, 0.78), draw(0.72, 0.92), draw(0.9, 1.05)]
    theta, thick = draw(-0.3, 0.3), draw(0.05, 0.09)
    inner_axes = [a - thick for a in axes]
    brain = ellipsoid(centre, inner_axes, theta)
    vol = ellipsoid(centre, axes, theta) + brain * (draw(0.1, 0.35) - 1.0)
    count = int(torch.randint(MIN_INNER, MAX_INNER + 1, (1,), generator=generator))
    for _ in range(count):
        r = 0.7 * draw(0.0, 1.0) ** (1 / 3)
        phi, cos_pol = draw(0, 2 * math.pi), draw(-1.0, 1.0)
        sin_pol = math.sqrt(1 - cos_pol**2)
        c = [centre[0] + inner_axes[0] * r * sin_pol * math.cos(phi),
             centre[1] + inner_axes[1] * r * sin_pol * math.sin(phi), inner_axes[2] * r * cos_pol]
        sign = -1.0 if draw(0.0, 1.0) < 0.25 else 1.0
        amp = sign * draw(0.08, 0.45) * (0.35 if sign < 0 else 1.0)
        vol = vol + amp * ellipsoid(c, [draw(0.05, 0.28), draw(0.05, 0.2), draw(0.1, 0.4)], draw(0, math.pi)) * brain
    vol = vol.clamp(0.0, 1.0)
    if supersample > 1:
        vol = F.avg_pool2d(vol[:, None], supersample)[:, 0]
    return vol.to(torch.float32)
