"""What the study runs: the sampler specifications, the tuning grids, how a corrector spends an NFE budget, labels.

Every sampler is built from one base config (linear betas 1e-4→0.02, 1000 steps, ``clip_sample=False``) with
``lml_sampler.schedulers.registry.make_scheduler``: DDIM with ``timestep_spacing="trailing"``, every other solver
with its diffusers default (``"linspace"``), the configuration of the linear baselines of
``docs/exact-score-benchmark.md §2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NFES = (5, 6, 8, 10, 15, 20)
TUNE_SEED = 0
REPORT_SEEDS = (1, 2)
#: λ of the released LML code's README (CIFAR-10, dpm_lm), by NFE.
README_LAMBDA = {5: 8e-4, 6: 8e-4, 7: 1e-3, 8: 1e-3, 9: 1e-3, 10: 8e-4, 12: 1e-3, 15: 1e-3, 20: 5e-4,
                 30: 3e-4, 50: 1e-4, 100: 5e-5}
CIFAR_DIM = 3 * 32 * 32
KAPPA_GAMMA = 1e-3  # small κ: the γ parametrisation is then its small-κ limit (docs/lml.md §4)
GAMMAS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
RANK_GAMMAS = (0.2, 0.5, 1.0, 2.0)
BASE_CONFIG = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                   clip_sample=False)
REFERENCE = "dpm++2m"  # the goal: best LML at NFE 10 ≤ 0.8 × DPM-Solver++ 2M at NFE 10
GOAL_RATIO = 0.8
TIE = 0.03  # ratios within ±3 % are reported as "on par"
#: The converged probability-flow ODE solution the diagnostics measure against: DPM-Solver 3 at this many steps.
ODE_REFERENCE_NFE = 200

BASELINE_LABELS = {
    "ddim": "DDIM (trailing)",
    "dpm++2m": "DPM-Solver++ 2M",
    "dpm++3m": "DPM-Solver++ 3M",
    "unipc": "UniPC",
    "dpm": "DPM-Solver 3 (noise-pred, sigma_min)",
}

FAMILY_LABELS = {
    "official-dpm": "LML official fp32, κ=0, README λ (DPM-Solver 3 noise-pred)",
    "official-dpm-eq": "LML official fp32, κ=0, CIFAR-equivalent λ (DPM-Solver 3 noise-pred)",
    "official-dpm++2m": "LML official fp32, κ=0, README λ (DPM-Solver++ 2M)",
    "gamma-dpm++2m": "LML stable γ, rank 1 (DPM-Solver++ 2M)",
    "gamma-ddim": "LML stable γ, rank 1 (DDIM)",
    "gamma-dpm++3m": "LML stable γ, rank 1 (DPM-Solver++ 3M)",
    "gamma-dpm": "LML stable γ, rank 1 (DPM-Solver 3 noise-pred)",
    "rank-dpm++2m": "LML stable γ, rank k=2/3 (DPM-Solver++ 2M)",
    "rank-ddim": "LML stable γ, rank k=2/3 (DDIM)",
    "langevin-lm": "LM-preconditioned Langevin corrector, rank 1-2 (DPM-Solver++ 2M predictor)",
    "langevin-iso": "control, not LML: isotropic Langevin corrector, rank 0 (DPM-Solver++ 2M predictor)",
}
#: Families that are LML (the LM preconditioning is on); the goal is checked over these only.
LML_FAMILIES = tuple(f for f in FAMILY_LABELS if f != "langevin-iso")
#: Deterministic LML at the parent's NFE and cost (no added noise): the drop-in scheduler use case.
DETERMINISTIC_LML = tuple(f for f in LML_FAMILIES if not f.startswith("langevin"))

#: Spec kinds: a stock solver, LML with the cancellation-free γ form (docs/lml.md §3-§4), the released float32
#: expression at κ = 0 (docs/lml.md §2, §8), a stock predictor with the Langevin corrector (docs/lml.md §7).
KINDS = ("linear", "lml", "official", "langevin")


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
    """One sampler configuration. ``family`` groups the configurations tuned against each other on seed set 0.

    ``params`` are the hyperparameters as sorted (key, value) pairs, so that a spec is hashable; read them as a
    dict with :attr:`settings`.
    """

    id: str
    family: str
    kind: str  # one of KINDS
    base: str  # the stock sampler name in the registry ("dpm++2m"); LML kinds use "lml-" + base
    params: tuple = ()

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.params)

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

    def describe(self) -> str:
        """Short human description of a tuned setting (for the tables)."""
        s = self.settings
        if self.kind == "lml":
            return f"γ={s['gamma']:g}" + (f", k={s['rank']}" if s["rank"] > 1 else "")
        if self.kind == "langevin":
            where = "stale score, all steps" if not s["extra_nfe"] else f"{s['corrected']}× {s['placement']}"
            return f"snr={s['snr']:g}, rank={s['rank']}, {where}"
        return ""


def make_spec(id_: str, family: str, kind: str, base: str, **settings) -> Spec:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return Spec(id_, family, kind, base, tuple(sorted(settings.items())))


def linear_spec(base: str) -> Spec:
    """A stock solver as a spec (its own family)."""
    return make_spec(base, base, "linear", base)


def baseline_specs() -> list[Spec]:
    return [linear_spec(b) for b in BASELINE_LABELS]


def official_specs(families: tuple[str, ...]) -> list[Spec]:
    """The released float32 expression at κ = 0, one spec per official family in ``families`` (not tuned)."""
    out = []
    if "official-dpm" in families:
        out.append(make_spec("lml-off-dpm", "official-dpm", "official", "dpm", lamb_scale=1.0))
    if "official-dpm-eq" in families:
        out.append(make_spec("lml-off-dpm-eq", "official-dpm-eq", "official", "dpm", lamb_scale=-1.0))
    if "official-dpm++2m" in families:
        out.append(make_spec("lml-off-dpm++2m", "official-dpm++2m", "official", "dpm++2m", lamb_scale=1.0))
    return out


def langevin_family(rank: int) -> str:
    """Rank 0 is the isotropic control, not LML."""
    return "langevin-lm" if rank > 0 else "langevin-iso"


def grid_specs(level: str) -> list[Spec]:
    """The tuned families. ``level``: "full" (Gaussian), "reduced" (mixture, empirical), "tiny" (trained UNet) or
    "quick" (smoke run)."""
    gammas = {"full": GAMMAS, "reduced": (0.1, 0.5, 1.0, 2.0), "tiny": (0.2, 0.5, 1.0), "quick": (0.5,)}[level]
    rank_gammas = {"full": RANK_GAMMAS, "reduced": (0.5, 1.0), "tiny": (0.5,), "quick": (0.5,)}[level]
    ranks = (2, 3) if level not in ("quick", "tiny") else (2,)
    specs = []
    for base in ("dpm++2m", "ddim"):
        for g in gammas:
            specs.append(make_spec(f"lml-g{g:g}-{base}", f"gamma-{base}", "lml", base, gamma=g, rank=1))
        for k in ranks:
            for g in rank_gammas:
                specs.append(make_spec(f"lml-r{k}-g{g:g}-{base}", f"rank-{base}", "lml", base, gamma=g, rank=k))
    if level == "full":
        for base in ("dpm++3m", "dpm"):  # on top of the stronger stock solvers (Gaussian only)
            for g in gammas:
                specs.append(make_spec(f"lml-g{g:g}-{base}", f"gamma-{base}", "lml", base, gamma=g, rank=1))
        corrected = [(c, pl, snr, r) for c, pl in ((1, "late"), (1, "early"), (2, "late")) for snr in (0.05, 0.15)
                     for r in (0, 2)]
        stale = [(snr, r) for snr in (0.02, 0.05, 0.15) for r in (0, 2)]
    elif level == "reduced":
        corrected = [(1, "late", snr, r) for snr in (0.05, 0.15) for r in (0, 2)] + [(1, "early", 0.05, 2)]
        stale = [(snr, r) for snr in (0.02, 0.05) for r in (0, 2)]
    else:
        corrected, stale = [(1, "late", 0.05, 2)], [(0.05, 2), (0.05, 0)]
    for c, pl, snr, r in corrected:
        specs.append(make_spec(f"lgv-{pl}{c}-snr{snr:g}-r{r}", langevin_family(r), "langevin", "dpm++2m",
                               corrected=c, placement=pl, snr=snr, rank=r, extra_nfe=True))
    for snr, r in stale:
        specs.append(make_spec(f"lgv-stale-snr{snr:g}-r{r}", langevin_family(r), "langevin", "dpm++2m",
                               corrected=0, placement="all", snr=snr, rank=r, extra_nfe=False))
    return specs


def spec_index(level: str) -> dict[str, Spec]:
    """Every spec a benchmark of grid ``level`` can have run, by id."""
    return {s.id: s for s in baseline_specs() + official_specs(tuple(FAMILY_LABELS)) + grid_specs(level)}
