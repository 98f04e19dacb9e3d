"""The README's recommended-settings table, built from the rows that every sampler study publishes.

A study (``python -m benchmarks.lml_verdict``, a flow-matching study, ...) calls :func:`publish` with its rows. They
are stored as ``benchmarks/recommended/<study>.json`` (committed with the README) and the README section
``recommended`` is rebuilt from every stored file, so a study adds or replaces its own rows and leaves the others'
alone. Rows name samplers as the one registry writes them (``lml_sampler.schedulers.registry``), so each can be
pasted into ``lml-eval sweep --samplers`` or ``make_scheduler``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from lml_sampler._io import atomic_write_json
from lml_sampler.schedulers.registry import default_discretisation, parse_sampler

from .readme import README, update_readme_section

ROWS_DIR = Path("benchmarks") / "recommended"
TIE = 0.03  # LML / stock within ±3 %: "no gain"


@dataclass(frozen=True)
class Recommendation:
    """At ``nfe`` on ``model``: the best stock sampler and the best drop-in LML scheduler measured there."""

    model: str
    nfe: int
    metric: str
    stock: str  # registry name, e.g. "dpm++2m-lu"
    stock_error: float
    lml: str | None  # registry name with its settings, e.g. "lml-dpm++2m-lu@kappa=0.001:lm_gamma=0.1"
    lml_error: float
    study: str  # the script that measured it, e.g. "lml_verdict" (python -m benchmarks.lml_verdict)

    @property
    def ratio(self) -> float:
        ok = self.lml is not None and math.isfinite(self.lml_error) and self.stock_error > 0
        return self.lml_error / self.stock_error if ok else float("nan")

    def verdict(self) -> str:
        r = self.ratio
        if not math.isfinite(r):
            return "—"
        word = "helps" if r < 1 - TIE else "hurts" if r > 1 + TIE else "no gain"
        return f"{r:.2f}× ({word})"


@dataclass(frozen=True)
class Trusted:
    """For one parent scheduler at ``nfe``: the one LML setting that helped it on every exact-score model and did not
    hurt the trained model (``lml`` None: "leave LML off", nothing did). Ratios are LML / the parent, both on the
    discretisation in the name (flow: the parent at its better shift)."""

    parent: str  # the parent scheduler, e.g. "DPMSolverMultistepScheduler (DPM-Solver++ 2M)"
    nfe: int
    lml: str | None  # registry name with its settings, e.g. "lml-dpm++2m-karras@kappa=0.001:lm_gamma=0.05"
    worst_exact: float  # the largest LML / parent ratio over the exact-score models (of the best candidate)
    worst_model: str  # the exact-score model where it is largest
    trained: float  # LML / parent on the trained model (nan: no trained model in the study)
    models: int  # exact-score models the setting was checked on
    study: str

    def helps(self) -> bool:
        return self.lml is not None


def save(study: str, rows: list[Recommendation], folder: str | os.PathLike = ROWS_DIR,
         trusted: list[Trusted] = ()) -> Path:
    """Replace the stored rows of ``study`` (its per-model rows and its trusted settings)."""
    if any(r.study != study for r in [*rows, *trusted]):
        raise ValueError(f"every row of study {study!r} must have study={study!r}")
    return atomic_write_json(Path(folder) / f"{study}.json",
                             {"best": [asdict(r) for r in rows], "trusted": [asdict(t) for t in trusted]})


#: Studies listed first, in this order (VP before flow matching); any other study follows in file-name order.
STUDY_ORDER = ("lml_verdict", "flow_verdict")


def load_all(folder: str | os.PathLike = ROWS_DIR) -> tuple[list[Recommendation], list[Trusted]]:
    """Every stored row and trusted setting, studies in :data:`STUDY_ORDER`, then in file-name order."""
    rows, trusted = [], []
    rank = {name: i for i, name in enumerate(STUDY_ORDER)}
    for path in sorted(Path(folder).glob("*.json"), key=lambda p: (rank.get(p.stem, len(rank)), p.stem)):
        data = json.loads(path.read_text())
        rows += [Recommendation(**d) for d in data["best"]]
        trusted += [Trusted(**d) for d in data["trusted"]]
    return rows, trusted


def _error(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else "diverged"


def on_default_steps(name: str) -> bool:
    """Whether a registry sampler name runs its solver's default time steps."""
    parsed = parse_sampler(name)
    return parsed.discretisation in (None, default_discretisation(parsed.solver))


def trusted_markdown(trusted: list[Trusted]) -> list[str]:
    """The "settings a user can trust" table: one row per parent scheduler and NFE."""
    if not trusted:
        return []
    lines = ["**Settings a user can trust.** Per parent scheduler and NFE, the one LML setting (discretisation, γ, "
             "rank from the grid every model ran) whose worst LML / parent ratio over the exact-score models is "
             f"smallest among those that do not hurt the trained model (ratio ≤ {1 + TIE:.2f}); it is recommended "
             f"only if that worst ratio is below {1 - TIE:.2f} (it helped on every model), else \"leave LML off\". "
             "Selected and measured on seed set 0; the parent runs on the same discretisation.", "",
             "| parent scheduler | NFE | recommendation | worst LML / parent (exact models) | LML / parent "
             "(trained digits) | measured by |", "|---|---|---|---|---|---|"]
    for t in trusted:
        rec = f"`{t.lml}`" if t.helps() else "**leave LML off**"
        trained = f"{t.trained:.2f}" if math.isfinite(t.trained) else "not run"
        worst = f"{t.worst_exact:.2f} ({t.worst_model}, {t.models} models)" if math.isfinite(t.worst_exact) else "—"
        lines.append(f"| {t.parent} | {t.nfe} | {rec} | {worst} | {trained} | `python -m benchmarks.{t.study}` |")
    helped = sum(t.helps() for t in trusted)
    lines += ["", f"LML is recommended in {helped} of {len(trusted)} (parent, NFE) cells; the released default "
              "(κ = 0, the parent exactly) stays the default."]
    return lines


def markdown(rows: list[Recommendation], trusted: list[Trusted] = ()) -> str:
    moved = [r for r in rows if not on_default_steps(r.stock)]
    suffixes = sorted({parse_sampler(r.stock).discretisation for r in moved})
    lines = ["Generated from the studies' results (`benchmarks/recommended/*.json`; each study's script rewrites "
             f"its own rows). **Use a good schedule first**: in {len(moved)} of {len(rows)} rows the best stock "
             "sampler does not run its solver's default time steps"
             + (f" (it runs `{'`, `'.join(suffixes)}`)" if suffixes else "") + ". The best drop-in LML "
             "scheduler (any solver and discretisation, the setting in its name) has the error in the \"LML / "
             "stock\" column relative to it.",
             "",
             "| model | NFE | best stock sampler | its error | LML on top (best drop-in setting) | its error | "
             "LML / stock | measured by |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lml = f"`{r.lml}`" if r.lml else "—"
        lines.append(f"| {r.model} | {r.nfe} | `{r.stock}` | {_error(r.stock_error)} | {lml} | "
                     f"{_error(r.lml_error)} | {r.verdict()} | `python -m benchmarks.{r.study}` |")
    metrics = list(dict.fromkeys(f"{r.model}: {r.metric}" for r in rows))
    lines += ["", "Errors: " + "; ".join(metrics) + "."]
    if trusted:
        lines = trusted_markdown(list(trusted)) + ["", "**Best per model.** " + lines[0], *lines[1:]]
    return "\n".join(lines)


def publish(study: str, rows: list[Recommendation], readme: str | os.PathLike = README,
            folder: str | os.PathLike = ROWS_DIR, trusted: list[Trusted] = ()) -> str:
    """Store ``study``'s rows and rebuild the README section ``recommended`` from every study's; returns it."""
    save(study, rows, folder, trusted)
    md = markdown(*load_all(folder))
    update_readme_section("recommended", md, readme)
    return md
