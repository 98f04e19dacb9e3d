"""Tests of the exact-score denoisers (lml_sampler/models/analytic/).

References are computed independently of the model code: dense linear algebra for the Gaussian, torch.distributions
log-densities + autograd for Tweedie's formula, importance sampling from the prior for the posterior mean, and the
stock diffusers schedulers for the timestep/prediction conventions. Budget: ~90 s on one CPU thread.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from torch.distributions import Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal

from lml_sampler.models.analytic import (
    AnalyticDenoiser,
    EmpiricalDenoiser,
    GaussianDenoiser,
    GMMDenoiser,
    NoiseSchedule,
    digits_dataset,
    stationary_spectrum,
)

F64 = torch.float64


# ----------------------------------------------------------------------------------------------------------------------
# Helpers (test-local; eval owns the real metrics)
# ----------------------------------------------------------------------------------------------------------------------


def frechet_gaussian(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """‖μ1−μ2‖² + tr Σ1 + tr Σ2 − 2 tr √(√Σ1 Σ2 √Σ1), float64, eigen-decompositions of symmetric matrices only."""
    w, v = torch.linalg.eigh(cov1)
    root1 = (v * w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root1 @ cov2 @ root1).clamp(min=0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + cov1.trace() + cov2.trace() - 2 * cross)


def gaussian_fit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.flatten(1).to(F64)
    return x.mean(0), torch.cov(x.T)


def unitary_dft2(h: int, w: int) -> torch.Tensor:
    """Dense unitary 2-D DFT on row-major (h, w) images: kron(F_h, F_w)."""

    def dft(n: int) -> torch.Tensor:
        k = torch.arange(n, dtype=F64)
        return torch.exp(-2j * math.pi * torch.outer(k, k) / n) / math.sqrt(n)

    return torch.kron(dft(h), dft(w))


def hermitian_symmetric(q: torch.Tensor) -> torch.Tensor:
    """q[c,i,j] + q[c,−i,−j]: a valid (real-Σ) spectrum."""
    return q + torch.roll(torch.flip(q, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))


def forward_noised(model: AnalyticDenoiser, n: int, t: torch.Tensor | float, seed: int):
    """(x, α, σ): x = α·x0 + σ·ε with x0 from the model's exact sampler."""
    g = torch.Generator().manual_seed(seed)
    x0 = model.sample_data(n, generator=g, dtype=F64)
    alpha, sigma = model.alpha_sigma(torch.as_tensor(t), n)
    x = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g, dtype=F64)
    return x, alpha, sigma


def x0_from_eps(model: AnalyticDenoiser, x: torch.Tensor, t) -> torch.Tensor:
    """x̂0 = (x − σ·ε̂)/α from the model's ε output (prediction_type must be 'epsilon')."""
    assert model.config.prediction_type == "epsilon"
    alpha, sigma = model.alpha_sigma(torch.as_tensor(t), x.shape[0])
    eps = model(x, t).sample
    return (x - sigma.view(-1, 1, 1, 1) * eps) / alpha.view(-1, 1, 1, 1)


# ----------------------------------------------------------------------------------------------------------------------
# Small models
# ----------------------------------------------------------------------------------------------------------------------


def make_gaussian(kind: str, **kwargs) -> GaussianDenoiser:
    g = torch.Generator().manual_seed(0)
    shape = (2, 3, 4)
    mean = 0.3 * torch.randn(shape, generator=g, dtype=F64)
    if kind == "diag":
        return GaussianDenoiser.from_diag(mean, 0.05 + torch.rand(shape, generator=g, dtype=F64), **kwargs)
    if kind == "lowrank":
        var = 0.05 + 0.2 * torch.rand(shape, generator=g, dtype=F64)
        factor = 0.4 * torch.randn(24, 3, generator=g, dtype=F64)
        return GaussianDenoiser.from_lowrank(mean, var, factor, **kwargs)
    # Odd width exercises the Nyquist-free axis of the Hermitian symmetry.
    spectrum = hermitian_symmetric(torch.rand(2, 4, 5, generator=g, dtype=F64)) + 0.01
    return GaussianDenoiser.from_spectrum(spectrum, mean=0.3 * torch.randn(2, 4, 5, generator=g, dtype=F64), **kwargs)


def make_gmm(kind: str = "isotropic", chunk_size: int = 2, **kwargs) -> GMMDenoiser:
    g = torch.Generator().manual_seed(1)
    means = 1.5 * torch.randn(3, 1, 2, 2, generator=g, dtype=F64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    if kind == "isotropic":
        variances = torch.tensor([0.05, 0.1, 0.2], dtype=F64)
    else:
        variances = 0.03 + 0.3 * torch.rand(3, 1, 2, 2, generator=g, dtype=F64)
    # chunk_size=2 < K=3 exercises the streaming log-sum-exp across chunks.
    return GMMDenoiser.from_components(weights, means, variances, chunk_size=chunk_size, **kwargs)


def make_empirical(**kwargs) -> EmpiricalDenoiser:
    images = torch.randn(30, 1, 2, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    return EmpiricalDenoiser.from_images(images, chunk_size=7, **kwargs)


ALL_MODELS = {
    "gauss-diag": lambda **kw: make_gaussian("diag", **kw),
    "gauss-lowrank": lambda **kw: make_gaussian("lowrank", **kw),
    "gauss-fourier": lambda **kw: make_gaussian("fourier", **kw),
    "gmm-iso": lambda **kw: make_gmm("isotropic", **kw),
    "gmm-diag": lambda **kw: make_gmm("diagonal", **kw),
    "empirical": lambda **kw: make_empirical(**kw),
}


# ----------------------------------------------------------------------------------------------------------------------
# Exactness
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["diag", "lowrank", "fourier"])
def test_gaussian_posterior_mean_matches_dense_closed_form(kind):
    model = make_gaussian(kind)
    c, h, w = model.data_shape
    d = model.dim
    # Independent dense Σ from the definition of each covariance type.
    if kind == "diag":
        cov = torch.diag(model.variance.flatten())
    elif kind == "lowrank":
        cov = torch.diag(model.variance.flatten()) + model.factor @ model.factor.T
    else:
        f2 = unitary_dft2(h, w)
        blocks = [(f2.conj().T @ torch.diag(model.spectrum[i].flatten().to(torch.complex128)) @ f2) for i in range(c)]
        assert max(b.imag.abs().max() for b in blocks) < 1e-12  # Hermitian-symmetric spectrum ⇒ real Σ
        cov = torch.block_diag(*[b.real for b in blocks])
    # Round-off of a (d×d) float64 product/FFT: ~1e-15 relative.
    torch.testing.assert_close(model.covariance(), cov, rtol=0, atol=1e-12)

    ts = torch.tensor([0, 3, 50, 250.5, 600, 999], dtype=F64)
    x, alpha, sigma = forward_noised(model, ts.numel(), ts, seed=3)
    mu = model.mean.flatten()
    expected = []
    for i in range(ts.numel()):
        a, s = alpha[i], sigma[i]
        gain = a * cov @ torch.linalg.inv(a**2 * cov + s**2 * torch.eye(d, dtype=F64))
        expected.append(mu + gain @ (x[i].flatten() - a * mu))
    expected = torch.stack(expected).reshape(x.shape)
    # cond(α²Σ + σ²I) ≤ (α²λmax + σ²)/σ² ≈ 2e4 at t = 0 (σ² = 1e-4); float64 ⇒ error ≲ 1e-11. The ε route divides
    # by α and multiplies by σ: same order.
    torch.testing.assert_close(model.posterior_mean(x, alpha, sigma), expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(x0_from_eps(model, x, ts), expected, rtol=0, atol=1e-10)


def _log_marginal(model: AnalyticDenoiser, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
    """log p_t(x) per sample from torch.distributions (independent of the model's posterior code)."""
    out = []
    for i in range(x.shape[0]):
        a, s = alpha[i], sigma[i]
        xi = x[i].flatten()
        if isinstance(model, GaussianDenoiser):
            cov = a**2 * model.covariance() + s**2 * torch.eye(model.dim, dtype=F64)
            dist = MultivariateNormal(a * model.mean.flatten(), covariance_matrix=cov)
        elif isinstance(model, GMMDenoiser):
            k = model.means.shape[0]
            var = model.variances.reshape(k, -1).expand(k, model.dim)
            comps = Independent(Normal(a * model.means.reshape(k, -1), (a**2 * var + s**2).sqrt()), 1)
            dist = MixtureSameFamily(Categorical(probs=model.weights), comps)
        else:
            n = model.images.shape[0]
            comps = Independent(Normal(a * model.images.reshape(n, -1), s.expand(n, model.dim)), 1)
            dist = MixtureSameFamily(Categorical(probs=torch.full((n,), 1.0 / n, dtype=F64)), comps)
        out.append(dist.log_prob(xi))
    return torch.stack(out)


@pytest.mark.parametrize("name", list(ALL_MODELS))
def test_tweedie_eps_is_scaled_score(name):
    """ε̂(x, t) = −σ·∇ₓ log p_t(x) (Tweedie), with p_t from torch.distributions and autograd."""
    model = ALL_MODELS[name]()
    ts = torch.tensor([1, 40, 200.25, 500, 900], dtype=F64)
    x, alpha, sigma = forward_noised(model, ts.numel(), ts, seed=4)
    x = x.requires_grad_(True)
    (grad,) = torch.autograd.grad(_log_marginal(model, x, alpha, sigma).sum(), x)
    eps = model(x.detach(), ts).sample
    # Both sides are float64 closed forms; the score differs only by round-off (log-sum-exp, Cholesky): 1e-8 is
    # ~1e6 ulps of slack yet far below any modelling error (a wrong weight or variance changes ε̂ at O(1e-2)).
    torch.testing.assert_close(eps, -sigma.view(-1, 1, 1, 1) * grad, rtol=1e-8, atol=1e-8)


def _importance_sampled_posterior_mean(model, x, alpha, sigma, num_prior: int, seed: int):
    """Self-normalised IS estimate of E[x0 | x] with proposals from the prior, its delta-method standard error and
    the effective sample size, per noisy point."""
    g = torch.Generator().manual_seed(seed)
    x0 = model.sample_data(num_prior, generator=g, dtype=F64).flatten(1)  # (M, d)
    est, se, ess = [], [], []
    for i in range(x.shape[0]):
        logw = -((x[i].flatten() - alpha[i] * x0) ** 2).sum(1) / (2 * sigma[i] ** 2)
        w = torch.softmax(logw, dim=0)
        mean = w @ x0
        est.append(mean)
        se.append(((w[:, None] ** 2) * (x0 - mean) ** 2).sum(0).sqrt())
        ess.append(1.0 / (w**2).sum())
    shape = x.shape
    return torch.stack(est).reshape(shape), torch.stack(se).reshape(shape), torch.stack(ess)


@pytest.mark.parametrize("name", ["gmm-iso", "gmm-diag", "digits"])
def test_eps_implied_x0_matches_importance_sampling(name):
    """x̂0 = (x − σε̂)/α from the model's ε matches a Monte-Carlo posterior mean (IS from the prior)."""
    if name == "digits":
        model = EmpiricalDenoiser.digits(size=8, chunk_size=500)
        ts, num_prior = torch.tensor([500.0, 500.0, 700.0, 700.0], dtype=F64), 40_000
    else:
        model = make_gmm(name.split("-")[1].replace("iso", "isotropic").replace("diag", "diagonal"))
        ts, num_prior = torch.tensor([100.0, 100.0, 400.0, 400.0], dtype=F64), 200_000
    x, alpha, sigma = forward_noised(model, ts.numel(), ts, seed=5)
    est, se, ess = _importance_sampled_posterior_mean(model, x, alpha, sigma, num_prior, seed=6)
    # The delta-method standard error is trustworthy only with enough effective samples.
    assert ess.min() > 300, ess
    # Power: the MC error must be small against the spread of the data (unit-scale means / [-1, 1] pixels), so that
    # a wrong mixture weight or variance (an O(0.1) shift of x̂0) cannot hide inside the tolerance.
    assert se.max() < 0.03, se.max()
    # 5 standard errors per coordinate: with ≤ 256 coordinates the chance of a false failure is < 1.5e-4 (and the
    # seeds are fixed); 1e-12 covers round-off where the posterior is degenerate (se ≈ 0).
    err = (x0_from_eps(model, x, ts) - est).abs()
    assert torch.all(err <= 5 * se + 1e-12), (err / se).max()


def test_chunking_does_not_change_the_result():
    """Streaming log-sum-exp over chunks equals the one-chunk softmax (GMM and empirical)."""
    images = digits_dataset(8)[:200].to(F64)
    small = EmpiricalDenoiser.from_images(images, chunk_size=7)
    big = EmpiricalDenoiser.from_images(images, chunk_size=1000)
    ts = torch.tensor([0, 5, 300, 999])
    x, _, _ = forward_noised(big, 4, ts, seed=7)
    # Re-association of float64 sums only.
    torch.testing.assert_close(small(x, ts).sample, big(x, ts).sample, rtol=1e-12, atol=1e-12)
    xg = x[:, :, :2, :2]
    torch.testing.assert_close(make_gmm(chunk_size=2)(xg, ts).sample, make_gmm(chunk_size=100)(xg, ts).sample,
                               rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# Exact samplers of the data distribution
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gauss-lowrank", "gauss-fourier", "gmm-diag"])
def test_sample_data_moments(name):
    model = ALL_MODELS[name]()
    n = 40_000
    x = model.sample_data(n, generator=torch.Generator().manual_seed(8), dtype=F64).flatten(1)
    if isinstance(model, GaussianDenoiser):
        mean, cov = model.mean.flatten(), model.covariance()
    else:  # mixture moments: E x = Σ π μ, Cov = Σ π (S + μμᵀ) − E x E xᵀ
        mu = model.means.flatten(1)
        mean = model.weights @ mu
        second = sum(
            model.weights[k] * (torch.diag(model.variances[k].flatten()) + torch.outer(mu[k], mu[k]))
            for k in range(mu.shape[0])
        )
        cov = second - torch.outer(mean, mean)
    # Standard errors: Var(x̄_i) = Σ_ii/n; Var(Ĉ_ij) ≈ (Σ_ij² + Σ_ii Σ_jj)/n (Gaussian; mixtures have heavier
    # fourth moments, hence 6 rather than 5 standard errors over the ≤ 300 entries).
    se_mean = (cov.diagonal() / n).sqrt()
    se_cov = ((cov**2 + torch.outer(cov.diagonal(), cov.diagonal())) / n).sqrt()
    assert torch.all((x.mean(0) - mean).abs() <= 6 * se_mean)
    assert torch.all((torch.cov(x.T) - cov).abs() <= 6 * se_cov)


def test_empirical_sample_data_draws_training_images():
    model = make_empirical()
    x = model.sample_data(500, generator=torch.Generator().manual_seed(9), dtype=F64).flatten(1)
    dist = (x[:, None] - model.images.flatten(1)[None]).abs().sum(-1)  # exact, unlike cdist's matmul form
    assert torch.all(dist.min(1).values == 0)
    # Uniform over 30 images: 500 draws hit all of them with probability > 1 − 30·(29/30)^500 ≈ 1 − 1e-6.
    assert dist.argmin(1).unique().numel() == 30


# ----------------------------------------------------------------------------------------------------------------------
# End to end: stock schedulers reach the data distribution
# ----------------------------------------------------------------------------------------------------------------------


def _ddpm_output_spectrum(scheduler: DDPMScheduler, p: torch.Tensor) -> torch.Tensor:
    """Exact per-Fourier-mode output variance of 1000-step ancestral DDPM ('fixed_small') with the exact linear
    denoiser x̂0 = k_t·x_t, k_t = √ᾱ_t p/(ᾱ_t p + 1 − ᾱ_t): v ← (c0 k_t + c_t)² v + β̃_t from v_T = 1."""
    abar, betas = scheduler.alphas_cumprod.to(F64), scheduler.betas.to(F64)
    v = torch.ones_like(p)
    for t in range(len(abar) - 1, -1, -1):
        prev = abar[t - 1] if t > 0 else torch.tensor(1.0, dtype=F64)
        k = abar[t].sqrt() * p / (abar[t] * p + 1 - abar[t])
        c0 = prev.sqrt() * betas[t] / (1 - abar[t])
        ct = (1 - betas[t]).sqrt() * (1 - prev) / (1 - abar[t])
        v = (c0 * k + ct) ** 2 * v + ((1 - prev) / (1 - abar[t]) * betas[t] if t > 0 else 0.0)
    return v


@pytest.mark.slow
def test_ddpm_1000_steps_reaches_the_stationary_gaussian():
    """Stock 1000-step ancestral DDPM on the 8×8 stationary Gaussian reaches N(0, Σ) up to the estimator floor."""
    model = GaussianDenoiser.stationary(size=8, total_variance=16.0, dtype=F64)  # 0.25 per pixel, as the benchmark
    truth_mean, truth_cov = torch.zeros(64, dtype=F64), model.covariance()
    n = 2000
    # clip_sample=False: clipping x̂0 to [-1, 1] (the stock default) truncates a Gaussian with std 0.5.
    scheduler = DDPMScheduler(clip_sample=False)
    scheduler.set_timesteps(1000)
    g = torch.Generator().manual_seed(10)
    x = torch.randn((n, 1, 8, 8), generator=g, dtype=F64)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t).sample, t, x, generator=g).prev_sample
    fd_sampler = frechet_gaussian(*gaussian_fit(x), truth_mean, truth_cov)

    # Estimator floor: the same statistic on n exact samples, over 6 replicates (mean ≈ 0.077, sd ≈ 0.006 at n=2000).
    floors = torch.tensor([
        frechet_gaussian(*gaussian_fit(model.sample_data(n, generator=g, dtype=F64)), truth_mean, truth_cov)
        for _ in range(6)
    ])
    # The 1000-step chain is not exact (its reverse variance is β̃ without the posterior-variance term); its exact
    # Fréchet distance, computed mode by mode, is ~1e-3.
    p = model.spectrum.flatten()
    fd_discretisation = float(((_ddpm_output_spectrum(scheduler, p).sqrt() - p.sqrt()) ** 2).sum())
    assert fd_discretisation < 0.01
    tolerance = floors.mean() + 5 * floors.std() + fd_discretisation
    # The test can fail: a model whose output variance is 20 % off has an exact distance of ≈ 0.15 > tolerance.
    assert frechet_gaussian(truth_mean, 1.2 * truth_cov, truth_mean, truth_cov) > tolerance - floors.mean()
    assert fd_sampler <= tolerance, (fd_sampler, floors.tolist(), fd_discretisation)


def _transfer_matrix_fd(model: GaussianDenoiser, scheduler, nfe: int) -> float:
    """Exact Fréchet distance of a linear sampler: run it on the d basis vectors, Cov = M Mᵀ
    (docs/exact-score-benchmark.md §2)."""
    d = model.dim
    scheduler.set_timesteps(nfe)
    x = torch.eye(d, dtype=F64).reshape(d, *model.data_shape)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t).sample, t, x).prev_sample
    m = x.reshape(d, d).T
    return frechet_gaussian(torch.zeros(d, dtype=F64), m @ m.T, torch.zeros(d, dtype=F64), model.covariance())


def test_stationary_benchmark_reproduces_benchmark_table():
    """GaussianDenoiser.stationary() is the benchmark of docs/exact-score-benchmark.md §1: trace Σ = 64 and the
    printed transfer-matrix distances of §2 at NFE 10 (DDIM trailing 4.049, DPM-Solver++ 2M 2.540)."""
    model = GaussianDenoiser.stationary(dtype=F64)
    assert model.config.sample_size == 16 and model.config.in_channels == 1
    assert model.covariance().trace().item() == pytest.approx(64.0, rel=1e-12)
    ddim = DDIMScheduler(timestep_spacing="trailing", clip_sample=False)
    dpm = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)
    # The table prints 4 significant digits: half a unit in the last place.
    assert _transfer_matrix_fd(model, ddim, 10) == pytest.approx(4.049, abs=5e-4)
    assert _transfer_matrix_fd(model, dpm, 10) == pytest.approx(2.540, abs=5e-4)


def test_stationary_spectrum_shape_and_scale():
    p = stationary_spectrum(size=8, channels=3, total_variance=48.0)
    assert p.shape == (3, 8, 8) and p.sum().item() == pytest.approx(48.0, rel=1e-12)
    assert torch.equal(p, hermitian_symmetric(p) / 2)
    # DC frequency set to 1/16 ⇒ raw DC power 256 vs 1/(1/8)² = 64 at the lowest non-zero frequency of an 8×8 grid.
    assert (p[0, 0, 0] / p[0, 0, 1]).item() == pytest.approx(4.0, rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# Conventions: prediction types, flow matching, timesteps, batching, dtypes
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gauss-fourier", "gmm-diag", "empirical"])
def test_prediction_types_give_the_same_ddim_step(name):
    """One stock DDIM step (η = 0) from the same x_t is the same for every VP prediction type (diffusers converts
    each to x̂0 and ε̂ with its own formulas), and v = α·ε̂ − σ·x̂0 matches scheduler.get_velocity."""
    models = {p: ALL_MODELS[name](prediction_type=p) for p in ("epsilon", "sample", "v_prediction")}
    x, alpha, sigma = forward_noised(models["epsilon"], 3, torch.tensor([700, 700, 700]), seed=11)
    t = 700
    prev = {}
    for ptype, model in models.items():
        sched = DDIMScheduler(prediction_type=ptype, clip_sample=False)
        sched.set_timesteps(10)
        prev[ptype] = sched.step(model(x, t).sample, t, x).prev_sample
    # float64 conversions of the same x̂0; the scheduler's float32 ᾱ introduces ~1e-7 relative differences.
    torch.testing.assert_close(prev["sample"], prev["epsilon"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(prev["v_prediction"], prev["epsilon"], rtol=1e-6, atol=1e-6)
    x0, eps = models["sample"](x, t).sample, models["epsilon"](x, t).sample
    v_ref = DDPMScheduler().get_velocity(x0, eps, torch.full((3,), t))
    torch.testing.assert_close(models["v_prediction"](x, t).sample, v_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["gauss-lowrank", "gmm-iso", "empirical"])
def test_flow_matches_vp_through_change_of_variables(name):
    """x_vp = α x0 + σ ε equals (α + σ)·x_s with s = σ/(α + σ) on the flow path x_s = (1 − s)x0 + s ε, so the flow
    velocity at (x_vp/(α + σ), t = s·T) must equal ε̂_vp − x̂0_vp."""
    vp_eps, vp_x0 = ALL_MODELS[name](), ALL_MODELS[name](prediction_type="sample")
    flow = ALL_MODELS[name](prediction_type="flow")
    ts = torch.tensor([2, 150, 480, 999])
    x, alpha, sigma = forward_noised(vp_eps, 4, ts, seed=12)
    scale = (alpha + sigma).view(-1, 1, 1, 1)
    s = sigma / (alpha + sigma)
    velocity = flow(x / scale, s * flow.config.num_train_timesteps).sample
    # Pure float64 algebra: round-off only (σ ≥ 0.01 in the divisions).
    torch.testing.assert_close(velocity, vp_eps(x, ts).sample - vp_x0(x, ts).sample, rtol=1e-9, atol=1e-9)


def test_flow_model_with_stock_flow_match_euler_is_exact_euler():
    """Flow model + stock FlowMatchEulerDiscreteScheduler (float timesteps s·T, shift 3), 16 Euler steps on the
    stationary Gaussian: the sampler is linear, so its output covariance M·Mᵀ (transfer matrix on the basis vectors)
    must equal the per-Fourier-mode Euler recursion with the exact velocity
    û = (s − (1 − s)p)/((1 − s)²p + s²)·x, i.e. v ← (1 + (s' − s)·(s − (1 − s)p)/m)²·v from v = 1."""
    model = GaussianDenoiser.stationary(size=8, total_variance=16.0, dtype=F64, prediction_type="flow")
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(16)
    assert sched.timesteps.is_floating_point()
    d = model.dim
    x = torch.eye(d, dtype=F64).reshape(d, 1, 8, 8)
    for t in sched.timesteps:
        x = sched.step(model(x, t).sample, t, x).prev_sample
    m = x.reshape(d, d).T

    p = model.spectrum
    v = torch.ones_like(p)
    sigmas = sched.sigmas.to(F64)
    for i, t in enumerate(sched.timesteps):
        s = t.to(F64) / sched.config.num_train_timesteps  # what the model sees (float32 timestep)
        gain = 1 + (sigmas[i + 1] - sigmas[i]) * (s - (1 - s) * p) / ((1 - s) ** 2 * p + s**2)
        v = gain**2 * v
    expected = GaussianDenoiser.from_spectrum(v).covariance()
    # The stock step rounds the sample to float32 each step (16 × 2⁻²⁴ ≈ 1e-6 relative, entries ≤ 0.4), the rest is
    # float64. A wrong sign or scale of the velocity, or a misread timestep (s = t instead of t/T), is an O(1) error.
    torch.testing.assert_close(m @ m.T, expected, rtol=0, atol=2e-6)


def test_timestep_interpolation_and_per_sample_timesteps():
    model = make_gmm(prediction_type="sample")
    abar = DDPMScheduler().alphas_cumprod.to(F64)
    assert torch.equal(model.alphas_cumprod, abar)
    x, _, _ = forward_noised(model, 3, torch.tensor([10, 10, 10]), seed=14)
    t = torch.tensor([10.0, 10.25, 999.0])
    ab = torch.stack([abar[10], 0.75 * abar[10] + 0.25 * abar[11], abar[999]])
    expected = model.posterior_mean(x, ab.sqrt(), (1 - ab).sqrt())
    torch.testing.assert_close(model(x, t).sample, expected, rtol=1e-12, atol=1e-12)
    # A scalar (python, 0-d or one-element tensor) is shared by the batch.
    single = model(x, torch.tensor([7])).sample
    torch.testing.assert_close(model(x, 7).sample, single, rtol=0, atol=0)
    torch.testing.assert_close(model(x, torch.tensor(7, dtype=torch.int64)).sample, single, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(ALL_MODELS))
def test_batch_equals_singles(name):
    model = ALL_MODELS[name]()
    ts = torch.tensor([0.0, 17.5, 333.0, 998.75, 640.0])
    x, _, _ = forward_noised(model, 5, ts, seed=15)
    batched = model(x, ts).sample
    singles = torch.cat([model(x[i : i + 1], ts[i : i + 1]).sample for i in range(5)])
    # Batched matmuls/FFTs may re-associate float64 sums: round-off only.
    torch.testing.assert_close(batched, singles, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["gauss-fourier", "gmm-iso", "empirical"])
def test_dtypes(name):
    model = ALL_MODELS[name]().to(torch.float32)
    assert model.dtype == torch.float32
    x, _, _ = forward_noised(model, 4, 300, seed=16)
    out64 = model(x, 300).sample
    out32 = model(x.float(), torch.tensor(300)).sample
    out16 = model(x.to(torch.bfloat16), 300).sample
    assert (out64.dtype, out32.dtype, out16.dtype) == (F64, torch.float32, torch.bfloat16)
    # Computed in float64 either way: the only difference is the float32 rounding of the input (|x| ≲ 5, ε̂ has
    # Lipschitz constant ≲ α/σ·(spread/σ)² ≈ 10 here) and of the output.
    torch.testing.assert_close(out32.double(), out64, rtol=1e-5, atol=1e-5)
    assert model.to(F64).dtype == F64


@pytest.mark.parametrize("name", ["gauss-diag", "gauss-lowrank", "gauss-fourier", "gmm-diag", "empirical"])
def test_save_pretrained_round_trip(tmp_path, name):
    model = ALL_MODELS[name](prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2")
    model.save_pretrained(tmp_path)
    # As for any diffusers model, the dtype is not in the config: float64 buffers need torch_dtype to load as such.
    assert type(model).from_pretrained(tmp_path).dtype == torch.float32
    loaded = type(model).from_pretrained(tmp_path, torch_dtype=model.dtype)
    assert type(loaded) is type(model)
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731 (drop load metadata)
    assert public(loaded.config) == public(model.config)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.dtype == model.dtype
    x, _, _ = forward_noised(model, 3, torch.tensor([5, 400, 900]), seed=17)
    torch.testing.assert_close(loaded(x, torch.tensor([5, 400, 900])).sample,
                               model(x, torch.tensor([5, 400, 900])).sample, rtol=0, atol=0)


def test_trained_betas_round_trip(tmp_path):
    betas = torch.linspace(1e-4, 0.03, 50, dtype=F64)
    model = make_gmm(num_train_timesteps=50, trained_betas=betas)
    torch.testing.assert_close(model.alphas_cumprod, torch.cumprod(1 - betas.float(), 0).double())
    model.save_pretrained(tmp_path)
    loaded = GMMDenoiser.from_pretrained(tmp_path)
    assert torch.equal(loaded.alphas_cumprod, model.alphas_cumprod)


def test_from_scheduler_config():
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type="v_prediction")
    model = GaussianDenoiser.from_scheduler_config(sched.config, sample_size=4, in_channels=2)
    assert model.config.prediction_type == "v_prediction"
    assert torch.equal(model.alphas_cumprod, sched.alphas_cumprod.to(F64))
    flow = GMMDenoiser.from_scheduler_config(FlowMatchEulerDiscreteScheduler(), num_components=2)
    assert flow.config.prediction_type == "flow"
    # The schedule object carries the same entries into the factories.
    schedule = NoiseSchedule.from_scheduler(sched)
    assert schedule == model.schedule and torch.equal(schedule.alphas_cumprod, model.alphas_cumprod)
    stationary = GaussianDenoiser.stationary(size=4, **schedule.model_kwargs())
    assert stationary.schedule == schedule and stationary.config.beta_schedule == "scaled_linear"


@pytest.mark.parametrize("pipeline_cls", [DDPMPipeline, DDIMPipeline])
def test_works_inside_stock_pipelines(pipeline_cls):
    model = GaussianDenoiser.stationary(size=8, total_variance=16.0)
    pipe = pipeline_cls(unet=model, scheduler=DDPMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=3, num_inference_steps=5, generator=torch.Generator().manual_seed(18), output_type="np")
    images = out.images
    assert images.shape == (3, 8, 8, 1)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.01


def test_digits_dataset_is_the_shared_preprocessing():
    import lml_sampler.data.digits as shared

    assert digits_dataset is shared.digits_dataset  # one preprocessing for bundled models, domain FID and this model
    train, test = digits_dataset(16, "train"), digits_dataset(16, "test")
    assert train.dtype == torch.float32 and train.min() >= -1 and train.max() <= 1
    raw = torch.cat([digits_dataset(8, "train"), digits_dataset(8, "test")]).flatten(1)
    from sklearn.datasets import load_digits

    ref = torch.as_tensor(load_digits().images, dtype=torch.float32).flatten(1) / 8 - 1
    # The two splits partition the data set: same multiset of rows.
    assert torch.equal(torch.sort(raw, dim=0).values, torch.sort(ref, dim=0).values)
    model = EmpiricalDenoiser.digits(size=16)
    assert torch.equal(model.images, train) and model.config.num_images == train.shape[0]
    assert test.shape[0] + train.shape[0] == 1797


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="prediction_type"):
        make_gmm(prediction_type="velocity")
    model = make_gmm()
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match="timestep"):
        model(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="timestep"):
        model(x, 1000)
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.zeros(2, 1, 3, 3), 5)
    with pytest.raises(ValueError, match="class_labels"):
        model(x, 5, class_labels=torch.zeros(2))
    with pytest.raises(ValueError, match="flow timestep"):
        make_gmm(prediction_type="flow")(x, 0.0)
    with pytest.raises(ValueError, match="Hermitian"):
        GaussianDenoiser.from_spectrum(torch.rand(1, 4, 4) + torch.arange(16.0).reshape(1, 4, 4))
    with pytest.raises(ValueError, match="alpha and sigma"):
        model.posterior_mean(x, torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match="weights"):
        GMMDenoiser.from_components(torch.tensor([1.0, 0.0]), torch.zeros(2, 1, 2, 2), torch.ones(2))
    with pytest.raises(ValueError, match="max_dim"):
        GaussianDenoiser.stationary(size=8).covariance(max_dim=10)
