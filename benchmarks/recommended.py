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


def save(study: str, rows: list[Recommendation], folder: str | os.PathLike = ROWS_DIR) -> Path:
    """Replace the stored rows of ``study``."""
    if any(r.study != study for r in rows):
        raise ValueError(f"every row of study {study!r} must have study={study!r}")
    return atomic_write_json(Path(folder) / f"{study}.json", [asdict(r) for r in rows])


def load_all(folder: str | os.PathLike = ROWS_DIR) -> list[Recommendation]:
    """Every stored row, studies in file-name order."""
    rows = []
    for path in sorted(Path(folder).glob("*.json")):
        rows += [Recommendation(**d) for d in json.loads(path.read_text())]
    return rows


def _error(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else "diverged"


def on_default_steps(name: str) -> bool:
    """Whether a registry sampler name runs its solver's default time steps."""
    parsed = parse_sampler(name)
    return parsed.discretisation in (None, default_discretisation(parsed.solver))


def markdown(rows: list[Recommendation]) -> str:
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
    return "\n".join(lines)


def publish(study: str, rows: list[Recommendation], readme: str | os.PathLike = README,
            folder: str | os.PathLike = ROWS_DIR) -> str:
    """Store ``study``'s rows and rebuild the README section ``recommended`` from every study's; returns it."""
    save(study, rows, folder)
    md = markdown(load_all(folder))
    update_readme_section("recommended", md, readme)
    return md
