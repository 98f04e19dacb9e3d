"""Validators for the kinds of input that enter the package from users, one per kind, reused wherever it enters.

Each raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, bad value) with a message that names
the argument and says how to fix it, and returns the value in canonical form.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

__all__ = ["check_num_inference_steps", "check_int", "check_float", "check_fraction", "check_output_dir"]


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


def check_output_dir(path, name: str = "--out") -> Path:
    """A folder that exists or can be created, and that this process may write into: refused before any work is
    done (a job that computes for an hour and then fails to save is the error this prevents)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path, got {path!r} ({type(path).__name__})")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{name} {out} exists and is not a folder: pass a folder (it is created if missing)")
    existing = out
    while not existing.exists():  # the nearest existing ancestor must be a folder this process can write into
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{name} {out}: {existing} is a file, not a folder: choose another output folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {out}: {existing} is not writable: choose a folder you can write into")
    return out
