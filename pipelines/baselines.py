"""Non-diffusion baselines in the same harness: adjoint / zero-filled, FBP, the truncated pseudo-inverse, early-stopped
CG least squares, TV (PDHG).

All act on the physical image (the operator's own domain); DDNM-style projection is DDS with hard data consistency
(:func:`ddnm_kwargs`), since CG run to convergence from x̂0 on ``AᴴA x = Aᴴy`` *is* the orthogonal projection of
x̂0 onto ``{x : A x = y}`` (the iterates stay in ``x̂0 + range(Aᴴ)``).
"""

from __future__ import annotations

import math

import torch

from lml_sampler.math.cg import conjugate_gradient
from lml_sampler.operators.base import LinearOperator, RealInput
from lml_sampler.operators.ct import ParallelBeamCT

__all__ = [
    "adjoint_reconstruction",
    "fbp_reconstruction",
    "normal_matrix",
    "singular_values",
    "pseudo_inverse",
    "cg_least_squares",
    "tv_pdhg",
    "ddnm_kwargs",
]

#: Dense normal matrices beyond this dimension cost > 128 MiB in float64; :func:`normal_matrix` refuses them.
_MAX_DENSE_DIM = 4096


def adjoint_reconstruction(operator: LinearOperator, y: torch.Tensor) -> torch.Tensor:
    """``Aᴴ y``: the zero-filled reconstruction for MRI (orthonormal FFT, normalised coil maps)."""
    return operator.A_adjoint(y)


def _unwrap_ct(operator: LinearOperator) -> ParallelBeamCT | None:
    op = operator
    while not isinstance(op, ParallelBeamCT) and hasattr(op, "op"):
        op = op.op
    return op if isinstance(op, ParallelBeamCT) else None


def fbp_reconstruction(operator: LinearOperator, y: torch.Tensor) -> torch.Tensor:
    """Filtered back-projection of a :class:`ParallelBeamCT` sinogram."""
    ct = _unwrap_ct(operator)
    if ct is None or ct is not operator:
        raise TypeError(f"FBP needs a ParallelBeamCT operator, got {operator.name}")
    return ct.fbp(y)


def normal_matrix(operator: LinearOperator, max_dim: int = _MAX_DENSE_DIM) -> torch.Tensor:
    """Dense ``AᴴA`` ``(d, d)`` (float64, or complex128 for a complex domain) on the flattened ``in_shape``, Hermitian
    by construction (round-off asymmetry removed). Refuses ``d > max_dim``."""
    d = math.prod(operator.in_shape)
    if d > max_dim:
        raise ValueError(f"dense normal matrix of dimension {d} > max_dim={max_dim}: too large to form")
    dtype = torch.complex128 if operator.dtype == "complex" else torch.float64
    eye = torch.eye(d, dtype=dtype).reshape(d, *operator.in_shape)
    cols = torch.cat([operator.A_adjoint_A(chunk) for chunk in eye.split(256)]).reshape(d, d)
    # Row k is AᴴA e_k = column k of AᴴA; the matrix is its transpose.
    m = cols.T
    return 0.5 * (m + m.conj().T)


def singular_values(operator: LinearOperator) -> torch.Tensor:
    """All singular values of ``A`` on its domain, descending (float64 ``(d,)``; zeros for the null space)."""
    ev = torch.linalg.eigvalsh(normal_matrix(operator))
    return ev.clamp_min(0).sqrt().flip(0)


def pseudo_inverse(operator: LinearOperator, y: torch.Tensor, rcond: float = 1e-3) -> torch.Tensor:
    """Truncated pseudo-inverse ``A⁺y``: singular values below ``rcond·s_max`` count as zero (numpy's ``pinv``).

    The minimum-norm least-squares solution on the well-measured subspace, zero on the rest; the prior-free
    reference of the benchmark (``rcond`` = the threshold of its "fraction of small singular values" column).
    """
    if not rcond >= 0:
        raise ValueError(f"rcond must be >= 0, got {rcond!r}")
    w, V = torch.linalg.eigh(normal_matrix(operator))
    keep = w > (rcond**2) * w.max()
    inv = torch.where(keep, 1.0 / torch.where(keep, w, torch.ones_like(w)), torch.zeros_like(w))
    b = operator.A_adjoint(y.to(torch.complex128 if y.is_complex() else torch.float64)).reshape(y.shape[0], -1)
    b = b.to(V.dtype)
    x = ((b @ V.conj()) * inv) @ V.T
    return x.reshape(y.shape[0], *operator.in_shape)


def cg_least_squares(operator: LinearOperator, y: torch.Tensor, iters: int = 10) -> torch.Tensor:
    """At most ``iters`` CG iterations on ``AᴴA x = Aᴴy`` from zero: Landweber-like early-stopping regularisation.

    A sample stops once its normal-equation residual is at float32 round-off (relative 1e-6): iterating on from there
    steps along round-off directions with ⟨p, AᴴAp⟩ ≈ 0 and blows up (e.g. single-coil MRI of real images, where AᴴA
    has the eigenvalues 0, ½ and 1 only and CG is exact within a few iterations).
    """
    x, _ = conjugate_gradient(operator.A_adjoint_A, operator.A_adjoint(y), max_iter=iters, tol=1e-6)
    return x


def _grad(x: torch.Tensor) -> torch.Tensor:
    """Forward differences with Neumann boundary, ``(B, C, H, W) -> (B, 2, C, H, W)``."""
    gy = torch.zeros_like(x)
    gx = torch.zeros_like(x)
    gy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    gx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    return torch.stack([gy, gx], dim=1)


def _grad_adjoint(g: torch.Tensor) -> torch.Tensor:
    """Exact adjoint of :func:`_grad` (minus the divergence)."""
    gy, gx = g[:, 0], g[:, 1]
    out = torch.zeros_like(gy)
    out[..., :-1, :] -= gy[..., :-1, :]
    out[..., 1:, :] += gy[..., :-1, :]
    out[..., :, :-1] -= gx[..., :, :-1]
    out[..., :, 1:] += gx[..., :, :-1]
    return out


def tv_pdhg(
    operator: LinearOperator,
    y: torch.Tensor,
    lam: float = 0.01,
    iters: int = 300,
    op_norm: float | None = None,
    x0: torch.Tensor | None = None,
) -> torch.Tensor:
    """Isotropic TV: ``argmin_x ½‖A x − y‖² + λ Σ_pixels |∇x|`` by Chambolle–Pock (PDHG) with ``K = [A; ∇]``.

    Step sizes ``τ = σ = 0.99 / ‖K‖``, ``‖K‖² <= ‖A‖² + 8`` (‖∇‖² <= 8 for forward differences). Complex images use
    ``|∇x|`` over real and imaginary parts. ``op_norm`` defaults to a power-iteration estimate.
    """
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam!r}")
    L = ((op_norm if op_norm is not None else operator.norm(n_iter=30)) ** 2 + 8.0) ** 0.5
    tau = sigma = 0.99 / L
    x = operator.A_adjoint(y) * 0 if x0 is None else x0.clone()
    xbar = x.clone()
    p = torch.zeros_like(y)
    q = torch.zeros_like(_grad(x))
    for _ in range(iters):
        p = (p + sigma * (operator.A(xbar) - y)) / (1 + sigma)
        q = q + sigma * _grad(xbar)
        mag = q.abs().pow(2).sum(dim=1, keepdim=True).sqrt()
        q = q / torch.clamp(mag / lam, min=1.0)
        x_new = x - tau * (operator.A_adjoint(p) + _grad_adjoint(q))
        xbar = 2 * x_new - x
        x = x_new
    return x


def ddnm_kwargs(max_iter: int = 100) -> dict:
    """DDSPipeline keyword arguments that turn DDS into DDNM-style hard projection (CG to convergence)."""
    return {"noiseless": True, "cg_iters": max_iter, "cg_tol": 1e-6}


def is_complex_mri(operator: LinearOperator) -> bool:
    return operator.dtype == "complex" or isinstance(operator, RealInput)
