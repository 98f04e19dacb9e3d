"""2D parallel-beam CT: Joseph's ray-driven projector as a sparse matrix with its exact, stored transpose.

Joseph's method (Joseph 1982) steps every ray one pixel at a time along the image axis it is most aligned with and
interpolates linearly between the two pixels it crosses on the other axis, weighted by the path length per step
``1/max(|cos θ|, |sin θ|)``: two weights per ray and pixel row, ``≈ 2·V·N²`` non-zeros in all (21 M at 256² / 180
views, 0.34 GB as float32 CSR with int32 indices, forward and transpose). The matrix ``R`` is built vectorised
over chunks of angles, its transpose by a counting sort (``scipy.sparse``), so ``A = c·R`` and ``Aᵀ = c·Rᵀ`` hold the
same numbers and ⟨Ax, y⟩ = ⟨x, Aᵀy⟩ to round-off. The released DDS projector instead rotates with ``grid_sample``
and uses a scaled, *approximately* matched back-projector (docs/dds.md §8). ``c`` defaults to ``1/‖R‖``
(``normalize=True``), which gives ``‖A‖ = 1`` like the MRI operators and makes one data-consistency weight γ
meaningful across tasks (docs/dds.md §8).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
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


#: Non-zeros computed per chunk of angles while building the matrix (bounds the build's temporary memory).
_CHUNK_ENTRIES = 1 << 22


def _joseph_chunk(size: int, theta: torch.Tensor, s: torch.Tensor, row_step: bool):
    """Joseph's weights for angles ``theta`` (radians, all stepping along rows or all along columns).

    Returns ``(pixels, weights)`` of shape ``(A, n_det, N, 2)`` (int32, float32): for every ray (angle, detector) and
    step, the two pixels the ray passes between and their weights, 0 where a pixel lies outside the image. The ray
    ``s·(cos θ, sin θ) + t·(−sin θ, cos θ)`` (x to the right, y down, origin at the image centre) crosses row ``y_i``
    at ``x = s/cos θ − y_i·tan θ`` (row stepping, ``|cos θ| ≥ |sin θ|``) and column ``x_j`` at
    ``y = s/sin θ − x_j·cot θ`` (column stepping).
    """
    centre = (size - 1) / 2
    u = torch.arange(size, dtype=torch.float64) - centre
    a = torch.cos(theta) if row_step else torch.sin(theta)
    slope = torch.sin(theta) / a if row_step else torch.cos(theta) / a
    f = s[None, :, None] / a[:, None, None] - u[None, None, :] * slope[:, None, None] + centre  # (A, n_det, N)
    lo = torch.floor(f)
    frac = (f - lo).to(torch.float32)
    lo = lo.clamp_(-2, size).to(torch.int32)
    per_step = (1 / a.abs()).to(torch.float32)[:, None, None]
    w = torch.stack([torch.where((lo >= 0) & (lo < size), (1 - frac) * per_step, 0.0),
                     torch.where((lo >= -1) & (lo < size - 1), frac * per_step, 0.0)], dim=-1)
    cross = torch.stack([lo, lo + 1], dim=-1).clamp_(0, size - 1)
    step = torch.arange(size, dtype=torch.int32).view(1, 1, size, 1)
    return (step * size + cross if row_step else cross * size + step), w


def _joseph_matrices(size: int, angles_deg: torch.Tensor, n_det: int, det_spacing: float):
    """CSR arrays ``(crow, cols, vals)`` (int32, int32, float32) of Joseph's ``(V·n_det, N²)`` projection matrix ``R``
    and of its transpose, column indices sorted.

    The weights are computed densely (two per ray and step, zeros included) in chunks of angles; scipy's compiled
    routines then drop the zeros and build the transpose by an O(nnz) counting sort (torch's CSR -> CSC
    conversion sorts, ~5x slower).
    """
    from scipy.sparse import csr_matrix

    theta = angles_deg.to(torch.float64) * math.pi / 180
    s = (torch.arange(n_det, dtype=torch.float64) - (n_det - 1) / 2) * det_spacing
    row_step = torch.cos(theta).abs() >= torch.sin(theta).abs()
    per_chunk = max(1, _CHUNK_ENTRIES // (2 * n_det * size))
    cols, vals = [], []
    start = 0
    while start < theta.numel():  # consecutive angles of one stepping kind, so rays stay in angle order
        stop = start + 1
        while stop < theta.numel() and stop - start < per_chunk and bool(row_step[stop] == row_step[start]):
            stop += 1
        p, w = _joseph_chunk(size, theta[start:stop], s, bool(row_step[start]))
        cols.append(p.flatten().numpy())
        vals.append(w.flatten().numpy())
        start = stop
    n_rays = theta.numel() * n_det
    if 2 * size * n_rays >= 2**31:
        raise ValueError(f"{n_rays} rays x {size} pixels exceed the int32 indices of the sparse matrix; use fewer "
                         "views or detector bins")
    # int32 throughout, so scipy neither upcasts nor copies the index arrays.
    crow = np.arange(n_rays + 1, dtype=np.int32) * np.int32(2 * size)
    R = csr_matrix((np.concatenate(vals), np.concatenate(cols), crow), shape=(n_rays, size * size), copy=False)
    del cols, vals
    R.eliminate_zeros()
    R.sort_indices()  # column-stepping rays visit pixels out of index order
    Rt = R.tocsc()

    def arrays(indptr, indices, data):
        return (torch.from_numpy(indptr.astype(np.int32, copy=False)), torch.from_numpy(indices.astype(np.int32, copy=False)),
                torch.from_numpy(data.astype(np.float32, copy=False)))

    return arrays(R.indptr, R.indices, R.data), arrays(Rt.indptr, Rt.indices, Rt.data)


def _csr(crow, cols, vals, shape) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": only CSR @ dense is used
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)


class _SparseProduct(torch.autograd.Function):
    """``x ↦ (M @ xᵀ)ᵀ`` for a batch ``x`` (B, n), with the stored transpose as backward (DPS differentiates A)."""

    @staticmethod
    def forward(ctx, x, M, Mt):
        ctx.Mt, ctx.M = Mt, M
        return (M @ x.T).T

    @staticmethod
    def backward(ctx, g):
        return (ctx.Mt @ g.T).T, None, None


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

    Geometry (what a user's sinogram must follow, docs/dds.md §8): row ``v`` of the sinogram is the projection at
    ``angles[v]`` degrees; column ``d`` is the detector bin at signed distance ``(d − (n_det−1)/2)·det_spacing``
    pixels from the rotation axis, which passes through the image centre; the ray at angle θ and offset s is
    ``s·(cos θ, sin θ) + t·(−sin θ, cos θ)`` with x along image columns (to the right) and y along rows (down).
    Entries are line integrals in units of the pixel side: a uniform image of value μ gives ``μ × chord length in
    pixels`` (before the normalising scale).

    Args:
        size: image side ``N`` (pixels; field of view = the image square).
        angles: projection angles in degrees, any order and range (see :func:`sparse_view_angles`,
            :func:`limited_angle_angles`).
        n_detectors: detector bins; default ``ceil(√2 N / det_spacing)`` covers the whole square.
        det_spacing: bin width in pixels (1: one bin per pixel).
        normalize: scale so that ``‖A‖ = 1`` (the scale is stored as ``self.scale``; :meth:`fbp` undoes it).
    """

    dtype = "real"
    range_dtype = "real"

    def __init__(self, size: int, angles, n_detectors: int | None = None, det_spacing: float = 1.0,
                 normalize: bool = True):
        if not isinstance(size, int) or size < 2:
            raise ValueError(f"size must be an int >= 2, got {size!r}")
        angles = check_tensor(angles, "angles (degrees)").to(torch.float64).flatten()
        det_spacing = check_float(det_spacing, "det_spacing (detector spacing, pixels)", positive=True)
        n_det = (int(math.ceil(math.sqrt(2) * size / det_spacing)) if n_detectors is None
                 else check_int(n_detectors, "n_detectors", minimum=1))
        super().__init__((1, size, size), (1, angles.numel(), n_det))
        self.size, self.angles, self.n_det, self.det_spacing = size, angles, n_det, float(det_spacing)
        shape = (angles.numel() * n_det, size * size)
        self._arrays = _joseph_matrices(size, angles, n_det, self.det_spacing)
        self._shapes = (shape, shape[::-1])
        self._cache: dict = {}
        self.scale = 1.0
        if normalize:
            # RᵀR has non-negative entries, so its top eigenvector is positive (Perron-Frobenius) and a constant
            # start has a large component along it: power iteration converges in ~10 products, not hundreds.
            ones = torch.ones(1, *self.in_shape, dtype=torch.float32)
            self.scale = 1.0 / self.norm(n_iter=50, dtype=torch.float32, start=ones, rtol=1e-7)

    @property
    def nnz(self) -> int:
        """Stored non-zeros of ``R`` (the transpose stores as many)."""
        return int(self._arrays[0][2].numel())

    def _mats(self, like: torch.Tensor):
        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = tuple(_csr(c, i, v.to(like.dtype), s).to(like.device)
                                     for (c, i, v), s in zip(self._arrays, self._shapes))
        return self._cache[key]

    def _project(self, t: torch.Tensor, transpose: bool) -> torch.Tensor:
        R, Rt = self._mats(t)
        M, Mt = (Rt, R) if transpose else (R, Rt)
        return _SparseProduct.apply(t.reshape(t.shape[0], -1), M, Mt)

    def _forward(self, x):
        return self.scale * self._project(x, False).reshape(x.shape[0], *self.out_shape)

    def _adjoint(self, y):
        return self.scale * self._project(y, True).reshape(y.shape[0], *self.in_shape)

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
        return dtheta * self._project(q, True).reshape(y.shape[0], *self.in_shape)
