"""Batched, complex-correct conjugate gradient for Hermitian positive (semi-)definite operators.

This fixes the three defects of the official DDS CG (docs/dds.md §3, §5): the inner product is the Hermitian
``sum(conj(u) * v)`` (not the bilinear ``uᵀv``, which turns CG into COCG for complex data), it is computed per
sample over all non-batch dims (no coupling of batch elements through one global step size), and the stopping
rule is relative to ``‖b‖`` per sample (not an absolute ``1e-5``). Inner products are accumulated in float64
because the residual norms that drive the step sizes shrink by orders of magnitude and cancellation bites.
"""

from __future__ import annotations

from typing import Callable

import torch

from .reductions import batch_vdot, per_sample

__all__ = ["conjugate_gradient", "batch_dot"]


def batch_dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Real part of the per-sample Hermitian inner product ``Re sum(conj(u) * v)``, float64, shape ``(B,)``.

    For a Hermitian operator ``H``, ``<p, H p>`` is real, and ``<r, r>`` always is; taking the real part discards
    only round-off.
    """
    return batch_vdot(u, v).real


def _bcast(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample float64 scalar ``(B,)`` -> broadcastable real tensor in the working precision of ``like``."""
    return per_sample(s.to(like.real.dtype if like.is_complex() else like.dtype), like)


def conjugate_gradient(
    apply_A: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    x0: torch.Tensor | None = None,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``A x = b`` for a Hermitian positive (semi-)definite ``A``, independently for every batch sample.

    Every sample has its own step sizes ``alpha, beta`` and its own stopping test ``‖r‖ <= tol * ‖b‖``; a sample
    that has converged (or broken down: ``<p, A p>`` at or below working-precision round-off of ``‖A‖·‖p‖²``, i.e. p
    in the null space of ``A``) stops changing while the others continue, so the result for a batch equals the
    results for its samples solved one by one. ``max_iter=0`` returns ``x0`` unchanged.
    The iterate after ``k`` steps minimises the ``A``-norm error over ``x0 + K_k(A, r0)``; stopping early
    (DDS uses 5 steps) therefore stays close to ``x0``.

    Args:
        apply_A: batched matrix-free operator mapping a tensor shaped like ``b`` to one of the same shape. It must
            be Hermitian PSD with respect to ``Re sum(conj(u) v)`` per sample (e.g. ``AᴴA`` or ``I + γAᴴA``).
        b: right-hand side ``(B, ...)``, real or complex; dim 0 is the batch.
        x0: initial guess shaped like ``b`` (default zeros). It is not modified.
        max_iter: maximum number of iterations (>= 0); each costs one ``apply_A``.
        tol: relative residual tolerance (>= 0): a sample stops once ``‖b - A x‖ <= tol * ‖b‖`` or the residual is at
            round-off, ``<= 4ε·max(‖b‖, ‖r0‖)`` (ε the dtype's machine epsilon, r0 the initial residual).

    Returns:
        ``(x, iters)``: the solution shaped like ``b`` and an int64 ``(B,)`` tensor with the iterations each sample
        used. Computing the initial residual costs one extra ``apply_A`` when ``x0`` is given.
    """
    if not isinstance(b, torch.Tensor) or b.ndim < 1:
        raise TypeError("b must be a tensor with a leading batch dim, e.g. (B, C, H, W)")
    if not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be an int >= 0, got {max_iter!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if x0 is not None:
        if x0.shape != b.shape:
            raise ValueError(f"x0 must have the shape of b {tuple(b.shape)}, got {tuple(x0.shape)}")
        if x0.is_complex() != b.is_complex():
            raise TypeError("x0 and b must both be real or both be complex; convert one of them first")
    B = b.shape[0]
    iters = torch.zeros(B, dtype=torch.int64, device=b.device)
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        if max_iter == 0:
            return x, iters
        r = b - apply_A(x)
        if r.shape != b.shape:
            raise ValueError(f"apply_A must preserve the shape {tuple(b.shape)}, got {tuple(r.shape)}")
    if max_iter == 0:
        return x, iters
    # A residual at the working precision's round-off is converged even for tol = 0: iterating on it divides noise by
    # noise (for a projection such as single-coil MRI's AᴴA, the step size explodes and x with it). The recursively
    # updated residual is only accurate to about eps·‖r0‖, and ‖r0‖ can exceed ‖b‖ by orders of magnitude when x0 is
    # far from the solution (DDS starts CG at an early, large Tweedie x̂0), so the floor scales with both.
    eps = torch.finfo(b.real.dtype if b.is_complex() else b.dtype).eps
    rs = batch_dot(r, r)
    b_norm = batch_dot(b, b).sqrt()
    threshold = torch.maximum(max(float(tol), 4 * eps) * b_norm, 4 * eps * torch.maximum(b_norm, rs.sqrt()))
    active = rs.sqrt() > threshold
    # The largest Rayleigh quotient <p, A p>/‖p‖² seen so far, a lower bound of ‖A‖: a direction whose quotient is
    # below eps times it lies in the null space of A to working precision (a breakdown, however small pAp > 0 is).
    rayleigh_max = torch.zeros_like(rs)
    # rs == 0 (exact solution or b == x0 == 0) is converged even when tol == 0.
    active &= rs > 0
    p = r.clone()
    # ‖p‖² by the recurrence ‖r + βp‖² = ‖r‖² + β²‖p‖² (r ⟂ p in CG): only the breakdown test reads it, so it needs no
    # inner product of its own. The loop keeps the number of tensor operations small: at 32×32 an iteration's cost is
    # their dispatch, not their arithmetic.
    pp = rs.clone()
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        Ap = apply_A(p)
        if Ap.shape != b.shape:
            raise ValueError(f"apply_A must preserve the shape {tuple(b.shape)}, got {tuple(Ap.shape)}")
        pAp = batch_dot(p, Ap)
        rayleigh_max = torch.maximum(rayleigh_max, pAp / pp.clamp_min(torch.finfo(pp.dtype).tiny))
        # pAp <= eps·‖A‖·‖p‖² (which includes pAp <= 0): breakdown, p in the null space of a PSD A; freeze the sample
        ok = active & (pAp > eps * rayleigh_max * pp)
        alpha = torch.where(ok, rs / pAp, 0.0)  # the masked-out quotients may be inf or nan: never used
        step = _bcast(alpha, x)
        x = x + step * p
        r = r - step * Ap
        rs_new = batch_dot(r, r)
        iters += ok
        beta = torch.where(ok, rs_new / rs, 0.0)
        p = r + _bcast(beta, p) * p
        pp = torch.where(ok, rs_new + beta * beta * pp, pp)
        rs = torch.where(ok, rs_new, rs)
        active = ok & (rs_new > threshold * threshold) & (rs_new > 0)
    return x, iters
