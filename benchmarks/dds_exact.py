"""The exact-score instrument of DDS: stationary Gaussian priors, whose posterior mean given ``y`` is closed form.

With ``x0 ~ N(0, Σ)`` and ``y = A x0 + n``, ``n ~ N(0, σ² I)`` on the measured entries, the posterior mean is

    μ = Σ Aᴴ (A Σ Aᴴ + σ² I)⁻¹ y,

solved here by CG on the measurement-space system (``tol`` 1e-13). The score is exact
(:class:`~lml_sampler.models.analytic.GaussianDenoiser`), so the distance between the mean of many DDS samples and μ
measures the sampler alone (docs/dds.md §4). Complex images (MRI) are (Re, Im) channel pairs with the same Σ each
and circular noise ``CN(0, σ²)``, i.e. σ²/2 per real component.

Variants compared (the rows of the README section "dds-exact"):

* ``constant``: γ = 1/σ², M = 5 (the official DDS form with its natural weight);
* ``noise-aware``: ``noise_std=σ`` (γ_t = r_t²/σ² and the corrected noise direction, docs/dds.md §4), M = 20, the
  prior's own per-pixel variance 0.25 as ``prior_variance``;
* ablations on blur: constant γ with M = 20, γ_t with the official (uncorrected) noise direction, and constant γ with
  CG stopped by the discrepancy principle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lml_sampler.math.cg import conjugate_gradient
from lml_sampler.math.reductions import batch_sq_norm
from lml_sampler.models.analytic import GaussianDenoiser
from lml_sampler.operators import (
    Blur,
    LinearOperator,
    MultiCoilMRI,
    ParallelBeamCT,
    add_noise,
    motion_kernel,
    real_to_complex,
    simulate_coil_sensitivities,
    sparse_view_angles,
    uniform1d_mask,
)
from lml_sampler.operators.base import from_operator_domain
from lml_sampler.schedulers.dds import DDSScheduler, posterior_variance

__all__ = ["GaussianProblem", "gaussian_problem", "gaussian_posterior_mean", "dds_sample_mean", "VARIANTS", "TASKS"]

TASKS = ("blur", "ct", "mri")
#: Per-pixel variance of the prior: trace Σ / d (the stationary spectrum is scaled to it).
PIXEL_VARIANCE = 0.25
#: name -> (label, DDS settings); see the module docstring.
VARIANTS = {
    "constant": ("constant γ = 1/σ², M = 5", {"kind": "constant", "cg_iters": 5}),
    "noise-aware": ("noise-aware γ_t, M = 20", {"kind": "noise-aware", "cg_iters": 20}),
    "noise-aware-m50": ("noise-aware γ_t, M = 50", {"kind": "noise-aware", "cg_iters": 50}),
    "constant-m20": ("constant γ = 1/σ², M = 20", {"kind": "constant", "cg_iters": 20}),
    "noise-aware-m5": ("noise-aware γ_t, M = 5", {"kind": "noise-aware", "cg_iters": 5}),
    "gamma-t-official-direction": ("γ_t, official noise direction, M = 20", {"kind": "gamma-t", "cg_iters": 20}),
    "discrepancy": ("constant γ = 1/σ², CG to ‖Ax−y‖ ≤ σ√m (≤ 20)", {"kind": "discrepancy", "cg_iters": 20}),
}


@dataclass
class GaussianProblem:
    """One exact-Gaussian inverse problem: prior, operator, measurement of one prior sample, closed-form mean."""

    task: str
    model: GaussianDenoiser
    operator: LinearOperator
    y: torch.Tensor
    sigma: float
    mean: torch.Tensor  # the posterior mean, model layout (1, C, H, W)

    @property
    def channels(self) -> int:
        return self.model.data_shape[0]


def _cov_operator(model: GaussianDenoiser, complex_: bool):
    """``Σ`` on the operator's domain: on complex images, Σ on the Re and Im parts separately."""
    if not complex_:
        return model.cov_matvec

    def cov(z: torch.Tensor) -> torch.Tensor:
        # The model's 2 channels share one spectrum, so Σ of a 1-channel part is channel 0 of Σ[part, part].
        re = model.cov_matvec(torch.cat([z.real, z.real], 1))[:, :1]
        im = model.cov_matvec(torch.cat([z.imag, z.imag], 1))[:, :1]
        return torch.complex(re, im)

    return cov


def gaussian_posterior_mean(model: GaussianDenoiser, operator: LinearOperator, y: torch.Tensor,
                            sigma: float) -> torch.Tensor:
    """``Σ Aᴴ (A Σ Aᴴ + σ² I)⁻¹ y`` in the model's layout (complex operators: (Re, Im) channel pairs).

    The measurement-space system is restricted to the measured entries (``operator.measurement_support()``), where
    the noise lives; it is SPD there, and CG from zero keeps the unmeasured entries at zero.
    """
    complex_ = operator.dtype == "complex"
    cov = _cov_operator(model, complex_)
    s2 = sigma**2 / 2 if complex_ else sigma**2  # per real component
    support = operator.measurement_support()
    support = 1.0 if support is None else support[None].to(torch.float64)
    u, _ = conjugate_gradient(lambda v: support * (operator.A(cov(operator.A_adjoint(v))) + s2 * v), y,
                              max_iter=5000, tol=1e-13)
    return from_operator_domain(cov(operator.A_adjoint(u)))


def _operator(task: str, size: int) -> LinearOperator:
    if task == "blur":
        return Blur(motion_kernel(9, 7.0, 30.0), (1, size, size))
    if task == "ct":
        return ParallelBeamCT(size, sparse_view_angles(8))
    if task == "mri":
        return MultiCoilMRI(uniform1d_mask(size, 4, 0.08, torch.Generator().manual_seed(2)),
                            simulate_coil_sensitivities(4, size, torch.Generator().manual_seed(3)))
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def gaussian_problem(task: str, sigma: float, size: int = 32, seed: int = 1) -> GaussianProblem:
    """Motion blur (9×9, length 7 at 30°), sparse-view CT (8 views) or 4-coil MRI (×4, uniform 1-D mask, 8 % ACS,
    complex 2-channel prior) of one exact prior sample, noise σ, and its closed-form posterior mean (float64)."""
    op = _operator(task, size)
    complex_ = op.dtype == "complex"
    ch = 2 if complex_ else 1
    model = GaussianDenoiser.stationary(size=size, channels=ch, total_variance=PIXEL_VARIANCE * ch * size * size,
                                        dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    x = model.sample_data(1, g)
    y = add_noise(op.A(real_to_complex(x) if complex_ else x), sigma, g, support=op.measurement_support())
    return GaussianProblem(task, model, op, y, float(sigma), gaussian_posterior_mean(model, op, y, sigma))


class _OfficialDirection(DDSScheduler):
    """γ_t = r_t²/σ² with the official DDS re-noising (the parent's ε̂, not re-derived from x̂0')."""

    def step_gamma(self, alpha_prod_t: float) -> float:
        return posterior_variance(alpha_prod_t, self.prior_variance) / self.noise_variance


class _Discrepancy(DDSScheduler):
    """Constant γ; CG stopped per sample at the first iterate with ``‖Ax − y‖ <= τ σ √m`` (τ = 1), at most M.

    The k-step CG iterates are recomputed for k = 1, 2, … (CG from the same start is deterministic), which costs
    O(M²) operator applications: an instrument, not a sampler to use.
    """

    def data_consistency(self, x0, gamma=None):
        op, y = self._operator, self._y
        support = op.measurement_support()
        m = float(y[0].numel()) if support is None else float(support.sum())
        threshold = self.noise_std * math.sqrt(m)
        chosen, iters = x0, torch.zeros(x0.shape[0], dtype=torch.int64)
        done = torch.zeros(x0.shape[0], dtype=torch.bool)
        limit = self.cg_iters
        for k in range(0, limit + 1):
            self.cg_iters = k
            xk, _ = DDSScheduler.data_consistency(self, x0, gamma)
            z = real_to_complex(xk) if op.dtype == "complex" else xk
            fit = batch_sq_norm(op.A(z) - y).sqrt() <= threshold
            take = (fit | (k == limit)) & ~done
            chosen = torch.where(take.reshape(-1, 1, 1, 1), xk, chosen)
            iters = torch.where(take, torch.full_like(iters, k), iters)
            done |= take
            if bool(done.all()):
                break
        self.cg_iters = limit
        return chosen, iters


def _scheduler(problem: GaussianProblem, variant: str, samples: int) -> DDSScheduler:
    settings = VARIANTS[variant][1]
    kind, sigma = settings["kind"], problem.sigma
    cls = {"gamma-t": _OfficialDirection, "discrepancy": _Discrepancy}.get(kind, DDSScheduler)
    s = cls(clip_sample=False)
    y = problem.y.expand(samples, *problem.y.shape[1:])
    # An explicit gamma selects the constant-weight step; noise_std is then only recorded (the subclasses read it).
    gamma = None if kind == "noise-aware" else 1.0 / sigma**2
    s.set_measurement(problem.operator, y, gamma=gamma, noise_std=sigma, cg_iters=settings["cg_iters"],
                      prior_variance=PIXEL_VARIANCE)
    return s


def dds_sample_mean(problem: GaussianProblem, variant: str, steps: int, samples: int = 256, eta: float = 0.85,
                    seed: int = 5) -> dict:
    """Run ``samples`` DDS chains (DDNM-form η) and compare their mean with the posterior mean.

    Returns ``error`` = ‖mean − μ‖/‖μ‖, its Monte-Carlo standard error ``mc_se`` = √(Σ_pixels Var/K)/‖μ‖ (the part
    of ``error`` that more samples would remove), and the mean CG iterations per step.
    """
    s = _scheduler(problem, variant, samples)
    s.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, problem.channels, *problem.mean.shape[2:], generator=g, dtype=torch.float64)
    for t in s.timesteps:
        x = s.step(problem.model(x, t).sample, t, x, eta=eta, generator=g).prev_sample
    mu_norm = float(problem.mean.norm())
    iters = torch.stack(s.cg_iteration_history).double().mean()
    return {
        "error": float((x.mean(0, keepdim=True) - problem.mean).norm()) / mu_norm,
        "mc_se": float(x.var(0).sum().div(samples).sqrt()) / mu_norm,
        "cg_iters_per_step": float(iters),
        "samples": samples,
    }
