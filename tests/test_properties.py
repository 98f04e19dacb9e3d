"""Property-based checks of the public API (hypothesis): for random shapes (rank 3-5), dtypes, batch sizes and
configurations, every call of the three LML schedulers, DDSScheduler and the operators either raises a
ValueError/TypeError whose message names an argument, or returns a finite result of the right shape and dtype.

max_examples is bounded per property so that the whole file adds well under a minute to the suite on 2 cores."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lml_sampler import (DDSScheduler, LMLDDIMScheduler, LMLDPMSolverMultistepScheduler,
                         LMLFlowMatchEulerDiscreteScheduler)
from lml_sampler.operators import Blur, Inpainting, MultiCoilMRI, ParallelBeamCT, SingleCoilMRI

FAST = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: Names a refusal may cite: the arguments and config keys of the API under test.
ARGUMENTS = ("num_inference_steps", "lamb", "kappa", "lm_gamma", "lm_rank", "freeze", "lm_formula", "lm",
             "sample", "model_output", "mask", "kernel", "image_shape", "angles", "n_detectors", "det_spacing", "size",
             "sensitivities", "x", "y", "gamma", "cg_iters", "timestep", "eta")
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _names_an_argument(exc: Exception) -> bool:
    text = str(exc)
    return any(name in text for name in ARGUMENTS)


def _refused_clearly(call):
    """Run ``call``; a ValueError/TypeError must name an argument. Returns the result, or None when refused."""
    try:
        return call()
    except (ValueError, TypeError) as exc:
        assert _names_an_argument(exc), f"{type(exc).__name__} names no argument: {exc}"
        return None


shapes = st.integers(3, 5).flatmap(lambda rank: st.tuples(st.integers(1, 3), *[st.integers(1, 5)] * (rank - 1)))
lm_configs = st.fixed_dictionaries({
    "lamb": st.sampled_from([1.0, 1e-2, 10.0, 0.0, -1.0, float("nan")]),
    "kappa": st.sampled_from([0.0, 1e-3, 0.1, 0.9, 1.5, -0.1, float("inf")]),
    "freeze": st.sampled_from([0.0, 0.3, 1.0, 1.5, -0.1]),
    "lm_rank": st.sampled_from([1, 2, 3, 0, 1.5]),
    "lm_gamma": st.sampled_from([None, None, 0.3, 0.0, -1.0]),
    "lm_formula": st.sampled_from(["stable", "stable", "official", "other"]),
})


@FAST
@given(cls=st.sampled_from([LMLDDIMScheduler, LMLDPMSolverMultistepScheduler, LMLFlowMatchEulerDiscreteScheduler]),
       cfg=lm_configs, steps=st.integers(-1, 12), shape=shapes, dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**16))
def test_lml_schedulers_refuse_or_return_finite_samples(cls, cfg, steps, shape, dtype, seed):
    sched = _refused_clearly(lambda: cls(num_train_timesteps=100, **cfg))
    if sched is None or _refused_clearly(lambda: sched.set_timesteps(steps) or True) is None:
        return
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    for t in sched.timesteps:
        eps = (0.6 * x.double() + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
        out = _refused_clearly(lambda: sched.step(eps, t, x))
        if out is None:
            return
        x = out.prev_sample
        assert x.shape == shape and x.dtype == dtype
        assert torch.isfinite(x.float()).all()


def _operator(kind: str, data, C: int, H: int):
    """An operator built from possibly bad inputs (``None`` if the constructor refused them clearly)."""
    bad = data.draw(st.sampled_from([None, None, None, "zero", "nan", "two", "half", "negative"]), label="bad")

    def spoil(t):
        return {None: t, "zero": torch.zeros_like(t), "nan": t * float("nan"), "two": 2 * t, "half": 0.5 * t,
                "negative": -t}[bad]

    mask = (torch.rand(H, H, generator=torch.Generator().manual_seed(H)) > 0.5).float()
    mask[0, 0] = 1.0
    if kind == "inpainting":
        return _refused_clearly(lambda: Inpainting(spoil(mask), (C, H, H)))
    if kind == "blur":
        k = torch.rand(3, 3, generator=torch.Generator().manual_seed(C)) if H >= 3 else torch.ones(1, 1)
        return _refused_clearly(lambda: Blur(spoil(k), (C, H, H)))
    if kind == "ct":
        n_det = data.draw(st.sampled_from([None, 1, 4, 0, -2]), label="n_detectors")
        dt = data.draw(st.sampled_from([0.5, 1.0, 0.0, -1.0, float("nan")]), label="det_spacing")
        angles = spoil(torch.tensor([0.0, 45.0, 90.0])) if bad != "zero" else torch.zeros(1)
        return _refused_clearly(lambda: ParallelBeamCT(max(H, 2), angles, n_detectors=n_det, det_spacing=dt))
    if kind == "mri-single":
        return _refused_clearly(lambda: SingleCoilMRI(spoil(mask)))
    S = torch.randn(2, H, H, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    S = S / S.abs().pow(2).sum(0, keepdim=True).sqrt()
    return _refused_clearly(lambda: MultiCoilMRI(mask, spoil(S)))


KINDS = ("inpainting", "blur", "ct", "mri-single", "mri-multi")


@FAST
@given(kind=st.sampled_from(KINDS), data=st.data(), C=st.integers(1, 2), H=st.integers(1, 6), shape=shapes,
       dtype=st.sampled_from(DTYPES), match=st.booleans(), seed=st.integers(0, 2**16))
def test_operators_refuse_or_return_finite_results_of_their_shape(kind, data, C, H, shape, dtype, match, seed):
    op = _operator(kind, data, C, H)
    if op is None:
        return
    g = torch.Generator().manual_seed(seed)
    if match:  # the right shape, a random batch: the result must be right
        shape = (shape[0], *op.in_shape)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if op.dtype == "complex":
        x = torch.complex(x, torch.randn(shape, generator=g, dtype=torch.float64))
    x = x.to(dtype if op.dtype == "real" else {torch.float32: torch.complex64}.get(dtype, x.dtype))
    for method, out_shape in ((op.A, op.out_shape), (op.A_adjoint_A, op.in_shape)):
        y = _refused_clearly(lambda: method(x))
        if y is None:
            continue
        assert tuple(y.shape) == (x.shape[0], *out_shape) and y.dtype == x.dtype
        assert torch.isfinite(y).all()
        back = op.A_adjoint(op.A(x))
        assert back.shape == x.shape and torch.isfinite(back).all()


@FAST
@given(C=st.integers(1, 2), H=st.integers(2, 6), B=st.integers(1, 3), steps=st.integers(-1, 8),
       dtype=st.sampled_from(DTYPES), gamma=st.sampled_from([1.0, 0.1, 0.0, -1.0, float("nan")]),
       cg_iters=st.sampled_from([0, 1, 5, -1]), eta=st.sampled_from([0.0, 0.85, 1.0]), y_batch=st.integers(1, 3),
       noiseless=st.booleans(), seed=st.integers(0, 2**16))
def test_dds_refuses_or_returns_finite_samples(C, H, B, steps, dtype, gamma, cg_iters, eta, y_batch, noiseless, seed):
    g = torch.Generator().manual_seed(seed)
    op = Inpainting((torch.rand(H, H, generator=g) > 0.3).float().index_put_((torch.tensor([0]),) * 2,
                                                                             torch.tensor(1.0)), (C, H, H))
    sched = DDSScheduler(num_train_timesteps=100, clip_sample=False)
    if _refused_clearly(lambda: sched.set_timesteps(steps) or True) is None:
        return
    y = op.A(torch.randn(y_batch, C, H, H, generator=g, dtype=torch.float64).float())
    if _refused_clearly(lambda: sched.set_measurement(op, y, gamma=gamma, cg_iters=cg_iters,
                                                      noiseless=noiseless) or True) is None:
        return
    x = torch.randn(B, C, H, H, generator=g).to(dtype)
    for t in sched.timesteps:
        out = _refused_clearly(lambda: sched.step((0.5 * x.float()).to(dtype), t, x, eta=eta))
        if out is None:
            assert y_batch != B  # the only refusal left at this point: a batch mismatch, named "batch"
            return
        x = out.prev_sample
        assert x.shape == (B, C, H, H) and x.dtype == dtype and torch.isfinite(x.float()).all()
