"""2D parallel-beam CT as an explicit sparse matrix, so that the adjoint is its exact transpose.

The official DDS projector rotates with ``grid_sample`` and uses a scaled, *approximately* matched back-projector
(docs/dds.md §8). Here the Radon transform is discretised once as a ray-driven bilinear interpolation matrix
``R`` (rays sampled every ``dt`` pixels along their length, bilinear weights onto the 4 neighbouring pixels, times
``dt``); ``A = scale * R`` and ``Aᵀ = scale * Rᵀ`` (a stored CSR transpose), so ⟨Ax, y⟩ = ⟨x, Aᵀy⟩ holds to
round-off. ``scale`` defaults to ``1/‖R‖`` (``normalize=True``), which gives ``‖A‖ = 1`` like the MRI operators and
makes one data-consistency weight γ meaningful across tasks (docs/dds.md §8).
"""

from __future__ import annotations

import math
import warnings

import torch

from ..validation import check_float, check_int, check_tensor
from .base import LinearOperator

__all__ = ["ParallelBeamCT", "sparse_view_angles", "limited_angle_angles", "ramp_filter"]


def sparse_view_angles(n_views: int) -> torch.Tensor:
    """``n_views`` angles evenly covering [0°, 180°) (endpoint excluded), in degrees."""
    if not isinstance(n_views, int) or n_views < 1:
        raise ValueError(f"n_views must be an int >= 1, got {n_views!r}")
    return torch.arange(n_views, dtype=torch.float64) * (180.0 / n_views)


def limited_angle_angles(n_views: int = 120, max_angle: float = 120.0) -> torch.Tensor:
    """``n_views`` angles evenly covering [0°, max_angle) (DDS LA-CT: 120 views, 0..119°, a 60° missing wedge)."""
    if not isinstance(n_views, int) or n_views < 1:
        raise ValueError(f"n_views must be an int >= 1, got {n_views!r}")
    if not 0 < max_angle <= 180:
        raise ValueError(f"max_angle must be in (0, 180], got {max_angle!r}")
    return torch.arange(n_views, dtype=torch.float64) * (max_angle / n_views)


def _radon_matrix(size: int, angles_deg: torch.Tensor, n_det: int, dt: float) -> torch.Tensor:
    """Sparse COO ``(V*n_det, size*size)`` float64 matrix of the ray-driven bilinear Radon transform."""
    th = angles_deg.to(torch.float64) * math.pi / 180
    V = th.numel()
    s = torch.arange(n_det, dtype=torch.float64) - (n_det - 1) / 2
    n_t = int(math.ceil(math.sqrt(2) * size / dt)) + 2
    t = (torch.arange(n_t, dtype=torch.float64) - (n_t - 1) / 2) * dt
    c, sn = torch.cos(th)[:, None, None], torch.sin(th)[:, None, None]
    S, T = s[None, :, None], t[None, None, :]
    # Image x (columns) to the right, y (rows) downwards, origin at the image centre.
    fx = S * c - T * sn + (size - 1) / 2
    fy = S * sn + T * c + (size - 1) / 2
    x0, y0 = torch.floor(fx), torch.floor(fy)
    wx, wy = fx - x0, fy - y0
    row = (torch.arange(V)[:, None, None] * n_det + torch.arange(n_det)[None, :, None]).expand(V, n_det, n_t)
    rows, cols, vals = [], [], []
    for dx, dy, w in ((0, 0, (1 - wx) * (1 - wy)), (1, 0, wx * (1 - wy)), (0, 1, (1 - wx) * wy), (1, 1, wx * wy)):
        xi, yi = (x0 + dx).long(), (y0 + dy).long()
        ok = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size) & (w > 0)
        rows.append(row[ok])
        cols.append((yi * size + xi)[ok])
        vals.append(w[ok] * dt)
    idx = torch.stack([torch.cat(rows), torch.cat(cols)])
    return torch.sparse_coo_tensor(
        idx, torch.cat(vals), (V * n_det, size * size), check_invariants=False
    ).coalesce()


def ramp_filter(sino: torch.Tensor) -> torch.Tensor:
    """Ram-Lak filter along the last (detector) axis, by linear convolution with the discrete kernel
    ``h[0] = 1/4, h[odd n] = -1/(π n)², h[even n≠0] = 0`` (Kak & Slaney), zero-padded to avoid wrap-around."""
    n = sino.shape[-1]
    N = 1 << int(math.ceil(math.log2(2 * n)))
    k = torch.arange(N, dtype=torch.float64)
    k = torch.where(k < N // 2, k, k - N)
    h = torch.zeros(N, dtype=torch.float64)
    odd = (k.abs() % 2) == 1
    h[odd] = -1.0 / (math.pi * k[odd]) ** 2
    h[0] = 0.25
    H = torch.fft.rfft(h).to(sino.device)
    out = torch.fft.irfft(torch.fft.rfft(sino.to(torch.float64), n=N) * H, n=N)[..., :n]
    return out.to(sino.dtype)


class ParallelBeamCT(LinearOperator):
    """Parallel-beam Radon transform ``(B, 1, N, N) -> (B, 1, V, n_det)`` with an exact transpose adjoint.

    Args:
        size: image side ``N`` (pixels; field of view = the image square).
        angles: projection angles in degrees (see :func:`sparse_view_angles`, :func:`limited_angle_angles`).
        n_detectors: detector bins of width 1 pixel; default ``ceil(√2 N)`` covers the whole square (``circle=False``).
        dt: sampling step along each ray in pixels (0.5: every pixel is hit by >= 2 samples per ray).
        normalize: scale so that ``‖A‖ = 1`` (the scale is stored as ``self.scale``; :meth:`fbp` undoes it).
    """

    dtype = "real"
    range_dtype = "real"

    def __init__(self, size: int, angles, n_detectors: int | None = None, dt: float = 0.5, normalize: bool = True):
        if not isinstance(size, int) or size < 2:
            raise ValueError(f"size must be an int >= 2, got {size!r}")
        angles = check_tensor(angles, "angles (degrees)").to(torch.float64).flatten()
        n_det = int(math.ceil(math.sqrt(2) * size)) if n_detectors is None else check_int(n_detectors, "n_detectors",
                                                                                             minimum=1)
        dt = check_float(dt, "dt (ray sampling step, pixels)", positive=True)
        super().__init__((1, size, size), (1, angles.numel(), n_det))
        self.size, self.angles, self.n_det, self.dt = size, angles, n_det, float(dt)
        R = _radon_matrix(size, angles, n_det, dt)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": we use only CSR @ dense
            warnings.simplefilter("ignore", UserWarning)
            self._R = R.to_sparse_csr()
            self._Rt = R.t().coalesce().to_sparse_csr()
        self._cache: dict = {}
        self.scale = 1.0
        if normalize:
            self.scale = 1.0 / self.norm(n_iter=100)

    def _mats(self, like: torch.Tensor):
        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = (self._R.to(like.dtype).to(like.device), self._Rt.to(like.dtype).to(like.device))
        return self._cache[key]

    def _forward(self, x):
        R, _ = self._mats(x)
        B = x.shape[0]
        out = (R @ x.reshape(B, -1).T).T
        return self.scale * out.reshape(B, *self.out_shape)

    def _adjoint(self, y):
        _, Rt = self._mats(y)
        B = y.shape[0]
        out = (Rt @ y.reshape(B, -1).T).T
        return self.scale * out.reshape(B, *self.in_shape)

    def fbp(self, y: torch.Tensor) -> torch.Tensor:
        """Filtered back-projection ``(π/V_eff) · Rᵀ ramp(y / scale)``, the classical analytic reconstruction.

        The angular weight is the mean angular spacing (π/V for sparse-view over 180°, 1° for limited-angle), so
        that a fully sampled sinogram is reconstructed at the right intensity; missing angles are simply absent.
        """
        self._check(y, self.out_shape, "real", "y", "fbp")
        q = ramp_filter(y / self.scale)
        V = self.angles.numel()
        if V > 1:
            spacing = float(torch.diff(torch.sort(self.angles).values).median()) * math.pi / 180
            dtheta = min(spacing, math.pi / V) if spacing * V > math.pi + 1e-9 else spacing
        else:
            dtheta = math.pi
        _, Rt = self._mats(y)
        B = y.shape[0]
        return dtheta * (Rt @ q.reshape(B, -1).T).T.reshape(B, *self.in_shape)
