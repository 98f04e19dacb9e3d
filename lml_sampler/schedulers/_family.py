"""Which kind of model a scheduler config is for: a flow-matching (velocity) model or a VP diffusion model.

A flow-matching scheduler fed a noise-prediction model (or the reverse) runs without complaint and returns garbage:
the parametrisations differ (docs/flow-matching.md §1). A scheduler config names its model's kind in two places,
its class (``FlowMatch*``; in a live config, which lacks ``_class_name``, the key ``shift`` without betas) and, for diffusers' multistep solvers, ``use_flow_sigmas`` with
``prediction_type="flow_prediction"``; the analytic models' own configs say ``prediction_type="flow"``. Where the
config a scheduler is built from says one thing and the scheduler is the other, :func:`check_same_family` refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["config_family", "class_family", "check_same_family"]

FLOW, VP = "flow-matching", "diffusion (VP)"
_VP_PREDICTIONS = ("epsilon", "v_prediction", "sample")


def config_family(config: Mapping[str, Any]) -> str | None:
    """``FLOW`` or ``VP`` for the model a scheduler config was written for; None when the config does not say."""
    name = str(config.get("_class_name") or "")
    # A live scheduler's config has no _class_name; the FlowMatch schedulers' own key (a time shift, no betas)
    # names them then.
    if "FlowMatch" in name or ("shift" in config and "beta_start" not in config):
        return FLOW
    prediction = config.get("prediction_type")
    if prediction in ("flow_prediction", "flow") and (prediction == "flow" or config.get("use_flow_sigmas")):
        return FLOW
    if name or prediction in _VP_PREDICTIONS:
        return VP
    return None


def class_family(cls: type, config: Mapping[str, Any]) -> str:
    """The kind of model ``cls`` built with ``config`` (the merged config) samples."""
    if "FlowMatch" in "".join(c.__name__ for c in cls.__mro__):
        return FLOW
    return FLOW if config.get("use_flow_sigmas") and config.get("prediction_type") == "flow_prediction" else VP


def check_same_family(cls: type, source: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` when ``cls.from_config(source, **overrides)`` would pair a flow-matching scheduler with a
    VP model's config or the reverse. A source that does not say (a bare dict of betas) passes."""
    source_family = config_family(source)
    if source_family is None:
        return
    merged = {**source, **overrides}
    target = class_family(cls, merged)
    if target == source_family:
        return
    origin = source.get("_class_name") or (f"prediction_type={source['prediction_type']!r}"
                                           if source.get("prediction_type") else "a FlowMatch config: shift, no betas")
    if target == FLOW:
        fix = ("use a VP scheduler (e.g. LMLDPMSolverMultistepScheduler, registry name 'lml-dpm++2m'); flow-matching "
               "schedulers need a model that predicts the velocity")
    else:
        fix = ("use LMLFlowMatchEulerDiscreteScheduler ('lml-flow-euler'), or DPM-Solver in its flow configuration "
               "(use_flow_sigmas=True, prediction_type='flow_prediction'; 'lml-flow-dpm++2m')")
    raise ValueError(f"{cls.__name__} samples a {target} model, but the config it is built from belongs to a "
                     f"{source_family} model ({origin}): {fix}")
