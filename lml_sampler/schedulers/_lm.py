"""What the three LML schedulers share: config validation, the per-run LM state and the freeze gate.

Each LML scheduler is a thin subclass of its diffusers parent. It reuses the parent's update unchanged and applies
the pure function :func:`lml_sampler.math.lm_correct` to the one vector the method corrects (DDIM: the direction ε;
DPM-Solver: the solver increment; flow matching: the velocity).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from ._family import check_same_family
from ..math.lm import LM_FORMULAS, check_lm_params, lm_correct
from ..math.lowrank import gamma_to_lamb, lm_direction
from ..math.reductions import per_sample
from ..validation import check_float, check_fraction, check_int, check_num_inference_steps

LM_CONFIG_DEFAULTS: dict[str, object] = {
    "lamb": 1.0,
    "kappa": 0.0,
    "lm": True,
    "freeze": 0.0,
    "lm_formula": "stable",
    "lm_rank": 1,
    "lm_gamma": None,
}

#: The opt-in ``lm_gamma="auto"`` rule, (largest step count, γ) in order: γ = 0.5 up to 7 steps, 0.05 from 8 on. These
#: are the γ that, on DPM-Solver++ 2M's default steps, helped every model of the VP study at NFE 5 and at NFE 10 and
#: 20 (chosen from the grid all four models ran, each step count taking its nearest measured NFE), and that a rule
#: fitted without a model never hurt on it (README "Does LML help?", docs/lml.md §9).
AUTO_GAMMA: tuple[tuple[float, float], ...] = ((7, 0.5), (float("inf"), 0.05))


def auto_lm_gamma(num_steps: int) -> float:
    """γ of the ``lm_gamma="auto"`` rule for a run of ``num_steps`` steps (:data:`AUTO_GAMMA`)."""
    return next(g for last, g in AUTO_GAMMA if num_steps <= last)


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
        lm_gamma (`float` or `"auto"`, *optional*):
            Scale-free strength γ = κ‖v‖²/λ. When set, λ is chosen per sample and step as κ‖v‖²/γ (`lamb` is
            ignored), so one γ carries across models, resolutions and guidance scales at a fixed step count (the best
            γ still moves with the step count and the model). Needs κ > 0. `"auto"`: γ by step count, 0.5 up to 7
            steps and 0.05 from 8 (`auto_lm_gamma`), the rule that helped every model of the VP study on
            DPM-Solver++ 2M's default steps; on other discretisations and solvers tune γ instead (docs/lml.md §9).

    Recommended settings (measured on the exact-score benchmarks, README "Does LML help?" and "Recommended
    settings"):
        1. Fix the time discretisation of the parent first: `use_karras_sigmas=True`, `use_exponential_sigmas=True`
           or, for DPM-Solver, `use_lu_lambdas=True`. At 5-10 steps that lowers the error 4-130× against the
           diffusers default steps, far more than LML does; the best LML on default steps stays 1.05-85× worse
           than the best stock solver on a good discretisation.
        2. Then, if at all, `kappa=1e-3, lm_gamma=γ` on top of that discretisation, with γ tuned per model and step
           count in 0.02-0.5 (small γ falls back to the parent). The best such scheduler measured 0.66-1.03× the
           best stock solver's error at 5 / 10 steps (stationary Gaussian 0.87× / 0.66×; Gaussian mixture 0.90× /
           0.97×; empirical digits 0.79× / 0.86×; trained digits DDPM 0.91× / 1.03×), short of the 0.8× (0.9× on
           the trained model) the project holds LML to.
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


def requested_steps(parent_set_timesteps: Callable, scheduler, args: tuple, kwargs: dict) -> int | None:
    """The ``num_inference_steps`` a ``set_timesteps(*args, **kwargs)`` call asks the parent for (None when the
    call passes explicit ``timesteps=``/``sigmas=`` instead)."""
    bound = inspect.signature(parent_set_timesteps).bind(scheduler, *args, **kwargs)
    return bound.arguments.get("num_inference_steps")


def split_lm_kwargs(kwargs: dict) -> dict:
    """Remove the LM config kwargs from ``kwargs`` (in place) before it goes to the parent's ``__init__``.

    Their values live in ``self.config``, registered by ``register_to_config`` from the extended signature.
    """
    return {name: kwargs.pop(name) for name in LM_CONFIG_DEFAULTS if name in kwargs}


@dataclass(frozen=True)
class LMSettings:
    """The validated LM configuration a scheduler samples with: exactly the values its config saves.

    diffusers configs are meant to be read-only, but ``scheduler.config.kappa = x`` silently sets an attribute that
    ``save_pretrained`` ignores. :meth:`from_config` reads the saved entries and refuses such a write, so sampling and
    saving can never disagree.
    """

    lamb: float
    kappa: float
    lm: bool
    freeze: float
    lm_formula: str
    lm_rank: int
    lm_gamma: float | str | None

    @classmethod
    def from_config(cls, config) -> "LMSettings":
        values = {}
        for key in LM_CONFIG_DEFAULTS:
            saved = config[key]
            shown = getattr(config, key, saved)
            if shown is not saved and shown != saved:
                raise ValueError(
                    f"scheduler.config.{key} was set to {shown!r} after the scheduler was built with {key}={saved!r} "
                    f"(which is what save_pretrained writes); configs are read-only: build a new scheduler with "
                    f"SchedulerClass.from_config(scheduler.config, {key}={shown!r})"
                )
            values[key] = saved
        if values["lm_formula"] not in LM_FORMULAS:
            raise ValueError(f"lm_formula must be one of {LM_FORMULAS}, got {values['lm_formula']!r}")
        check_lm_params(values["lamb"], values["kappa"], values["lm_formula"])
        check_int(values["lm_rank"], "lm_rank", minimum=1)
        check_fraction(values["freeze"], "freeze")
        if not isinstance(values["lm"], bool):
            raise TypeError(f"lm must be a bool, got {values['lm']!r}")
        if values["lm_gamma"] is not None:
            if isinstance(values["lm_gamma"], str):
                if values["lm_gamma"] != "auto":
                    raise ValueError(f"lm_gamma must be a number > 0 or 'auto', got {values['lm_gamma']!r}")
            else:
                check_float(values["lm_gamma"], "lm_gamma", positive=True)
            if values["kappa"] == 0:
                raise ValueError("lm_gamma needs kappa > 0, but kappa is 0 (at κ = 0 the correction is the identity "
                                 "and γ = κ‖v‖²/λ cannot be set): pass e.g. kappa=1e-3 with lm_gamma")
        if values["lm_formula"] == "official" and (values["lm_rank"] != 1 or values["lm_gamma"] is not None):
            raise ValueError("lm_formula='official' is the released rank-1 (λ, κ) operator: use lm_rank=1, "
                             "lm_gamma=None")
        return cls(**values)


class LMStateMixin:
    """Per-run LM state (the previous pre-correction vector), the validated settings, and the gate that decides
    whether a step is corrected. The settings are re-read at every ``set_timesteps``."""

    _lm_history: list[torch.Tensor] = []

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """The parent's ``from_config``, refusing a config of the other model family (flow matching vs VP), which
        would otherwise sample garbage silently (``lml_sampler.schedulers._family``)."""
        if config is not None:
            source = config.config if hasattr(config, "config") and not isinstance(config, dict) else config
            check_same_family(cls, dict(source), kwargs)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def _init_lm(self) -> None:
        self._lm = LMSettings.from_config(self.config)
        self._lm_history = []

    def _reset_lm_state(self, num_inference_steps=None) -> None:
        """Called by ``set_timesteps``: validate the step count and the settings, forget the previous run."""
        if num_inference_steps is not None:
            check_num_inference_steps(num_inference_steps, self._max_inference_steps())
        self._lm = LMSettings.from_config(self.config)
        self._lm_history = []

    def _max_inference_steps(self) -> int | None:
        """The largest step count the parent can honour (None: any)."""
        return self.config.num_train_timesteps

    @property
    def lm_engaged(self) -> bool:
        """Whether the correction can change anything: `lm` is on and the operator is not the exact identity.

        The stable formula at κ = 0 is the identity, so those runs skip all LM work and equal the parent bit for bit.
        """
        lm = self._lm
        return lm.lm and (lm.kappa > 0 or lm.lm_formula == "official")

    @property
    def resolved_lm_gamma(self) -> float | None:
        """The γ this run uses: ``lm_gamma``, or for ``"auto"`` the rule's value at the steps set by ``set_timesteps``."""
        gamma = self._lm.lm_gamma
        return auto_lm_gamma(len(self.timesteps)) if gamma == "auto" else gamma

    def _is_frozen(self, step_index: int, timestep=None) -> bool:
        """Stable rule: step i of the N set by ``set_timesteps`` is corrected when i >= freeze·N (docs/lml.md §8)."""
        return step_index < self._lm.freeze * len(self.timesteps)

    def _lm_correct(self, v: torch.Tensor, step_index: int, timestep=None) -> torch.Tensor | None:
        """Return LM(v; prev), or ``None`` when this step is left unchanged; remember v as prev.

        The stable result is float64 (callers round once, after combining it with the parent's output); the official
        one is in ``v.dtype``, as released. The previous vector is the *pre-correction* one, stored at every step
        (frozen ones included), as in the released code.
        """
        lm = self._lm
        history, self._lm_history = self._lm_history, [v] + self._lm_history[: lm.lm_rank - 1]
        if self._is_frozen(step_index, timestep) or (not history and lm.lm_formula == "stable"):
            return None
        if lm.lm_formula == "official":
            return lm_correct(v, history[0] if history else None, lamb=lm.lamb, kappa=lm.kappa, formula="official")
        if lm.lm_rank == 1 and lm.lm_gamma is None:
            return lm_correct(v.double(), history[0].double(), lamb=lm.lamb, kappa=lm.kappa)
        if lm.lm_gamma is None:
            return lm_direction(v, history, lm.lamb, lm.kappa)
        # λ = κ‖v‖²/γ per sample. A non-finite sample has no λ: it passes through unchanged (and stays non-finite),
        # so it spoils only itself, as in plain LML, instead of the whole batch.
        lamb = gamma_to_lamb(v, lm.kappa, self.resolved_lm_gamma)
        bad = ~torch.isfinite(lamb)
        if not bool(bad.any()):
            return lm_direction(v, history, lamb, lm.kappa)
        out = lm_direction(torch.where(per_sample(bad, v), 0.0, v), [torch.where(per_sample(bad, p), 0.0, p)
                                                                       for p in history],
                           torch.where(bad, 1.0, lamb), lm.kappa)
        return torch.where(per_sample(bad, v), v.double(), out)


__all__ = ["AUTO_GAMMA", "auto_lm_gamma", "LM_CONFIG_DEFAULTS", "LM_CONFIG_DOC", "LM_FORMULAS", "LMSettings", "LMStateMixin", "extend_init_signature", "same_signature_as", "split_lm_kwargs"]
