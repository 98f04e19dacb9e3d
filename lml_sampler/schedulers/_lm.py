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
from ..math.lowrank import gamma_to_lamb, lm_direction

LM_CONFIG_DEFAULTS: dict[str, object] = {
    "lamb": 1.0,
    "kappa": 0.0,
    "lm": True,
    "freeze": 0.0,
    "lm_formula": "stable",
    "lm_rank": 1,
    "lm_gamma": None,
}

LM_CONFIG_DOC = """
        lamb (`float`, defaults to 1.0):
            The LM damping λ > 0 of H = λI + u uᵀ. It acts only through γ = κ‖v‖²/λ, so it is not transferable across
            models, resolutions or step counts (docs/lml.md §4).
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
            expression, rounding noise included (docs/lml.md §2, §8), for reproduction studies.
        lm_rank (`int`, defaults to 1):
            Number k of previous vectors in H = λI + Σ_j u_j u_jᵀ, u_j = κ·p_j + (1 − κ)·v (Woodbury, stable form of
            `lml_sampler.math.lowrank.lm_direction`). 1 is the released operator. Costs O(k²·d) per step, no NFE.
        lm_gamma (`float`, *optional*):
            Scale-free strength γ = κ‖v‖²/λ. When set, λ is chosen per sample and step as κ‖v‖²/γ (`lamb` is
            ignored), so one γ transfers across models, resolutions, guidance scales and step counts. Needs κ > 0.
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

    _lm_history: list[torch.Tensor] = []

    def _init_lm(self) -> None:
        config = self.config
        check_lm_params(config.lamb, config.kappa, config.lm_formula)
        if not isinstance(config.lm_rank, int) or isinstance(config.lm_rank, bool) or config.lm_rank < 1:
            raise ValueError(f"lm_rank must be an int >= 1 (the number of previous vectors), got {config.lm_rank!r}")
        if config.lm_gamma is not None:
            gamma_to_lamb(torch.ones(1, 1), config.kappa or float("nan"), config.lm_gamma)  # validates γ and κ
        if config.lm_formula == "official" and (config.lm_rank != 1 or config.lm_gamma is not None):
            raise ValueError("lm_formula='official' is the released rank-1 (λ, κ) operator: use lm_rank=1, lm_gamma=None")
        freeze = self.config.freeze
        if not isinstance(freeze, (int, float)) or not 0.0 <= freeze <= 1.0:
            raise ValueError(f"freeze must be a fraction in [0, 1] of the noisiest steps left uncorrected, got {freeze!r}")
        if not isinstance(self.config.lm, bool):
            raise TypeError(f"lm must be a bool, got {self.config.lm!r}")
        self._lm_history = []

    def _reset_lm_state(self) -> None:
        self._lm_history = []

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
        config = self.config
        history, self._lm_history = self._lm_history, [v] + self._lm_history[: config.lm_rank - 1]
        if self._is_frozen(step_index) or (not history and config.lm_formula == "stable"):
            return None
        if config.lm_formula == "official":
            return lm_correct(v, history[0] if history else None, lamb=config.lamb, kappa=config.kappa, formula="official")
        if config.lm_rank == 1 and config.lm_gamma is None:
            return lm_correct(v.double(), history[0].double(), lamb=config.lamb, kappa=config.kappa)
        lamb = config.lamb if config.lm_gamma is None else gamma_to_lamb(v, config.kappa, config.lm_gamma)
        return lm_direction(v, history, lamb, config.kappa)


__all__ = ["LM_CONFIG_DEFAULTS", "LM_CONFIG_DOC", "LM_FORMULAS", "LMStateMixin", "extend_init_signature", "same_signature_as", "split_lm_kwargs"]
