"""Samplers by name, built with ``from_config`` from a model's own scheduler config.

| name | class | overrides |
|---|---|---|
| ``ddim`` | ``DDIMScheduler`` | ``timestep_spacing="trailing"`` (leading spacing never visits t=T−1 at low NFE) |
| ``dpm++2m`` / ``dpm++3m`` | ``DPMSolverMultistepScheduler`` | ``algorithm_type="dpmsolver++"``, ``solver_order=2/3`` |
| ``dpm`` | ``DPMSolverMultistepScheduler`` | ``algorithm_type="dpmsolver"`` (noise prediction), ``solver_order=3``, ``final_sigmas_type="sigma_min"`` — the official LML CIFAR-10 baseline |
| ``unipc`` | ``UniPCMultistepScheduler`` | — |
| ``euler`` | ``EulerDiscreteScheduler`` | — |
| ``flow-euler`` | ``FlowMatchEulerDiscreteScheduler`` | — (flow-matching models only) |
| ``lml-<base>`` | ``lml_sampler`` LML subclass of the base | the base's overrides + ``lamb``, ``kappa``, ``lm=True``, ``freeze``, ``lm_formula`` |
"""

from __future__ import annotations

from typing import Any

__all__ = ["SAMPLERS", "LML_SAMPLERS", "make_scheduler", "is_lml", "is_flow_sampler", "sampler_label",
           "parse_sampler_spec"]

# name -> (module, class, overrides). LML classes are resolved lazily from lml_sampler (written concurrently).
_BASE: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ddim": ("diffusers", "DDIMScheduler", {"timestep_spacing": "trailing"}),
    "dpm++2m": ("diffusers", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++3m": ("diffusers", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3}),
    # final_sigmas_type="sigma_min": diffusers refuses "zero" for the noise-prediction algorithm
    "dpm": ("diffusers", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "solver_order": 3,
                                                         "final_sigmas_type": "sigma_min"}),
    "unipc": ("diffusers", "UniPCMultistepScheduler", {}),
    "euler": ("diffusers", "EulerDiscreteScheduler", {}),
    "flow-euler": ("diffusers", "FlowMatchEulerDiscreteScheduler", {}),
}
_LML_CLASS = {
    "ddim": "LMLDDIMScheduler",
    "dpm++2m": "LMLDPMSolverMultistepScheduler",
    "dpm++3m": "LMLDPMSolverMultistepScheduler",
    "dpm": "LMLDPMSolverMultistepScheduler",
    "flow-euler": "LMLFlowMatchEulerDiscreteScheduler",
}
LML_SAMPLERS = tuple(f"lml-{b}" for b in _LML_CLASS)
SAMPLERS = tuple(_BASE) + LML_SAMPLERS
_LML_KEYS = ("lamb", "kappa", "freeze", "lm_formula")


def parse_sampler_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"lml-ddim@kappa=1e-3:lamb=0.5"`` -> ``("lml-ddim", {"kappa": 0.001, "lamb": 0.5})``; plain names pass.

    Per-sampler settings let one sweep compare several LML settings; they override the sweep-wide ones.
    """
    name, _, rest = spec.partition("@")
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    kwargs: dict[str, Any] = {}
    for item in filter(None, rest.split(":")):
        key, eq, value = item.partition("=")
        if not eq or key not in _LML_KEYS:
            raise ValueError(f"bad sampler setting {item!r} in {spec!r}: use key=value with key in {_LML_KEYS}")
        kwargs[key] = value if key == "lm_formula" else float(value)
    if kwargs and not is_lml(name):
        raise ValueError(f"settings {kwargs} apply only to lml-* samplers, not {name!r}")
    return name, kwargs


def is_lml(name: str) -> bool:
    """Whether ``name`` is one of the LML samplers (``lml-*``)."""
    return name in LML_SAMPLERS


def is_flow_sampler(name: str) -> bool:
    """Whether the sampler integrates a flow-matching (velocity) model."""
    return name.removeprefix("lml-") == "flow-euler"


def sampler_label(name: str, lml_kwargs: dict[str, Any] | None = None) -> str:
    """Row label: the name, plus ``λ``/``κ`` for LML samplers (e.g. ``lml-ddim(λ=0.005,κ=1e-06)``)."""
    if not is_lml(name) or not lml_kwargs:
        return name
    parts = [f"{'λ' if k == 'lamb' else 'κ' if k == 'kappa' else k}={v:g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in lml_kwargs.items() if v is not None]
    return f"{name}({','.join(parts)})" if parts else name


def make_scheduler(name: str, base_config, lamb: float | None = None, kappa: float | None = None,
                   freeze: float | None = None, lm_formula: str | None = None, **overrides):
    """Build sampler ``name`` with ``Class.from_config(base_config, **defaults, **overrides)``.

    ``base_config`` is the model's own scheduler config (``pipe.scheduler.config``), so betas, prediction type,
    clipping and the number of training steps carry over. ``lamb``/``kappa``/``freeze``/``lm_formula`` are only
    accepted for ``lml-*`` samplers (``None`` keeps the class default).
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    base = name.removeprefix("lml-")
    module, cls_name, defaults = _BASE[base]
    lml_kwargs = {k: v for k, v in zip(_LML_KEYS, (lamb, kappa, freeze, lm_formula)) if v is not None}
    if is_lml(name):
        cls = _import_lml(_LML_CLASS[base])
        kwargs = {**defaults, "lm": True, **lml_kwargs, **overrides}
    else:
        if lml_kwargs:
            raise ValueError(f"lamb/kappa/freeze/lm_formula apply only to lml-* samplers, not {name!r}")
        import diffusers

        cls = getattr(diffusers, cls_name)
        kwargs = {**defaults, **overrides}
    return cls.from_config(dict(base_config), **kwargs)


def _import_lml(cls_name: str):
    try:
        import lml_sampler
    except ImportError as exc:  # pragma: no cover
        raise ImportError("lml-* samplers need the lml_sampler package") from exc
    try:
        return getattr(lml_sampler, cls_name)
    except AttributeError:
        try:
            from lml_sampler import schedulers
            return getattr(schedulers, cls_name)
        except (ImportError, AttributeError):
            raise ImportError(f"lml_sampler does not provide {cls_name} yet (lml_sampler/schedulers)") from None
