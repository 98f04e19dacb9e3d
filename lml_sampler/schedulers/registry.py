"""Samplers by name: the one registry of the package (eval sweeps, benchmarks and the CLIs all read it).

A sampler name is ``[lml-]<solver>[-<discretisation>][@key=value[:key=value...]]``:

| solver | diffusers class | overrides |
|---|---|---|
| ``ddim`` | ``DDIMScheduler`` | ``timestep_spacing="trailing"`` (leading spacing never visits t = T−1 at low NFE) |
| ``dpm++2m`` / ``dpm++3m`` | ``DPMSolverMultistepScheduler`` | ``algorithm_type="dpmsolver++"``, ``solver_order=2/3`` |
| ``dpm`` | ``DPMSolverMultistepScheduler`` | ``algorithm_type="dpmsolver"``, ``solver_order=3``, ``final_sigmas_type="sigma_min"`` (the released LML code's CIFAR-10 baseline) |
| ``unipc`` | ``UniPCMultistepScheduler`` | — |
| ``deis`` | ``DEISMultistepScheduler`` | — |
| ``euler`` | ``EulerDiscreteScheduler`` | — |
| ``flow-euler`` | ``FlowMatchEulerDiscreteScheduler`` | — (flow-matching models only, as every ``flow-*``) |
| ``flow-heun`` | ``FlowMatchHeunDiscreteScheduler`` | — (2 model calls per step but the last: N steps cost 2N − 1 NFE) |
| ``flow-dpm++2m`` | ``DPMSolverMultistepScheduler`` | ``use_flow_sigmas=True``, ``prediction_type="flow_prediction"``, ``dpmsolver++``, order 2 |
| ``flow-unipc`` | ``UniPCMultistepScheduler`` | ``use_flow_sigmas=True``, ``prediction_type="flow_prediction"`` |

| discretisation | overrides | meaning |
|---|---|---|
| (none) | — | the class's default time steps (``linspace`` for the multistep solvers) |
| ``linspace`` / ``leading`` / ``trailing`` | ``timestep_spacing=…`` | uniform in t, three placements |
| ``karras`` | ``use_karras_sigmas=True`` | σ_i uniform in σ^{1/7} (Karras et al. 2022) |
| ``exp`` | ``use_exponential_sigmas=True`` | log σ uniform |
| ``beta`` | ``use_beta_sigmas=True`` | Beta(0.6, 0.6) quantiles of the σ range |
| ``lu`` | ``use_lu_lambdas=True`` | log-SNR λ uniform (Lu et al. 2022) |
| ``shift3`` | ``shift=3.0`` (``flow_shift=3.0`` for the multistep flow solvers) | the SD3 time shift σ ↦ 3σ/(1 + 2σ) |

``lml-`` uses the LML subclass of the solver's class (DDIM, DPM-Solver(++) and flow-matching Euler have one); the
settings after ``@`` are config keys of the class, e.g. ``lml-dpm++2m-karras@kappa=1e-3:lm_gamma=0.3``. A
discretisation the class does not support is refused by name.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from typing import Any

from ._family import check_same_family
from ._lm import LM_CONFIG_DEFAULTS

__all__ = ["SOLVERS", "DISCRETISATIONS", "SamplerSpec", "parse_sampler", "make_scheduler", "sampler_names",
           "solver_discretisations", "default_discretisation", "format_sampler", "LM_KEYS"]

#: The flow-matching configuration of diffusers' multistep solvers (σ_t = t, velocity output).
_FLOW_MULTISTEP: dict[str, Any] = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}

#: solver -> (diffusers class name, overrides, LML subclass name or None, flow-matching?)
SOLVERS: dict[str, tuple[str, dict[str, Any], str | None, bool]] = {
    "ddim": ("DDIMScheduler", {"timestep_spacing": "trailing"}, "LMLDDIMScheduler", False),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2},
                "LMLDPMSolverMultistepScheduler", False),
    "dpm++3m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3},
                "LMLDPMSolverMultistepScheduler", False),
    # diffusers refuses final_sigmas_type="zero" for the noise-prediction algorithm
    "dpm": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "solver_order": 3,
                                            "final_sigmas_type": "sigma_min"}, "LMLDPMSolverMultistepScheduler", False),
    "unipc": ("UniPCMultistepScheduler", {}, None, False),
    "deis": ("DEISMultistepScheduler", {}, None, False),
    "euler": ("EulerDiscreteScheduler", {}, None, False),
    "flow-euler": ("FlowMatchEulerDiscreteScheduler", {}, "LMLFlowMatchEulerDiscreteScheduler", True),
    "flow-heun": ("FlowMatchHeunDiscreteScheduler", {}, None, True),
    "flow-dpm++2m": ("DPMSolverMultistepScheduler", {**_FLOW_MULTISTEP, "algorithm_type": "dpmsolver++",
                                                     "solver_order": 2}, "LMLDPMSolverMultistepScheduler", True),
    "flow-unipc": ("UniPCMultistepScheduler", dict(_FLOW_MULTISTEP), None, True),
}

#: discretisation suffix -> config overrides
DISCRETISATIONS: dict[str, dict[str, Any]] = {
    "linspace": {"timestep_spacing": "linspace"},
    "leading": {"timestep_spacing": "leading"},
    "trailing": {"timestep_spacing": "trailing"},
    "karras": {"use_karras_sigmas": True},
    "exp": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "lu": {"use_lu_lambdas": True},
    "shift3": {"shift": 3.0},
}

#: The LML config keys (one source: the schedulers' own defaults).
LM_KEYS: tuple[str, ...] = tuple(LM_CONFIG_DEFAULTS)


@dataclass(frozen=True)
class SamplerSpec:
    """A parsed sampler name."""

    name: str  # without settings, e.g. "lml-dpm++2m-karras"
    solver: str
    discretisation: str | None
    lml: bool
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def flow(self) -> bool:
        return SOLVERS[self.solver][3]

    @property
    def scheduler_class(self) -> type:
        cls_name, _, lml_cls, _ = SOLVERS[self.solver]
        if self.lml:
            from .. import schedulers

            return getattr(schedulers, lml_cls)
        import diffusers

        return getattr(diffusers, cls_name)

    def overrides(self) -> dict[str, Any]:
        """Config overrides in order: the solver's, the discretisation's, ``lm=True`` for LML, then the settings."""
        out = dict(SOLVERS[self.solver][1])
        if self.discretisation is not None:
            out.update(DISCRETISATIONS[self.discretisation])
        if self.lml:
            out["lm"] = True
        out.update(self.settings)
        if "shift" in out and "use_flow_sigmas" in SOLVERS[self.solver][1]:
            out["flow_shift"] = out.pop("shift")  # the multistep solvers' name for the flow time shift
        return out


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string, e.g. lm_formula=official


def _accepted_keys(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}


def parse_sampler(spec: str) -> SamplerSpec:
    """Parse ``[lml-]<solver>[-<discretisation>][@key=value:...]``; ``ValueError`` naming what is wrong."""
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"sampler must be a non-empty string such as 'dpm++2m-karras', got {spec!r}")
    name, _, rest = spec.partition("@")
    lml = name.startswith("lml-")
    body = name.removeprefix("lml-")
    solver, discretisation = body, None
    if body not in SOLVERS:
        head, _, tail = body.rpartition("-")
        if head in SOLVERS and tail in DISCRETISATIONS:
            solver, discretisation = head, tail
        else:
            raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(sampler_names())} "
                             f"(solver[-discretisation], discretisations: {', '.join(DISCRETISATIONS)})")
    if lml and SOLVERS[solver][2] is None:
        raise ValueError(f"sampler {name!r}: there is no LML variant of {solver!r}; LML exists for "
                         f"{', '.join(s for s, v in SOLVERS.items() if v[2])}")
    settings: dict[str, Any] = {}
    for item in filter(None, rest.split(":")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"bad sampler setting {item!r} in {spec!r}: write key=value, e.g. {name}@kappa=1e-3")
        settings[key] = _parse_value(value)
    parsed = SamplerSpec(name, solver, discretisation, lml, settings)
    accepted = _accepted_keys(parsed.scheduler_class)
    unknown = [k for k in parsed.overrides() if k not in accepted]
    if unknown:
        if not lml and any(k in LM_KEYS for k in unknown):
            raise ValueError(f"settings {unknown} in {spec!r} apply only to lml-* samplers")
        raise ValueError(f"sampler {spec!r}: {parsed.scheduler_class.__name__} has no config key(s) {unknown}"
                         + (f" (the {discretisation!r} discretisation is not offered by this solver)"
                            if discretisation else ""))
    return parsed


def solver_discretisations(solver: str) -> tuple[str, ...]:
    """The discretisation suffixes that ``solver``'s class supports, in :data:`DISCRETISATIONS` order."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose from {', '.join(SOLVERS)}")
    import diffusers

    cls_name, overrides, _, _ = SOLVERS[solver]
    accepted = _accepted_keys(getattr(diffusers, cls_name))
    if "use_flow_sigmas" in overrides:
        accepted |= {"shift"}  # the multistep solvers take the flow time shift as ``flow_shift`` (SamplerSpec)
    return tuple(d for d, o in DISCRETISATIONS.items() if set(o) <= accepted)


def default_discretisation(solver: str) -> str | None:
    """The time spacing that ``solver`` without a suffix runs: the registry's override, else its class's default
    ``timestep_spacing`` (``"linspace"`` for the multistep solvers, ``"trailing"`` for ``ddim``); None for a class
    without one (flow-matching Euler)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose from {', '.join(SOLVERS)}")
    import diffusers

    cls_name, overrides, _, _ = SOLVERS[solver]
    if "timestep_spacing" in overrides:
        return overrides["timestep_spacing"]
    spacing = inspect.signature(getattr(diffusers, cls_name).__init__).parameters.get("timestep_spacing")
    return None if spacing is None else spacing.default


def format_sampler(name: str, settings: dict[str, Any] | None = None) -> str:
    """The sampler name :func:`parse_sampler` reads back: ``name@key=value:...`` (keys sorted; floats as ``%g``)."""
    items = sorted((settings or {}).items())
    text = ":".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={json.dumps(v) if isinstance(v, bool) else v}"
                    for k, v in items)
    return f"{name}@{text}" if text else name


def sampler_names(include_discretisations: bool = False) -> tuple[str, ...]:
    """The sampler names without settings: every solver and its LML variant, optionally with every
    discretisation the solver's class supports."""
    names = []
    for solver, (_, _, lml_cls, _) in SOLVERS.items():
        suffixes = [None] + (list(solver_discretisations(solver)) if include_discretisations else [])
        for d in suffixes:
            base = solver if d is None else f"{solver}-{d}"
            names.append(base)
            if lml_cls:
                names.append(f"lml-{base}")
    return tuple(sorted(names, key=lambda n: (n.startswith("lml-"), n)))


def make_scheduler(spec: str | SamplerSpec, base_config, **overrides):
    """``Class.from_config(base_config, **name overrides, **overrides)`` for the sampler ``spec``.

    ``base_config`` is the model's own scheduler config (``pipe.scheduler.config``), so betas, prediction type,
    clipping and the number of training steps carry over; a flow-matching sampler on a VP model's config (or the
    reverse) is refused. ``overrides`` (e.g. ``kappa=1e-3``) win over the name's;
    LML keys are refused for stock samplers.
    """
    parsed = parse_sampler(spec) if isinstance(spec, str) else spec
    lm_given = [k for k, v in overrides.items() if k in LM_KEYS and v is not None]
    if lm_given and not parsed.lml:
        raise ValueError(f"{lm_given} apply only to lml-* samplers, not {parsed.name!r}")
    kwargs = {**parsed.overrides(), **{k: v for k, v in overrides.items() if v is not None}}
    check_same_family(parsed.scheduler_class, dict(base_config), kwargs)
    return parsed.scheduler_class.from_config(dict(base_config), **kwargs)
