"""Noise-aware data consistency of DDS (docs/dds.md §4): the weight schedule, the re-derived noise direction, the
argument rules, per-task defaults, and the exact-Gaussian check of the posterior mean."""

import math
import warnings

import pytest
import torch

from benchmarks.dds_exact import dds_sample_mean, gaussian_problem
from lml_sampler.operators import (Blur, ParallelBeamCT, RealInput, SingleCoilMRI, add_noise, gaussian_kernel,
                                   sparse_view_angles, uniform1d_mask)
from lml_sampler.schedulers.dds import DDSScheduler, posterior_variance


def _toy_model(x, t):
    """Deterministic stand-in for a UNet (diffusers' scheduler-test dummy model), scaled so that x̂0 leaves [-1, 1]."""
    return 2.0 * x * (t / (t + 1.0))


def _ct():
    return ParallelBeamCT(8, sparse_view_angles(4))


def _loop(scheduler, x, steps=10, eta=0.85, seed=0, **meas):
    scheduler.set_timesteps(steps)
    scheduler.set_measurement(**meas)
    g = torch.Generator().manual_seed(seed)
    for t in scheduler.timesteps:
        x = scheduler.step(_toy_model(x, t), t, x, eta=eta, generator=g).prev_sample
    return x


def test_posterior_variance_is_the_scalar_gaussian_posterior_variance():
    # x0 ~ N(0, v), x_t = a·x0 + b·ε: Var(x0 | x_t) = v − (a v)² / (a² v + b²), computed here as a Schur complement.
    for v in (0.05, 0.25, 1.0, 4.0):
        for abar in (1e-4, 0.1, 0.5, 0.9, 0.9999):
            a, b2 = math.sqrt(abar), 1 - abar
            schur = v - (a * v) ** 2 / (abar * v + b2)
            assert posterior_variance(abar, v) == pytest.approx(schur, rel=1e-12)
    assert posterior_variance(1e-12, 0.3) == pytest.approx(0.3, rel=1e-9)  # pure noise: the prior variance
    assert posterior_variance(1 - 1e-9, 0.3) == pytest.approx(1e-9, rel=1e-6)  # clean: the noise variance


def test_noise_aware_weight_per_step():
    op = _ct()
    y = op.A(torch.rand(2, 1, 8, 8))
    s = DDSScheduler(clip_sample=False)
    _loop(s, torch.randn(2, 1, 8, 8), operator=op, y=y, noise_std=0.05, prior_variance=0.3)
    assert s.dc_mode == "noise-aware"
    abar = [float(s.alphas_cumprod[int(t)]) for t in s.timesteps]
    assert s.gamma_history == pytest.approx([posterior_variance(a, 0.3) / 0.05**2 for a in abar], rel=1e-12)
    # γ_t decreases as the sample gets cleaner: early steps trust the data, late ones trust x̂0.
    assert all(g0 > g1 for g0, g1 in zip(s.gamma_history, s.gamma_history[1:]))


def test_noise_aware_weight_on_complex_measurements_uses_the_per_component_variance():
    # Circular complex noise with E|n|² = σ² has σ²/2 per real component: the log-likelihood is ‖y − Ax‖²/σ², so the
    # proximal weight doubles (docs/dds.md §4), for complex images and for real images through RealInput alike.
    op = RealInput(SingleCoilMRI(uniform1d_mask(8, 2, 0.25, torch.Generator().manual_seed(0))))
    y = op.A(torch.rand(2, 1, 8, 8))
    s = DDSScheduler(clip_sample=False)
    _loop(s, torch.randn(2, 1, 8, 8), operator=op, y=y, noise_std=0.05, prior_variance=0.3)
    assert s.noise_variance == pytest.approx(0.05**2 / 2, rel=1e-15)
    abar = [float(s.alphas_cumprod[int(t)]) for t in s.timesteps]
    assert s.gamma_history == pytest.approx([2 * posterior_variance(a, 0.3) / 0.05**2 for a in abar], rel=1e-12)


def test_noise_std_zero_is_the_noiseless_path_and_gamma_keeps_the_constant_step():
    op = _ct()
    y = op.A(torch.rand(2, 1, 8, 8))
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    hard = _loop(DDSScheduler(clip_sample=False), x, operator=op, y=y, noiseless=True)
    zero = _loop(DDSScheduler(clip_sample=False), x, operator=op, y=y, noise_std=0.0)
    assert torch.equal(hard, zero)
    const = _loop(DDSScheduler(clip_sample=False), x, operator=op, y=y, gamma=20.0)
    with_sigma = _loop(DDSScheduler(clip_sample=False), x, operator=op, y=y, gamma=20.0, noise_std=0.05)
    assert torch.equal(const, with_sigma)
    aware = _loop(DDSScheduler(clip_sample=False), x, operator=op, y=y, noise_std=0.05)
    assert not torch.allclose(aware, const, atol=1e-3)


@pytest.mark.parametrize("clip", [False, True])
def test_noise_aware_step_rederives_the_noise_direction(clip):
    """prev = √ᾱ' x̂0' + √(1−ᾱ')(η z + √(1−η²) ε̂') with ε̂' = (x_t − √ᾱ x̂0')/√(1−ᾱ) (DDNM form, docs/dds.md §4),
    also when x̂0 was clipped before data consistency."""
    op = _ct()
    y = op.A(torch.rand(1, 1, 8, 8, dtype=torch.float64))
    s = DDSScheduler(clip_sample=clip)
    s.set_timesteps(10)
    s.set_measurement(op, y, noise_std=0.05, cg_iters=4)
    t = int(s.timesteps[4])
    x = 3 * torch.randn(1, 1, 8, 8, dtype=torch.float64)
    eps, z, eta = torch.randn_like(x), torch.randn_like(x), 0.6
    out = s.step(eps, t, x, eta=eta, variance_noise=z)
    a_t, a_p = float(s.alphas_cumprod[t]), float(s.alphas_cumprod[t - 100])
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    if clip:
        x0 = x0.clamp(-1, 1)
        assert (x0.abs() == 1).any()  # the clamp is active in this case
    assert torch.allclose(out.denoised, x0, atol=1e-12)
    x0_dc = out.pred_original_sample
    eps_dc = (x - math.sqrt(a_t) * x0_dc) / math.sqrt(1 - a_t)
    ref = math.sqrt(a_p) * x0_dc + math.sqrt(1 - a_p) * (eta * z + math.sqrt(1 - eta**2) * eps_dc)
    # float32 ᾱ inside the parent and the 1e-6 shave of η = 1 (docs/dds.md §2): ~1e-6 relative.
    assert torch.allclose(out.prev_sample, ref, atol=1e-5)


def test_clip_denoised_overrides_the_config():
    op = _ct()
    y = op.A(torch.rand(2, 1, 8, 8))
    x = 3 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for meas in ({}, {"noise_std": 0.05}, {"noiseless": True}):
        by_config = _loop(DDSScheduler(clip_sample=True), x, operator=op, y=y, **meas)
        by_override = _loop(DDSScheduler(clip_sample=False), x, operator=op, y=y, clip_denoised=True, **meas)
        # The override is the config's clamp expressed as an affine correction: equal up to float32 round-off.
        assert torch.allclose(by_config, by_override, atol=5e-5)
        unclipped = _loop(DDSScheduler(clip_sample=True), x, operator=op, y=y, clip_denoised=False, **meas)
        plain = _loop(DDSScheduler(clip_sample=False), x, operator=op, y=y, **meas)
        assert torch.allclose(unclipped, plain, atol=5e-5)
        assert not torch.allclose(by_config, plain, atol=1e-2)


def test_bad_noise_std_is_refused_and_implausible_noise_warns():
    op = _ct()
    y = op.A(torch.rand(1, 1, 8, 8))
    s = DDSScheduler()
    for bad in (-0.1, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="noise_std"):
            s.set_measurement(op, y, noise_std=bad)
    with pytest.raises(ValueError, match="noise_std.*noiseless"):
        s.set_measurement(op, y, noise_std=0.05, noiseless=True)
    with pytest.raises(ValueError, match="gamma"):
        s.set_measurement(op, y, noise_std=0.0, gamma=10.0)
    with pytest.raises(ValueError, match="prior_variance"):
        s.set_measurement(op, y, noise_std=0.05, prior_variance=0.0)
    with pytest.raises(TypeError, match="clip_denoised"):
        s.set_measurement(op, y, clip_denoised=1)
    rms = float(y.pow(2).mean().sqrt())
    with pytest.warns(UserWarning, match="noise_std"):
        s.set_measurement(op, y, noise_std=10 * rms)  # e.g. σ given for 0..255 images
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.set_measurement(op, y, noise_std=0.5 * rms)  # a plausible level stays silent


def _tiny_pipeline():
    """A DDSPipeline around an untrained 8×8 UNet: enough to see which settings reach the scheduler."""
    from diffusers import DDPMScheduler, UNet2DModel

    from lml_sampler.pipelines.dds import DDSPipeline

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4).eval()
    pipe = DDSPipeline(unet, DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pipeline_passes_noise_std_and_uses_per_task_defaults():
    from lml_sampler.pipelines.tasks import DDS_DEFAULTS, dds_defaults, operator_task

    pipe = _tiny_pipeline()
    op = _ct()
    y = add_noise(op.A(torch.rand(2, 1, 8, 8)), 0.05, torch.Generator().manual_seed(0))
    out = pipe(op, y, num_inference_steps=4, noise_std=0.05, operator_range=(0, 1),
               generator=torch.Generator().manual_seed(0))
    s = pipe.scheduler
    want = dds_defaults("ct-sparse", noisy=True)
    assert s.dc_mode == "noise-aware" and s.cg_iters == want["cg_iters"]
    assert s.prior_variance == want["prior_variance"] and s.clip_denoised == want["clip"]
    assert out.cg_iterations.shape == (4, 2) and len(s.gamma_history) == 4
    assert operator_task(op) == "ct-sparse"
    assert operator_task(ParallelBeamCT(8, torch.arange(30.0))) == "ct-limited"
    assert operator_task(Blur(gaussian_kernel(3, 1.0), (1, 8, 8))) == "deblur"
    assert set(DDS_DEFAULTS) >= {"generic", "generic-noisy"}
    with pytest.raises(ValueError, match="noise_std"):
        pipe(op, y, num_inference_steps=2, noise_std=-1.0)
    with pytest.raises(ValueError, match="task"):
        pipe(op, y, num_inference_steps=2, task="denoise")
    with pytest.raises(ValueError, match="eta"):
        pipe(op, y, num_inference_steps=2, eta_type="ddim")


def test_per_task_defaults_are_looked_up_by_task_and_noise_and_explicit_knobs_win():
    from lml_sampler.pipelines.tasks import DDS_DEFAULTS, TASKS, dds_defaults

    # Every entry holds exactly the knobs the pipeline reads, the noisy ones with a noise-aware prior variance.
    for key, knobs in DDS_DEFAULTS.items():
        assert set(knobs) == {"clip", "cg_iters", "eta"} | ({"prior_variance"} if key.endswith("-noisy") else set())
    assert dds_defaults("ct-sparse", noisy=False) == DDS_DEFAULTS.get("ct-sparse", DDS_DEFAULTS["generic"])
    assert dds_defaults("inpaint", noisy=True) == DDS_DEFAULTS.get("inpaint-noisy", DDS_DEFAULTS["generic-noisy"])
    assert dds_defaults(None, noisy=False) == DDS_DEFAULTS["generic"]
    got = dds_defaults("mri", noisy=True)
    got["cg_iters"] = -1  # a copy: the table itself is not changed
    assert dds_defaults("mri", noisy=True)["cg_iters"] >= 0

    pipe = _tiny_pipeline()
    op = _ct()
    y = op.A(torch.rand(1, 1, 8, 8))
    pipe(op, y, num_inference_steps=2, noise_std=0.0, operator_range=(0, 1))
    want = dds_defaults("ct-sparse", noisy=False)
    assert pipe.scheduler.dc_mode == "noiseless" and pipe.scheduler.cg_iters == want["cg_iters"]
    assert pipe.scheduler.clip_denoised == want["clip"]
    pipe(op, y, num_inference_steps=2, noise_std=0.0, operator_range=(0, 1), cg_iters=3, clip=not want["clip"])
    assert pipe.scheduler.cg_iters == 3 and pipe.scheduler.clip_denoised == (not want["clip"])
    # task= selects the row of the table, whatever the operator (noisy data: the prior variance too).
    y_noisy = add_noise(y, 0.05, torch.Generator().manual_seed(1))
    for task in TASKS:
        pipe(op, y_noisy, num_inference_steps=2, noise_std=0.05, operator_range=(0, 1), task=task)
        want = dds_defaults(task, noisy=True)
        assert (pipe.scheduler.cg_iters, pipe.scheduler.prior_variance) == (want["cg_iters"], want["prior_variance"])


@pytest.mark.parametrize("task", ["blur", "ct"])
def test_exact_gaussian_noise_aware_mean_is_close_to_the_posterior_mean(task):
    """Fast version of the README "dds-exact" table (16×16 instead of 32×32, 200 samples, 20 steps, σ = 0.05)."""
    problem = gaussian_problem(task, 0.05, size=16)
    aware = dds_sample_mean(problem, "noise-aware", 20, samples=200)
    const = dds_sample_mean(problem, "constant", 20, samples=200)
    # Measured: 0.076 (blur) / 0.056 (CT) with a Monte-Carlo standard error of 0.02; constant γ: 0.34 / 0.21. The
    # target of the full table is 0.10; the prior mean (0) has error 1.
    assert aware["error"] < 0.10
    assert const["error"] > 2 * aware["error"]
    assert aware["mc_se"] < 0.04  # the error is the sampler's, not Monte-Carlo noise
