"""What the study runs: the sampler specifications, the tuning grids, how a corrector spends an NFE budget, labels.

Every sampler is a name of the one registry (``lml_sampler.schedulers.registry``) built on one base config (linear
betas 1e-4→0.02, 1000 steps, ``clip_sample=False``; the trained model brings its own). A *stock* sampler is
``<solver>-<discretisation>``: every stock solver of :data:`STOCK_SOLVERS` with every time discretisation its
diffusers class offers (:func:`stock_names`). LML runs on top of the same names (``lml-<solver>-<discretisation>``),
so that a stock solver and its LML variant always share their time steps.

A *family* is a set of specs tuned against each other on seed set 0, written ``<method>:<stock name>``: the method
(:data:`METHOD_LABELS`) on top of one stock solver and discretisation. A stock sampler is a family of one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lml_sampler.schedulers.registry import (
    default_discretisation,
    format_sampler,
    parse_sampler,
    solver_discretisations,
)

NFES = (5, 6, 8, 10, 15, 20)
#: The NFEs a model whose grid is too costly for every NFE is tuned at on seed set 0 (each other NFE uses the nearest).
TUNE_NFES = (5, 10, 20)
TUNE_SEED = 0
REPORT_SEEDS = (1, 2)
#: λ of the released LML code's README (CIFAR-10, dpm_lm), by NFE.
README_LAMBDA = {5: 8e-4, 6: 8e-4, 7: 1e-3, 8: 1e-3, 9: 1e-3, 10: 8e-4, 12: 1e-3, 15: 1e-3, 20: 5e-4,
                 30: 3e-4, 50: 1e-4, 100: 5e-5}
CIFAR_DIM = 3 * 32 * 32
KAPPA_GAMMA = 1e-3  # small κ: the γ parametrisation is then its small-κ limit (docs/lml.md §4)
BASE_CONFIG = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                   clip_sample=False)
#: The targets, best LML / best stock at the same NFE: on every exact-score model, and on the trained model.
GOAL_NFES = (5, 10)
GOAL_EXACT = 0.8
GOAL_TRAINED = 0.9
TIE = 0.03  # ratios within ±3 % are reported as "on par"
#: The converged probability-flow ODE solution the diagnostics measure against: DPM-Solver 3 at this many steps.
ODE_REFERENCE_NFE = 200

#: The stock solvers of the registry that the study runs (flow-matching Euler needs a flow model: not here).
STOCK_SOLVERS = ("ddim", "dpm++2m", "dpm++3m", "dpm", "unipc", "deis", "euler")
#: Solvers with an LML scheduler; the rank-k family runs on the first two; the Langevin corrector's predictor.
LML_PARENTS = ("dpm++2m", "dpm++3m", "dpm", "ddim")
RANK_PARENTS = ("dpm++2m", "dpm++3m")
LANGEVIN_PREDICTOR = "dpm++2m"

SOLVER_LABELS = {
    "ddim": "DDIM",
    "dpm++2m": "DPM-Solver++ 2M",
    "dpm++3m": "DPM-Solver++ 3M",
    "dpm": "DPM-Solver 3 (noise-pred, sigma_min)",
    "unipc": "UniPC",
    "deis": "DEIS",
    "euler": "Euler",
}
DISCRETISATION_LABELS = {
    "linspace": "linspace",
    "leading": "leading",
    "trailing": "trailing",
    "karras": "Karras σ",
    "exp": "exponential σ",
    "beta": "beta σ",
    "lu": "uniform λ",
}

METHOD_LABELS = {
    "stock": "stock",
    "gamma": "LML stable γ, rank 1",
    "rank": "LML stable γ, rank k=2/3",
    "official": "LML official fp32, κ=0, README λ",
    "official-eq": "LML official fp32, κ=0, CIFAR-equivalent λ",
    "langevin-lm": "LM-preconditioned Langevin corrector, rank 1-2",
    "langevin-iso": "control, not LML: isotropic Langevin corrector, rank 0",
}
#: Methods that are LML (the LM preconditioning is on); the targets are checked over these only.
LML_METHODS = ("gamma", "rank", "official", "official-eq", "langevin-lm")
#: Deterministic LML at the parent's NFE and cost (no added noise): the drop-in scheduler use case.
DETERMINISTIC_METHODS = ("gamma", "rank", "official", "official-eq")

#: Spec kinds: a stock solver, LML with the cancellation-free γ form (docs/lml.md §3-§4), the released float32
#: expression at κ = 0 (docs/lml.md §2, §8), a stock predictor with the Langevin corrector (docs/lml.md §7).
KINDS = ("linear", "lml", "official", "langevin")
_METHOD_KIND = {"stock": "linear", "gamma": "lml", "rank": "lml", "official": "official", "official-eq": "official",
                "langevin-lm": "langevin", "langevin-iso": "langevin"}


# ----------------------------------------------------------------------------------------------------------------------
# Stock names and families
# ----------------------------------------------------------------------------------------------------------------------


def stock_name(solver: str, discretisation: str) -> str:
    return f"{solver}-{discretisation}"


def split_stock(name: str) -> tuple[str, str]:
    """(solver, discretisation) of a stock name such as ``"dpm++2m-karras"``."""
    parsed = parse_sampler(name)
    if parsed.lml or parsed.discretisation is None or parsed.settings:
        raise ValueError(f"a stock name is <solver>-<discretisation> without settings, got {name!r}")
    return parsed.solver, parsed.discretisation


def stock_names(solvers: tuple[str, ...] = STOCK_SOLVERS, exclude: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Every (solver, discretisation its class offers) as a stock name, minus the discretisations ``exclude``."""
    return tuple(stock_name(s, d) for s in solvers for d in solver_discretisations(s) if d not in exclude)


def default_stock(solver: str) -> str:
    """The stock name of what ``solver`` runs without a suffix (its diffusers default, ``ddim``: trailing)."""
    return stock_name(solver, default_discretisation(solver))


def is_default(name: str) -> bool:
    solver, _ = split_stock(name)
    return name == default_stock(solver)


def stock_label(name: str) -> str:
    solver, disc = split_stock(name)
    return f"{SOLVER_LABELS[solver]}, {DISCRETISATION_LABELS[disc]}"


def family(method: str, base: str) -> str:
    if method not in METHOD_LABELS:
        raise ValueError(f"method must be one of {tuple(METHOD_LABELS)}, got {method!r}")
    return f"{method}:{base}"


def family_method(fam: str) -> str:
    return fam.partition(":")[0]


def family_base(fam: str) -> str:
    return fam.partition(":")[2]


def family_label(fam: str) -> str:
    """``"DPM-Solver++ 2M, Karras σ"`` for a stock family, ``"<method> on <stock label>"`` otherwise."""
    method, base = family_method(fam), family_base(fam)
    return stock_label(base) if method == "stock" else f"{METHOD_LABELS[method]} on {stock_label(base)}"


def is_lml(fam: str) -> bool:
    return family_method(fam) in LML_METHODS


def is_deterministic_lml(fam: str) -> bool:
    return family_method(fam) in DETERMINISTIC_METHODS


# ----------------------------------------------------------------------------------------------------------------------
# Specs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorrectorPlan:
    """How a Langevin-corrected run spends an NFE budget: ``predictor_steps`` solver steps, correctors on ``steps``."""

    predictor_steps: int
    steps: tuple[int, ...] | None
    extra_nfe: bool


def corrector_plan(nfe: int, corrected: int, placement: str, extra_nfe: bool = True) -> CorrectorPlan:
    """Split an NFE budget between predictor steps and Langevin corrector steps.

    With ``extra_nfe`` each corrected step costs one extra model call (``LangevinCorrector(n_iter=1)``), so
    ``predictor_steps = nfe − corrected`` and the correctors sit on the ``corrected`` steps right after the first
    (``"early"``) or right before the last (``"late"``). Without it the corrector reuses the step's model output and
    runs on every step but the last at no NFE cost.
    """
    if not extra_nfe:
        return CorrectorPlan(nfe, None, False)
    n = nfe - corrected
    if corrected < 1 or n < 2 + corrected:
        raise ValueError(f"corrected must be >= 1 and leave >= {2 + corrected} predictor steps of nfe={nfe}")
    if placement == "early":
        steps = tuple(range(1, 1 + corrected))
    elif placement == "late":
        steps = tuple(range(n - 1 - corrected, n - 1))
    else:
        raise ValueError(f"placement must be 'early' or 'late', got {placement!r}")
    return CorrectorPlan(n, steps, True)


@dataclass(frozen=True)
class Spec:
    """One sampler configuration: ``base`` is the stock name it runs on (``"dpm++2m-karras"``), ``family`` the
    group it is tuned in (``"gamma:dpm++2m-karras"``).

    ``params`` are the hyperparameters as sorted (key, value) pairs, so that a spec is hashable; read them as a
    dict with :attr:`settings`.
    """

    id: str
    family: str
    kind: str  # one of KINDS
    base: str
    params: tuple = ()

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def method(self) -> str:
        return family_method(self.family)

    def stock_parent(self) -> Spec:
        """The stock solver this spec modifies (itself for a linear spec)."""
        return linear_spec(self.base)

    def corrector_plan(self, nfe: int) -> CorrectorPlan:
        s = self.settings
        return corrector_plan(nfe, s["corrected"], s["placement"], s["extra_nfe"])

    def feasible(self, nfe: int) -> bool:
        """Whether the spec can run at exactly ``nfe`` (a corrector plan needs enough predictor steps)."""
        if self.kind != "langevin":
            return True
        try:
            self.corrector_plan(nfe)
        except ValueError:
            return False
        return True

    def official_lambda(self, nfe: int, dim: int) -> float:
        """λ of an official spec: the README value at ``nfe`` or, for ``lamb_scale < 0``, its CIFAR-equivalent
        λ·d/d_CIFAR, which keeps λ/‖v‖² (hence the fp32 rounding noise, docs/lml.md §2) at its CIFAR-10 size,
        since ‖v‖² ∝ d."""
        lamb = README_LAMBDA[nfe]
        return lamb * dim / CIFAR_DIM if self.settings["lamb_scale"] < 0 else lamb

    def lml_settings(self) -> dict[str, Any]:
        """The LML scheduler config of an ``lml`` spec (κ, γ and, above 1, the rank)."""
        s = self.settings
        out: dict[str, Any] = {"kappa": KAPPA_GAMMA, "lm_gamma": float(s["gamma"])}
        if s["rank"] > 1:
            out["lm_rank"] = s["rank"]
        return out

    def sampler_name(self) -> str | None:
        """The registry name that reproduces this spec with ``lml-eval`` or ``make_scheduler`` (None: a Langevin
        corrector, which is a sampling-loop option, or the official spec, whose λ depends on the NFE)."""
        if self.kind == "linear":
            return self.base
        if self.kind == "lml":
            return format_sampler(f"lml-{self.base}", self.lml_settings())
        return None

    def describe(self) -> str:
        """Short human description of a tuned setting (for the tables)."""
        s = self.settings
        if self.kind == "lml":
            return f"γ={s['gamma']:g}" + (f", k={s['rank']}" if s["rank"] > 1 else "")
        if self.kind == "langevin":
            where = "stale score, all steps" if not s["extra_nfe"] else f"{s['corrected']}× {s['placement']}"
            return f"snr={s['snr']:g}, rank={s['rank']}, {where}"
        return ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "family": self.family, "kind": self.kind, "base": self.base,
                "params": dict(self.params)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Spec:
        return cls(data["id"], data["family"], data["kind"], data["base"], tuple(sorted(data["params"].items())))


def make_spec(id_: str, method: str, base: str, **settings) -> Spec:
    split_stock(base)  # validates the stock name
    return Spec(id_, family(method, base), _METHOD_KIND[method], base, tuple(sorted(settings.items())))


def linear_spec(base: str) -> Spec:
    """A stock solver as a spec (its own family); its id is its stock name."""
    return make_spec(base, "stock", base)


#: The released float32 expression at κ = 0 (not tuned), by spec id: (method, base, lamb_scale).
OFFICIAL = {
    "lml-off-dpm": ("official", "dpm-linspace", 1.0),
    "lml-off-dpm-eq": ("official-eq", "dpm-linspace", -1.0),
    "lml-off-dpm++2m": ("official", "dpm++2m-linspace", 1.0),
}


def official_specs(ids: tuple[str, ...]) -> list[Spec]:
    return [make_spec(i, OFFICIAL[i][0], OFFICIAL[i][1], lamb_scale=OFFICIAL[i][2]) for i in ids]


@dataclass(frozen=True)
class Grid:
    """The tuning grid of one level: γ of the rank-1 family, (k, γ) of the rank-k family, and the Langevin corrector
    settings ((corrected steps, placement, snr, rank) with an extra NFE each; (snr, rank) on the stale score)."""

    gammas: tuple[float, ...]
    rank_gammas: tuple[float, ...]
    ranks: tuple[int, ...]
    corrected: tuple[tuple[int, str, float, int], ...]
    stale: tuple[tuple[float, int], ...]


_FULL_CORRECTED = tuple((c, pl, snr, r) for c, pl in ((1, "late"), (1, "early"), (2, "late")) for snr in (0.05, 0.15)
                        for r in (0, 2))
GRIDS = {
    # small γ down to 0.02: γ → 0 is the parent itself, so a tuned LML can always fall back to about its parent
    "full": Grid((0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0), (0.05, 0.2, 0.5, 1.0), (2, 3), _FULL_CORRECTED,
                 tuple((snr, r) for snr in (0.02, 0.05, 0.15) for r in (0, 2))),
    "reduced": Grid((0.02, 0.05, 0.1, 0.2, 0.5, 1.0), (0.05, 0.2, 0.5), (2,),
                    tuple((1, "late", snr, r) for snr in (0.05, 0.15) for r in (0, 2)) + ((1, "early", 0.05, 2),),
                    tuple((snr, r) for snr in (0.02, 0.05) for r in (0, 2))),
    "tiny": Grid((0.05, 0.2, 0.5), (0.05, 0.5), (2,), ((1, "late", 0.05, 2),), ((0.05, 2), (0.05, 0))),
    "quick": Grid((0.05, 0.5), (0.5,), (2,), ((1, "late", 0.05, 2),), ((0.05, 2), (0.05, 0))),
}


def langevin_method(rank: int) -> str:
    """Rank 0 is the isotropic control, not LML."""
    return "langevin-lm" if rank > 0 else "langevin-iso"


def gamma_specs(level: str, bases: tuple[str, ...]) -> list[Spec]:
    """The rank-1 γ family on each stock name in ``bases``."""
    return [make_spec(f"lml-g{g:g}-{b}", "gamma", b, gamma=g, rank=1) for b in bases for g in GRIDS[level].gammas]


def rank_specs(level: str, bases: tuple[str, ...]) -> list[Spec]:
    grid = GRIDS[level]
    return [make_spec(f"lml-r{k}-g{g:g}-{b}", "rank", b, gamma=g, rank=k)
            for b in bases for k in grid.ranks for g in grid.rank_gammas]


def langevin_specs(level: str, bases: tuple[str, ...]) -> list[Spec]:
    """The Langevin corrector on the predictors ``bases`` (LM-preconditioned, rank > 0, and the isotropic control)."""
    grid, out = GRIDS[level], []
    for b in bases:
        for c, pl, snr, r in grid.corrected:
            out.append(make_spec(f"lgv-{pl}{c}-snr{snr:g}-r{r}-{b}", langevin_method(r), b, corrected=c,
                                 placement=pl, snr=snr, rank=r, extra_nfe=True))
        for snr, r in grid.stale:
            out.append(make_spec(f"lgv-stale-snr{snr:g}-r{r}-{b}", langevin_method(r), b, corrected=0,
                                 placement="all", snr=snr, rank=r, extra_nfe=False))
    return out


def rank_discretisations(values: dict[str, dict[int, float]], solver: str) -> list[str]:
    """The stock names of ``solver`` in ``values`` ({stock name: {NFE: error}}, seed set 0), best first.

    Each NFE ranks the names by error (non-finite last); a name's score is its mean rank over the NFEs; ties keep
    the discretisation order of the registry.
    """
    names = [n for n in values if split_stock(n)[0] == solver]
    nfes = sorted({nfe for n in names for nfe in values[n]})
    score = {n: 0.0 for n in names}
    for nfe in nfes:
        key = [(finite_or_inf(values[n].get(nfe)), n) for n in names]
        for r, (_, n) in enumerate(sorted(key, key=lambda t: t[0])):
            score[n] += r / len(nfes)
    return sorted(names, key=lambda n: score[n])  # stable: ties keep the input order


def chosen_bases(ranked: list[str], solver: str, top: int | None) -> tuple[str, ...]:
    """The solver's default stock name and its ``top`` best others from ``ranked`` (all of them for None)."""
    default = default_stock(solver)
    others = [n for n in ranked if n != default]
    return (default, *(others if top is None else others[:top]))


def finite_or_inf(v: float | None) -> float:
    """``v``, or inf for a missing or non-finite value (ranks it last)."""
    return v if v is not None and math.isfinite(v) else float("inf")
