"""The samplers of the flow study, its grids and how a sampler spends an NFE budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lml_sampler.schedulers.registry import default_discretisation, parse_sampler

from benchmarks.lml_verdict.specs import KAPPA_GAMMA, REPORT_SEEDS, TIE, TUNE_SEED

#: The flow study's γ grids (rank 1; rank k): the VP verdict's full grid without its smallest γ.
GAMMAS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
RANK_GAMMAS = (0.2, 0.5, 1.0, 2.0)

__all__ = ["NFES", "QUICK_NFES", "CFG_NFES", "GUIDANCE_SCALES", "RELEASE_FLOW_LAMBDA", "FlowSpec", "stock_specs",
           "official_specs", "grid_specs", "vp_stock_specs", "vp_grid_specs", "REPORT_SEEDS", "TUNE_SEED", "TIE",
           "FAMILY_LABELS", "STOCK_LABELS"]

NFES = (4, 6, 8, 12, 20, 28)
QUICK_NFES = (4, 8)
CFG_NFES = (4, 8, 20)
GUIDANCE_SCALES = (1.0, 3.0, 5.0, 7.5)
#: λ of the released flow-matching (FLUX) example; the released default κ = 0 makes it the identity in exact
#: arithmetic, so what it measures is the float32 rounding of the released expression (docs/lml.md §2).
RELEASE_FLOW_LAMBDA = 1e-2
SHIFTS = (1, 3)
#: The stock flow solvers of diffusers (registry names); each runs at shift 1 and 3.
STOCK_SOLVERS = ("flow-euler", "flow-heun", "flow-dpm++2m", "flow-unipc")
STOCK_LABELS = {"flow-euler": "FlowMatch Euler", "flow-heun": "FlowMatch Heun (2 NFE/step, 2N−1 NFE)",
                "flow-dpm++2m": "DPM-Solver++ 2M (flow sigmas)", "flow-unipc": "UniPC (flow sigmas)"}
FAMILY_LABELS = {
    "official-flow-euler": "LML official fp32, κ=0, λ=1e-2 (release), Euler",
    "gamma-flow-euler": "LML stable γ, rank 1, Euler",
    "rank-flow-euler": "LML stable γ, rank k=2/3, Euler",
    "gamma-flow-dpm++2m": "LML stable γ, rank 1, DPM-Solver++ 2M (flow sigmas)",
}
#: The VP part of the guidance study: DPM-Solver++ 2M over its discretisations, LML on the same ones.
VP_DISCRETISATIONS = (None, "karras", "lu")


@dataclass(frozen=True)
class FlowSpec:
    """One sampler: ``sampler`` is a registry name (``lml_sampler.schedulers.registry``), ``settings`` its extra
    config keys as sorted pairs (hashable). ``family`` groups the settings tuned against each other."""

    id: str
    family: str
    kind: str  # "stock", "official" or "lml"
    sampler: str
    settings: tuple = ()

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.settings)

    def steps(self, nfe: int) -> int:
        """Scheduler steps within ``nfe`` model calls: Heun's N steps cost 2N − 1 (the last is an Euler step), so
        it gets the largest N with 2N − 1 ≤ nfe; every other solver one call per step."""
        return (nfe + 1) // 2 if "heun" in self.sampler else nfe

    def describe(self) -> str:
        s = self.config
        if "flow" in self.sampler:
            shift = "shift 3" if "shift3" in self.sampler else "shift 1"
        else:  # a VP scheduler (the guidance study): its discretisation instead of a time shift
            parsed = parse_sampler(self.sampler)
            shift = parsed.discretisation or default_discretisation(parsed.solver)
        if self.kind == "lml":
            return f"γ={s['lm_gamma']:g}" + (f", k={s['lm_rank']}" if s.get("lm_rank", 1) > 1 else "") + f", {shift}"
        return shift


def _suffix(shift: int) -> str:
    return "-shift3" if shift == 3 else ""


def _lml(family: str, solver: str, shift: int, gamma: float, rank: int) -> FlowSpec:
    sid = f"lml-{solver}{_suffix(shift)}-g{gamma:g}" + (f"-r{rank}" if rank > 1 else "")
    return FlowSpec(sid, family, "lml", f"lml-{solver}{_suffix(shift)}",
                    tuple(sorted({"kappa": KAPPA_GAMMA, "lm_gamma": gamma, "lm_rank": rank}.items())))


def stock_specs(solvers=STOCK_SOLVERS) -> list[FlowSpec]:
    return [FlowSpec(f"{s}{_suffix(k)}", s, "stock", f"{s}{_suffix(k)}") for s in solvers for k in SHIFTS]


def official_specs() -> list[FlowSpec]:
    settings = tuple(sorted({"lamb": RELEASE_FLOW_LAMBDA, "kappa": 0.0, "lm_formula": "official"}.items()))
    return [FlowSpec(f"lml-off-flow-euler{_suffix(k)}", "official-flow-euler", "official",
                     f"lml-flow-euler{_suffix(k)}", settings) for k in SHIFTS]


#: γ grids by level: "full" (Gaussian), "reduced" (mixture, guidance: a model call costs ~10× more), "quick". The
#: smallest γ (0.02) is nearly the parent itself, so a tuned LML can always fall back to about its parent.
LEVELS = {"full": (GAMMAS, RANK_GAMMAS, (2, 3)), "reduced": ((0.02, 0.05, 0.1, 0.5, 1.0, 2.0), (0.5, 1.0), (2,)),
          "quick": ((0.5,), (0.5,), (2,))}


def grid_specs(level: str) -> list[FlowSpec]:
    """The tuned LML families (γ × shift, rank k × γ × shift) at grid ``level`` (:data:`LEVELS`)."""
    gammas, rank_gammas, ranks = LEVELS[level]
    out = [_lml("gamma-flow-euler", "flow-euler", k, g, 1) for k in SHIFTS for g in gammas]
    out += [_lml("rank-flow-euler", "flow-euler", k, g, r) for k in SHIFTS for r in ranks for g in rank_gammas]
    out += [_lml("gamma-flow-dpm++2m", "flow-dpm++2m", k, g, 1) for k in SHIFTS for g in gammas]
    return out


def vp_stock_specs() -> list[FlowSpec]:
    return [FlowSpec("dpm++2m" + (f"-{d}" if d else ""), "dpm++2m", "stock", "dpm++2m" + (f"-{d}" if d else ""))
            for d in VP_DISCRETISATIONS]


def vp_grid_specs(level: str) -> list[FlowSpec]:
    gammas = LEVELS[level][0]
    out = []
    for d in VP_DISCRETISATIONS:
        name = "dpm++2m" + (f"-{d}" if d else "")
        for g in gammas:
            out.append(FlowSpec(f"lml-{name}-g{g:g}", "gamma-dpm++2m", "lml", f"lml-{name}",
                                tuple(sorted({"kappa": KAPPA_GAMMA, "lm_gamma": g, "lm_rank": 1}.items()))))
    return out
