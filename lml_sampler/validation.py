"""Validators for the kinds of input that enter the package from users, one per kind, reused wherever it enters.

Each raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, bad value) with a message that names
the argument and says how to fix it, and returns the value in canonical form.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["check_num_inference_steps", "check_int", "check_float", "check_fraction", "check_shape", "check_tensor",
           "check_mask", "check_kernel", "check_coil_sensitivities"]


def check_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (bools refused) in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_float(value, name: str, minimum: float | None = None, positive: bool = False,
                maximum: float | None = None) -> float:
    """A finite real number, optionally ``> 0`` (``positive``) or within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return value


def check_fraction(value, name: str) -> float:
    """A number in ``[0, 1]``."""
    return check_float(value, name, minimum=0.0, maximum=1.0)


def check_num_inference_steps(value, num_train_timesteps: int | None = None) -> int:
    """The number of sampling steps: an int >= 1 and, where the schedule is discrete, at most the number of
    training steps (a diffusion model has no noise levels between its training steps to visit)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"num_inference_steps must be an int >= 1, got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < 1:
        raise ValueError(f"num_inference_steps must be >= 1 (one model evaluation per step), got {value}")
    if num_train_timesteps is not None and value > num_train_timesteps:
        raise ValueError(f"num_inference_steps={value} exceeds the {num_train_timesteps} training steps of this "
                         f"scheduler; use at most {num_train_timesteps}")
    return value


def check_shape(value, name: str, rank: int) -> tuple[int, ...]:
    """A shape: a sequence of ``rank`` ints >= 1, e.g. ``image_shape=(C, H, W)``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be a tuple of {rank} ints, got {value!r}")
    if len(value) != rank:
        raise ValueError(f"{name} must have {rank} entries, got {tuple(value)!r}")
    return tuple(check_int(v, f"{name}[{i}]", minimum=1) for i, v in enumerate(value))


def check_tensor(value, name: str, nonzero: bool = False) -> torch.Tensor:
    """A finite tensor (anything ``torch.as_tensor`` takes), optionally not all zero: angles, coil maps."""
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a tensor or array of numbers, got {type(value).__name__}") from None
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite: it holds {int((~torch.isfinite(t)).sum())} NaN/inf entries")
    if nonzero and not bool((t != 0).any()):
        raise ValueError(f"{name} is all zero: the operator would measure nothing")
    return t


def check_mask(value, name: str = "mask", soft: bool = False) -> torch.Tensor:
    """A 0/1 mask (1 = measured) as float32: finite, values in {0, 1} (``soft``: in [0, 1]), not all zero.

    Booleans are taken as 0/1. A soft mask is a per-entry transmission weight; it is only accepted where the
    operator documents what a fractional value means (pixel inpainting); k-space sampling masks are binary.
    """
    t = check_tensor(value, name, nonzero=True)
    if t.is_complex():
        raise TypeError(f"{name} must be real (0 = unobserved, 1 = observed), got {t.dtype}")
    t = t.to(torch.float32)
    if soft:
        if not bool(((t >= 0) & (t <= 1)).all()):
            raise ValueError(f"{name} values must lie in [0, 1], got min {float(t.min())}, max {float(t.max())}")
    elif not bool(((t == 0) | (t == 1)).all()):
        bad = t[(t != 0) & (t != 1)]
        raise ValueError(f"{name} must hold only 0 and 1 (1 = sampled), got e.g. {float(bad[0])}; threshold it "
                         f"({name} > 0.5) first")
    return t


def check_kernel(value, name: str = "kernel") -> torch.Tensor:
    """A blur kernel as float64, normalised to sum 1: finite, non-negative, with a positive sum.

    A non-negative kernel of sum 1 keeps the image's mean and makes the convolution's norm exactly 1 (the largest
    Fourier magnitude is the zero frequency, the sum).
    """
    t = check_tensor(value, name)
    if t.is_complex():
        raise TypeError(f"{name} must be real, got {t.dtype}")
    t = t.to(torch.float64)
    if bool((t < 0).any()):
        raise ValueError(f"{name} must be non-negative (a point-spread function), got min {float(t.min())}")
    total = float(t.sum())
    if not total > 0:
        raise ValueError(f"{name} sums to 0: a blur kernel needs a positive sum")
    return t / total


#: Slack on the root-sum-of-squares bound of coil maps: complex64 maps normalised by their RSS are 1 within ~1e-7.
COIL_RSS_SLACK = 1e-4


def check_coil_sensitivities(value, name: str = "sensitivities") -> torch.Tensor:
    """Complex coil maps ``(..., C, H, W)``: finite, not all zero, and ``Σ_c |S_c|² <= 1`` at every pixel.

    The bound makes the SENSE operator's norm at most 1, the scale DDS's data-consistency weight γ is tuned at;
    maps of another scale (raw coil images) would silently change what γ means.
    """
    t = check_tensor(value, name, nonzero=True)
    if not t.is_complex():
        raise TypeError(f"{name} must be complex, got {t.dtype}")
    rss = t.abs().to(torch.float64).pow(2).sum(-3).sqrt().max()
    if rss > 1 + COIL_RSS_SLACK:
        raise ValueError(f"{name} must satisfy Σ_c |S_c|² <= 1 at every pixel (root-sum-of-squares up to "
                         f"{float(rss):.4g} here): divide by the root-sum-of-squares, "
                         f"S / S.abs().pow(2).sum({-3}, keepdim=True).sqrt(), or by its maximum")
    return t
