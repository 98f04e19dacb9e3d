"""Deterministic fixtures of diffusers' own scheduler tests (tests/schedulers/test_schedulers.py), rewritten here
because diffusers does not ship its tests: the same arange-based sample and the toy model ε(x, t) = x·t/(t+1)."""

import torch


def dummy_sample_deter(batch_size: int = 4, num_channels: int = 3, height: int = 8, width: int = 8) -> torch.Tensor:
    num_elems = batch_size * num_channels * height * width
    sample = torch.arange(num_elems).flip(-1)
    sample = sample.reshape(num_channels, height, width, batch_size)
    sample = sample / num_elems
    return sample.permute(3, 0, 1, 2)


def dummy_model(sample: torch.Tensor, t) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        t = t.reshape(-1, *(1,) * (sample.ndim - 1)).to(sample.device, dtype=sample.dtype)
    return sample * t / (t + 1)


def smooth_model(sample: torch.Tensor, t) -> torch.Tensor:
    """A nonlinear stand-in for a denoiser whose successive outputs are correlated but not parallel, so that a
    non-identity LM correction visibly changes the trajectory."""
    return 0.8 * sample + 0.2 * torch.tanh(3 * sample.flip(-1))


def full_loop(scheduler, model=dummy_model, sample=None, steps: int = 10, seed: int = 0, **step_kwargs):
    """Run `set_timesteps` and a whole sampling loop the way pipelines do; return the final sample."""
    scheduler.set_timesteps(steps)
    sample = dummy_sample_deter() if sample is None else sample
    generator = torch.Generator().manual_seed(seed)
    for t in scheduler.timesteps:
        sample = scheduler.step(model(sample, t), t, sample, generator=generator, **step_kwargs).prev_sample
    return sample
