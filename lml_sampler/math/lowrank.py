"""Damped low-rank matrices M = λI + U Uᵀ, per sample: inverse, inverse square root, and the LM direction.

U holds k vectors per sample, shape ``(B, k, *sample_shape)``; λ is a float or a per-sample ``(B,)`` tensor. All
k×k work (Gram matrices, eigendecompositions, solves) runs in float64 (docs/lml.md §6–§7).

Closed forms (docs/lml.md §7). With the thin eigendecomposition G = UᵀU = W diag(s²) Wᵀ and the orthonormal
Q = U W diag(1/s) (kept where s² > τ), M has eigenvalues λ + s_i² on span(Q) and λ elsewhere, so for any f

    f(M) x = f(λ)·x + Q diag(f(λ + s_i²) − f(λ)) Qᵀ x .

The differences f(λ + s²) − f(λ) are evaluated in cancellation-free closed forms.
"""

from __future__ import annotations

import torch

from .reductions import batch_sq_norm, sample_dims


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _check_lowrank(U: torch.Tensor, x: torch.Tensor) -> None:
    if U.ndim != x.ndim + 1 or U.shape[0] != x.shape[0] or U.shape[2:] != x.shape[1:]:
        raise ValueError(
            f"U must have shape (B, k, *x.shape[1:]) = ({x.shape[0]}, k, {', '.join(map(str, x.shape[1:]))}), "
            f"got {tuple(U.shape)}"
        )


def _lamb(lamb: float | torch.Tensor, batch: int) -> torch.Tensor:
    lamb = torch.as_tensor(lamb, dtype=torch.float64).reshape(-1)
    if lamb.numel() == 1:
        lamb = lamb.expand(batch)
    if lamb.shape != (batch,) or not (torch.isfinite(lamb).all() and (lamb > 0).all()):
        raise ValueError(f"lamb must be > 0 and finite, a float or a per-sample tensor of shape ({batch},)")
    return lamb


def _eig_basis(U: torch.Tensor, rel_tol: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Q (B, d, k) orthonormal on the kept directions and s² (B, k), zero where dropped."""
    Uf = U.double().reshape(U.shape[0], U.shape[1], -1)  # (B, k, d)
    G = Uf @ Uf.transpose(1, 2)  # (B, k, k)
    s2, W = torch.linalg.eigh(G)
    keep = s2 > rel_tol * s2.amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    s2 = torch.where(keep, s2, 0.0)
    inv_s = torch.where(keep, s2.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), 0.0)
    Q = Uf.transpose(1, 2) @ (W * inv_s[:, None, :])  # (B, d, k), zero columns where dropped
    return Q, s2


def _apply_spectral(U, x, lamb, f_lamb, f_diff) -> torch.Tensor:
    _check_lowrank(U, x)
    lam = _lamb(lamb, x.shape[0])
    Q, s2 = _eig_basis(U)
    xf = _flat(x.double())
    coef = (Q.transpose(1, 2) @ xf[:, :, None])[..., 0] * f_diff(lam[:, None], s2)
    out = f_lamb(lam)[:, None] * xf + (Q @ coef[:, :, None])[..., 0]
    return out.reshape(x.shape)


def lowrank_inverse(U: torch.Tensor, x: torch.Tensor, lamb: float | torch.Tensor) -> torch.Tensor:
    """M⁻¹x with M = λI + UUᵀ (float64): x/λ − Q diag(s²/(λ(λ + s²))) Qᵀx."""
    return _apply_spectral(U, x, lamb, lambda lam: 1 / lam, lambda lam, s2: -s2 / (lam * (lam + s2)))


def lowrank_inverse_sqrt(U: torch.Tensor, x: torch.Tensor, lamb: float | torch.Tensor) -> torch.Tensor:
    """M^{-1/2}x (float64), so that M^{-1/2}ξ with ξ ~ N(0, I) has covariance M⁻¹.

    (λ + s²)^{-1/2} − λ^{-1/2} = −s² / (√λ·√(λ+s²)·(√λ + √(λ+s²))), free of cancellation.
    """

    def diff(lam, s2):
        a, b = lam.sqrt(), (lam + s2).sqrt()
        return -s2 / (a * b * (a + b))

    return _apply_spectral(U, x, lamb, lambda lam: lam.rsqrt(), diff)


def lm_direction(
    v: torch.Tensor,
    history: list[torch.Tensor],
    lamb: float | torch.Tensor,
    kappa: float,
    renormalize: bool = True,
) -> torch.Tensor:
    """The rank-k LM correction: λ·M⁻¹v for M = λI + Σ_j u_j u_jᵀ, u_j = κ·p_j + (1 − κ)·v, in float64.

    `history` holds the previous pre-correction vectors p_1..p_k (newest first); k = 1 is the released rank-1
    operator, and each further column is the same construction from an older vector. With `renormalize` the result
    is rescaled to ‖v‖ per sample (as released); without it, λ·M⁻¹v has norm ≤ ‖v‖ and λ sets the step size.

    The columns contain v itself, which makes the textbook form v − U(λI + G)⁻¹Uᵀv cancel catastrophically when
    λ ≪ ‖v‖². Instead we work in an orthonormal basis (b₀ = v/‖v‖, B_r) of span(v, p_1..p_k). Writing
    q_j = p_j − v, the columns are u_j = b₀·c₀ⱼ + κ·(q_j)⊥v with c₀ⱼ = ‖v‖ + κ·b₀ᵀq_j, and their parts across v,
    κ·(q_j)⊥v = B_r C_r, come from q_j directly (so κ = 0 gives exactly C_r = 0). Block elimination then gives

        λ·M⁻¹v = (λ‖v‖ / s)·(b₀ − B_r y),   y = (λI + C_rC_rᵀ)⁻¹ C_r c₀,   s = λ + λ·c₀ᵀ(λI + C_rᵀC_r)⁻¹c₀,

    with b₀ ⟂ B_r: the direction b₀ − B_r y has no cancellation and s is a sum of non-negative terms. For k = 1 this
    is the rank-1 stable formula of :mod:`lml_sampler.math.lm`.
    """
    if not history:
        raise ValueError("history must hold at least one previous vector")
    for p in history:
        if p.shape != v.shape:
            raise ValueError(f"history vectors must have the shape of v {tuple(v.shape)}, got {tuple(p.shape)}")
    B, k = v.shape[0], len(history)
    lam = _lamb(lamb, B)
    vf = _flat(v.double())
    vnorm = vf.norm(dim=1)
    b0 = vf / vnorm.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
    Q = torch.stack([_flat(p.double()) - vf for p in history], dim=2)  # (B, d, k): q_j = p_j − v
    qb = (b0[:, None, :] @ Q)[:, 0, :]  # (B, k)
    c0 = vnorm[:, None] + kappa * qb
    R = kappa * (Q - b0[:, :, None] * qb[:, None, :])  # κ·(q_j)⊥v
    Br, Cr = torch.linalg.qr(R)  # (B, d, k), (B, k, k); a zero R gives Cr = 0, which contributes nothing
    eye = torch.eye(k, dtype=torch.float64)
    y = torch.linalg.solve(lam[:, None, None] * eye + Cr @ Cr.transpose(1, 2), (Cr @ c0[:, :, None]))[..., 0]
    direction = b0 - (Br @ y[:, :, None])[..., 0]
    if renormalize:
        out = direction * (vnorm / direction.norm(dim=1))[:, None]
    else:
        z = torch.linalg.solve(lam[:, None, None] * eye + Cr.transpose(1, 2) @ Cr, c0[:, :, None])[..., 0]
        s = lam + lam * (c0 * z).sum(dim=1)
        out = direction * (lam * vnorm / s)[:, None]
    out = torch.where((vnorm > 0)[:, None], out, vf)  # v = 0 stays 0
    return out.reshape(v.shape)


def lm_columns(v: torch.Tensor, history: list[torch.Tensor], kappa: float) -> torch.Tensor:
    """The curvature vectors u_j = κ·p_j + (1 − κ)·v of :func:`lm_direction` as U, shape ``(B, k, *v.shape[1:])``
    (float64), for the general low-rank functions above."""
    v = v.double()
    return torch.stack([kappa * p.double() + (1 - kappa) * v for p in history], dim=1)


def gamma_to_lamb(v: torch.Tensor, kappa: float, gamma: float) -> torch.Tensor:
    """The per-sample damping λ = κ‖v‖²/γ that gives the LM correction the scale-free strength γ (docs/lml.md §4).

    γ = κ‖v‖²/λ is the deflection the correction applies (tan θ ≈ γ‖p⊥v‖/‖v‖); fixing γ instead of λ makes the
    setting independent of the output's scale, because LM(c·v; c·p) = c·LM(v; p), while λ grows with ‖v‖² (with the
    resolution, say). The best γ still depends on the step count and the model (docs/lml.md §9).
    """
    if not gamma > 0:
        raise ValueError(f"lm_gamma must be > 0, got {gamma!r}")
    if not 0 < kappa <= 1:
        raise ValueError(f"the γ parametrisation needs kappa in (0, 1], got {kappa!r}")
    sample_dims(v)
    return (kappa * batch_sq_norm(v) / gamma).clamp_min(torch.finfo(torch.float64).tiny)


__all__ = ["gamma_to_lamb", "lm_columns", "lm_direction", "lowrank_inverse", "lowrank_inverse_sqrt"]
