"""What the LML schedulers refuse, and how they behave at the edges: step counts, LM settings written after
construction, non-finite samples in lm_gamma mode, and the official mode's release-faithful rules."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMPipeline, UNet2DModel

from lml_sampler import LMLDDIMScheduler, LMLDPMSolverMultistepScheduler, LMLFlowMatchEulerDiscreteScheduler
from lml_sampler.math.lm import lm_correct

LML_CLASSES = (LMLDDIMScheduler, LMLDPMSolverMultistepScheduler, LMLFlowMatchEulerDiscreteScheduler)


@pytest.mark.parametrize("cls", LML_CLASSES)
@pytest.mark.parametrize("bad, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)])
def test_set_timesteps_refuses_bad_step_counts(cls, bad, error):
    with pytest.raises(error, match="num_inference_steps"):
        cls(kappa=1e-3).set_timesteps(bad)


@pytest.mark.parametrize("cls", (LMLDDIMScheduler, LMLDPMSolverMultistepScheduler))
def test_discrete_schedulers_refuse_more_steps_than_training_steps(cls):
    sched = cls(num_train_timesteps=100, kappa=1e-3)
    sched.set_timesteps(100)  # the most the schedule can visit
    with pytest.raises(ValueError, match="num_inference_steps=101 exceeds the 100 training steps"):
        sched.set_timesteps(101)


def test_flow_matching_takes_any_positive_step_count():
    sched = LMLFlowMatchEulerDiscreteScheduler(kappa=1e-3)
    sched.set_timesteps(1500)  # continuous sigmas: more steps than "training steps" is a finer grid
    assert len(sched.timesteps) == 1500


def test_a_pipeline_with_zero_steps_is_refused_instead_of_returning_noise():
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), norm_num_groups=4,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, layers_per_block=1)
    pipe = DDPMPipeline(unet=unet, scheduler=LMLDPMSolverMultistepScheduler(kappa=1e-3))
    with pytest.raises(ValueError, match="num_inference_steps must be >= 1"):
        pipe(num_inference_steps=0, output_type="np")


def test_lm_gamma_with_kappa_zero_says_kappa_is_zero():
    with pytest.raises(ValueError, match="kappa is 0"):
        LMLDPMSolverMultistepScheduler(lm_gamma=0.5)


@pytest.mark.parametrize("cls", LML_CLASSES)
def test_writing_the_config_after_construction_is_refused_before_sampling(cls):
    sched = cls(kappa=1e-3)
    sched.config.kappa = 0.5  # diffusers lets this through as an attribute that save_pretrained ignores
    with pytest.raises(ValueError, match=r"from_config\(scheduler.config, kappa=0.5\)"):
        sched.set_timesteps(10)
    rebuilt = cls.from_config(cls(kappa=1e-3).config, kappa=0.5)  # the supported way
    rebuilt.set_timesteps(10)
    assert rebuilt.config["kappa"] == 0.5


def _dpm_run(x_T: torch.Tensor, **lm) -> torch.Tensor:
    sched = LMLDPMSolverMultistepScheduler(kappa=1e-3, **lm)
    sched.set_timesteps(6)
    x = x_T.clone()
    for t in sched.timesteps:
        eps = 0.7 * x + 0.1 * torch.sin(3 * x)  # a nonlinear stand-in for a model, elementwise: samples independent
        x = sched.step(eps, t, x).prev_sample
    return x


@pytest.mark.parametrize("lm", [dict(lm_gamma=0.5), dict(lm_gamma=0.5, lm_rank=2), dict(lamb=1.0)])
def test_a_non_finite_sample_spoils_only_itself(lm):
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    alone = _dpm_run(x_T[[0, 2]], **lm)
    x_T[1, 0, 0, 0] = float("nan")
    batch = _dpm_run(x_T, **lm)
    assert torch.equal(batch[[0, 2]], alone)  # the finite samples: the same bits as without the bad one
    assert not torch.isfinite(batch[1]).all()


def test_official_flow_matching_corrects_in_float32_like_the_release():
    torch.manual_seed(0)
    v1, v2 = torch.randn(2, 1, 16, 8), torch.randn(2, 1, 16, 8)
    x = torch.randn(2, 1, 16, 8)
    sched = LMLFlowMatchEulerDiscreteScheduler(lm_formula="official", lamb=1e-2, kappa=0.0)
    sched.set_timesteps(4)
    x16 = x.to(torch.bfloat16)
    out = [x16]
    for v, t in zip((v1, v2), sched.timesteps[:2]):
        out.append(sched.step(v.to(torch.bfloat16), t, out[-1]).prev_sample)
    assert torch.isfinite(out[-1].float()).all()  # the in-dtype bf16 expression returns NaN here
    # the release: upcast the bf16 velocity to float32, correct, Euler step in float32, cast back
    ref = LMLFlowMatchEulerDiscreteScheduler(lm=False)
    ref.set_timesteps(4)
    prev = None
    y = x16
    for v, t in zip((v1, v2), ref.timesteps[:2]):
        vf = v.to(torch.bfloat16).float()
        corrected = lm_correct(vf, prev, lamb=1e-2, kappa=0.0, formula="official")
        prev = vf
        y = ref.step(corrected, t, y).prev_sample.to(torch.bfloat16)
    assert torch.equal(out[-1], y)


def test_official_ddim_freeze_follows_the_release_timestep_rule():
    """Release: correct while timestep < T·(1 − freeze). With 10 leading steps (900, 800, …, 0) and freeze 0.25,
    that is t < 750: 8 steps. The stable rule corrects steps i >= 0.25·10, i.e. 7 steps (and not the first,
    which has no previous vector in either mode)."""
    counted = {}
    for formula in ("official", "stable"):
        sched = LMLDDIMScheduler(lm_formula=formula, kappa=0.5, lamb=1.0, freeze=0.25)
        sched.set_timesteps(10)
        corrected = []
        original = sched._lm_correct

        def spy(v, i, t=None, original=original, corrected=corrected):
            out = original(v, i, t)
            corrected.append(out is not None)
            return out

        sched._lm_correct = spy
        x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(1))
        for t in sched.timesteps:
            x = sched.step(0.5 * x, t, x).prev_sample
        counted[formula] = corrected
    assert counted["official"] == [False, False] + [True] * 8  # t = 900, 800 frozen (official corrects the first
    # unfrozen step even without a previous vector: u = v then)
    assert counted["stable"] == [False] * 3 + [True] * 7


@pytest.mark.parametrize("cls", [LMLDDIMScheduler, LMLDPMSolverMultistepScheduler, LMLFlowMatchEulerDiscreteScheduler])
def test_lm_gamma_auto_is_the_rule_at_the_run_step_count(cls, tmp_path):
    """``lm_gamma="auto"`` samples exactly as the rule's γ given explicitly, per run (a second set_timesteps with
    another step count changes it), and saves and loads as "auto"."""
    from lml_sampler.schedulers._lm import auto_lm_gamma
    from scheduler_fixtures import full_loop, smooth_model

    auto = cls(kappa=1e-3, lm_gamma="auto")
    for steps in (5, 12):
        gamma = auto_lm_gamma(steps)
        assert torch.equal(full_loop(auto, smooth_model, steps=steps),
                           full_loop(cls(kappa=1e-3, lm_gamma=gamma), smooth_model, steps=steps))
        assert auto.resolved_lm_gamma == gamma
    assert auto_lm_gamma(5) != auto_lm_gamma(12)  # the test above compares two different γ
    auto.save_pretrained(tmp_path)
    assert cls.from_pretrained(tmp_path).config.lm_gamma == "auto"


def test_lm_gamma_auto_rule_and_bad_strings():
    from lml_sampler.schedulers._lm import auto_lm_gamma
    from lml_sampler.schedulers.registry import make_scheduler

    assert [auto_lm_gamma(n) for n in (1, 5, 7, 8, 10, 20, 1000)] == [0.5, 0.5, 0.5, 0.05, 0.05, 0.05, 0.05]
    with pytest.raises(ValueError, match="lm_gamma must be a number > 0 or 'auto'"):
        LMLDPMSolverMultistepScheduler(kappa=1e-3, lm_gamma="Auto")
    with pytest.raises(ValueError, match="kappa is 0"):
        LMLDPMSolverMultistepScheduler(lm_gamma="auto")
    s = make_scheduler("lml-dpm++2m@kappa=1e-3:lm_gamma=auto", LMLDPMSolverMultistepScheduler().config)
    assert s.config.lm_gamma == "auto"
