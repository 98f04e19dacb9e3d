"""What the three LML schedulers share: config validation, the per-run LM state and the freeze gate.

Each LML scheduler is a thin subclass of its diffusers parent. It reuses the parent's update unchanged and applies
the pure function :func:`lml_sampler.math.lm_correct` to the one vector the method corrects (DDIM: the direction ε;
DPM-Solver: the solver increment; flow matching: the velocity).
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from ..math.lm import LM_FORMULAS, check_lm_params, lm_correct

LM_CONFIG_DEFAULTS: dict[str, object] = {
    "lamb": 1.0,
    "kappa": 0.0,
    "lm": True,
    "freeze": 0.0,
    "lm_formula": "stable",
}

LM_CONFIG_DOC = """
        lamb (`float`, defaults to 1.0):
            The LM damping λ > 0 of H = λI + u uᵀ. It acts only through γ = κ‖v‖²/λ, so it is not transferable across
            models, resolutions or step counts (lml.md §7.3).
        kappa (`float`, defaults to 0.0):
            The EMA weight κ ∈ [0, 1] of the previous vector in u = κ·p + (1 − κ)·v. At κ = 0 (the released default)
            the correction is the identity in exact arithmetic, and the stable formula returns the parent's output
            bit for bit.
        lm (`bool`, defaults to `True`):
            Apply the correction. `False` gives exactly the parent scheduler.
        freeze (`float`, defaults to 0.0):
            Fraction of the noisiest steps left uncorrected: step i of the N steps set by `set_timesteps` is corrected
            only if i ≥ freeze·N.
        lm_formula (`"stable"` or `"official"`, defaults to `"stable"`):
            `"stable"`: the operator evaluated in float64 without cancellation. `"official"`: the released float32
            expression, rounding noise included (lml.md §5), for reproduction studies.
"""


def extend_init_signature(parent_init: Callable) -> Callable:
    """Give a subclass ``__init__(self, *args, <lm kwargs>, **kwargs)`` the parent's full signature plus the LM kwargs.

    diffusers' ``register_to_config`` and ``from_config`` read ``inspect.signature(cls.__init__)`` to know which config
    keys a class takes, so the subclass must *declare* every parent argument. Setting ``__signature__`` declares them
    without copying the parent's argument list, which churns between diffusers releases.
    """

    def decorate(init: Callable) -> Callable:
        parent = inspect.signature(parent_init)
        params = [p for p in parent.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        params += [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
            for name, default in LM_CONFIG_DEFAULTS.items()
        ]
        init.__signature__ = parent.replace(parameters=params)
        return init

    return decorate


def same_signature_as(parent_method: Callable) -> Callable:
    """Give an overriding ``(*args, **kwargs)`` method the parent method's signature and docstring.

    Pipelines inspect ``scheduler.set_timesteps`` (for ``timesteps=`` / ``sigmas=``) and ``scheduler.step`` (for
    ``eta=`` / ``generator=``) before calling them, so an override must present the parent's parameters.
    """

    def decorate(method: Callable) -> Callable:
        method.__signature__ = inspect.signature(parent_method)
        method.__doc__ = method.__doc__ or parent_method.__doc__
        return method

    return decorate


def split_lm_kwargs(kwargs: dict) -> dict:
    """Remove the LM config kwargs from ``kwargs`` (in place) before it goes to the parent's ``__init__``.

    Their values live in ``self.config``, registered by ``register_to_config`` from the extended signature.
    """
    return {name: kwargs.pop(name) for name in LM_CONFIG_DEFAULTS if name in kwargs}


class LMStateMixin:
    """Per-run LM state (the previous pre-correction vector) and the gate that decides whether a step is corrected."""

    _lm_prev: torch.Tensor | None = None

    def _init_lm(self) -> None:
        check_lm_params(self.config.lamb, self.config.kappa, self.config.lm_formula)
        freeze = self.config.freeze
        if not isinstance(freeze, (int, float)) or not 0.0 <= freeze <= 1.0:
            raise ValueError(f"freeze must be a fraction in [0, 1] of the noisiest steps left uncorrected, got {freeze!r}")
        if not isinstance(self.config.lm, bool):
            raise TypeError(f"lm must be a bool, got {self.config.lm!r}")
        self._lm_prev = None

    def _reset_lm_state(self) -> None:
        self._lm_prev = None

    @property
    def lm_engaged(self) -> bool:
        """Whether the correction can change anything: `lm` is on and the operator is not the exact identity.

        The stable formula at κ = 0 is the identity, so those runs skip all LM work and equal the parent bit for bit.
        """
        return self.config.lm and (self.config.kappa > 0 or self.config.lm_formula == "official")

    def _is_frozen(self, step_index: int) -> bool:
        n = len(self.timesteps)
        return step_index < self.config.freeze * n

    def _lm_correct(self, v: torch.Tensor, step_index: int) -> torch.Tensor | None:
        """Return LM(v; prev), or ``None`` when this step is left unchanged; remember v as prev.

        The stable result is float64 (callers round once, after combining it with the parent's output); the official
        one is in ``v.dtype``, as released. The previous vector is the *pre-correction* one, stored at every step
        (frozen ones included), as in the released code.
        """
        prev, self._lm_prev = self._lm_prev, v
        if self._is_frozen(step_index) or (prev is None and self.config.lm_formula == "stable"):
            return None
        if self.config.lm_formula == "stable":
            v, prev = v.double(), prev.double()
        return lm_correct(v, prev, lamb=self.config.lamb, kappa=self.config.kappa, formula=self.config.lm_formula)


__all__ = ["LM_CONFIG_DEFAULTS", "LM_CONFIG_DOC", "LM_FORMULAS", "LMStateMixin", "extend_init_signature", "same_signature_as", "split_lm_kwargs"]
