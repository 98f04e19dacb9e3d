"""The study's report: the Markdown of the README section ``verdict``, the recommended settings and the plots.

Nothing here touches repository files: :func:`write_plots` writes into the run folder, :func:`markdown` returns
text and :func:`recommendations` returns rows; ``python -m benchmarks.lml_verdict`` publishes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from benchmarks.recommended import Recommendation, Trusted
from lml_sampler.schedulers._lm import auto_lm_gamma

from .benchmarks import BENCHMARKS
from .runner import Best, BenchmarkResults, Row
from .specs import (
    DISCRETISATION_LABELS,
    GOAL_EXACT,
    GOAL_NFES,
    GOAL_TRAINED,
    LML_PARENTS,
    METHOD_LABELS,
    NFES,
    ODE_REFERENCE_NFE,
    SOLVER_LABELS,
    STOCK_SOLVERS,
    TIE,
    TUNE_SEED,
    default_stock,
    family,
    family_base,
    family_label,
    family_method,
    split_stock,
    stock_label,
)

PLOT_NAMES = {"verdict": "lml_verdict.png", "ratio": "lml_verdict_ratio.png"}
#: Short model names of the tables, by benchmark.
SHORT = {"gaussian": "Gaussian", "gmm": "GMM", "empirical": "empirical digits", "bundled": "trained digits DDPM"}
BENCHMARK_ORDER = tuple(BENCHMARKS)
#: The NFEs of the recommended-settings table.
RECOMMENDED_NFES = (5, 10, 20)


def format_value(x: float) -> str:
    if not math.isfinite(x):
        return "diverged" if x == float("inf") else "—"
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.3g}"


def format_ratio(x: float) -> str:
    return f"{x:.2f}×" if math.isfinite(x) else "—"


def format_mean_spread(row: Row, nfe: int) -> str:
    """``mean ± half-range`` over the report seed sets (the mean alone when they agree)."""
    m, s = row.mean(nfe), row.half_range(nfe)
    if not math.isfinite(m):
        return format_value(m)
    return format_value(m) if s == 0 or not math.isfinite(s) else f"{format_value(m)} ± {s:.2g}"


def ratio(a: Best, b: Best) -> float:
    return a.value / b.value if a.found and b.found and b.value > 0 else float("nan")


def short_name(best: Best) -> str:
    """The sampler behind a best cell as a registry name (`lml-eval` takes it), or a description."""
    if not best.found:
        return "—"
    spec = best.spec
    name = spec.sampler_name() if spec is not None else None
    if name is not None:
        return f"`{name}`"
    method, base = family_method(best.family), family_base(best.family)
    setting = f" ({spec.describe()})" if spec is not None and spec.describe() else ""
    if method.startswith("langevin"):
        return f"`{base}` + {'LM-preconditioned' if method == 'langevin-lm' else 'isotropic'} Langevin{setting}"
    return f"{METHOD_LABELS[method]} on `{base}`"


def goal_for(name: str) -> float:
    return GOAL_TRAINED if name == "bundled" else GOAL_EXACT


# ----------------------------------------------------------------------------------------------------------------------
# The verdict
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One (benchmark, NFE) of the headline table."""

    bench: str
    nfe: int
    stock: Best
    lml: Best
    drop_in: Best
    stock_default: Best
    lml_default: Best

    @property
    def ratio(self) -> float:
        return ratio(self.lml, self.stock)

    @property
    def drop_in_ratio(self) -> float:
        return ratio(self.drop_in, self.stock)

    @property
    def default_ratio(self) -> float:
        return ratio(self.lml_default, self.stock_default)


def headline(results: dict[str, BenchmarkResults]) -> list[Cell]:
    return [Cell(name, nfe, res.best_stock(nfe), res.best_lml(nfe), res.best_lml(nfe, deterministic=True),
                 res.best_stock(nfe, default_only=True), res.best_lml(nfe, default_only=True))
            for name, res in results.items() for nfe in res.nfes]


def targets(cells: list[Cell], results: dict[str, BenchmarkResults]) -> tuple[bool, list[str]]:
    """Whether every target holds, and one phrase per benchmark (``"Gaussian 0.95× / 1.10× (goal 0.8×)"``)."""
    ok, parts = True, []
    for name in results:
        goal = goal_for(name)
        rs = [c.ratio for c in cells if c.bench == name and c.nfe in GOAL_NFES]
        if len(rs) < len(GOAL_NFES):
            ok = False
            parts.append(f"{SHORT[name]}: not run at NFE {' and '.join(map(str, GOAL_NFES))}")
            continue
        met = all(math.isfinite(r) and r <= goal for r in rs)
        ok &= met
        parts.append(f"{SHORT[name]} {' / '.join(format_ratio(r) for r in rs)} (goal ≤ {goal:g}×: "
                     f"{'met' if met else 'not met'})")
    return ok and len(results) == 4, parts


def _grouped(cells: list[Cell], attr: str) -> str:
    groups: dict[str, list[str]] = {"better": [], "on par (within 3 %)": [], "worse": []}
    for c in cells:
        r = getattr(c, attr)
        if not math.isfinite(r):
            continue
        key = "better" if r < 1 - TIE else "worse" if r > 1 + TIE else "on par (within 3 %)"
        groups[key].append(f"{c.nfe} ({r:.2f}×)")
    return "; ".join(f"{k} at NFE {', '.join(v)}" for k, v in groups.items() if v)


def _schedules_of_gains(cells: list[Cell]) -> str:
    """On top of which discretisations the winning LML cells ran, by count."""
    count: dict[str, int] = {}
    for c in cells:
        if c.lml.found and c.ratio < 1 - TIE:
            disc = DISCRETISATION_LABELS[split_stock(family_base(c.lml.family))[1]]
            count[disc] = count.get(disc, 0) + 1
    return ", ".join(f"{d} ({n})" for d, n in sorted(count.items(), key=lambda t: -t[1]))


def verdict_lines(results: dict[str, BenchmarkResults]) -> list[str]:
    cells = headline(results)
    out = []
    for name in results:
        mine = [c for c in cells if c.bench == name]
        where = _schedules_of_gains(mine)
        out.append(f"- {SHORT[name]}: best LML / best stock — {_grouped(mine, 'ratio')}"
                   + (f"; the LML gains run on top of {where}" if where else "") + ". "
                   f"Drop-in LML only (deterministic, no extra NFE): {_grouped(mine, 'drop_in_ratio')}. "
                   f"Earlier protocol (every sampler on its default steps): {_grouped(mine, 'default_ratio')}.")
        res = results[name]
        lm = [(n, res.best(n, lambda f: family_method(f) == "langevin-lm").value,
               res.best(n, lambda f: family_method(f) == "langevin-iso").value) for n in res.nfes]
        if any(math.isfinite(a) and math.isfinite(b) for _, a, b in lm):
            out.append("  - Control for the Langevin corrector: LM-preconditioned / isotropic (each at its best "
                       "discretisation and setting) = " + ", ".join(
                           f"{a / b:.2f} (NFE {n})" for n, a, b in lm if math.isfinite(a) and math.isfinite(b))
                       + "; a ratio near 1 means the corrector's gain is not an LM effect.")
    return out


def headline_table(results: dict[str, BenchmarkResults]) -> list[str]:
    lines = ["**Best LML against the best stock solver, each over every discretisation** (mean over the report seed "
             "sets; the winning sampler as an `lml-eval` name; γ tuned on seed set 0). Last column: the earlier "
             "protocol, every solver on its default steps (`linspace`; DDIM `trailing`), where the earlier "
             "\"LML helps\" claim came from.",
             "",
             "| model | NFE | best stock | error | best LML | error | best LML / best stock | drop-in LML / best "
             "stock | default steps only: LML / stock |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in headline(results):
        lines.append(f"| {SHORT[c.bench]} | {c.nfe} | {short_name(c.stock)} | {format_value(c.stock.value)} | "
                     f"{short_name(c.lml)} | {format_value(c.lml.value)} | **{format_ratio(c.ratio)}** | "
                     f"{format_ratio(c.drop_in_ratio)} | {format_ratio(c.default_ratio)} |")
    lines.append("")
    return lines


@dataclass(frozen=True)
class Instability:
    stock: str
    cases: tuple[tuple[int, float, float], ...]  # (NFE, error, error of the solver's default steps)


def instabilities(res: BenchmarkResults) -> tuple[list[Instability], list[str]]:
    """Stock discretisations that beat their solver's default steps at some NFE but are worse (or diverge) at
    another, and those that never beat the default."""
    unstable, never = [], []
    for fam, row in res.rows.items():
        if family_method(fam) != "stock":
            continue
        base = family_base(fam)
        default = res.rows.get(family("stock", default_stock(split_stock(base)[0])))
        if default is None or default is row:
            continue
        worse = [(n, row.mean(n), default.mean(n)) for n in res.nfes
                 if not math.isfinite(row.mean(n)) or row.mean(n) > default.mean(n)]
        if len(worse) == len(res.nfes):
            never.append(base)
        elif worse:
            unstable.append(Instability(base, tuple(worse)))
    return unstable, never


def instability_lines(results: dict[str, BenchmarkResults]) -> list[str]:
    lines = ["**Unstable stock discretisations** (better than the solver's default steps at some NFE, worse or "
             "diverged at another; error vs the default's error; not hidden from the best-stock column, which "
             "simply never picks them there):", ""]
    for name, res in results.items():
        unstable, never = instabilities(res)
        cases = "; ".join(f"{stock_label(u.stock)}: " + ", ".join(
            f"NFE {n} {format_value(v)} vs {format_value(d)}" for n, v, d in u.cases) for u in unstable)
        lines.append(f"- {SHORT[name]}: {cases or 'none'}."
                     + (f" Never better than the default steps: {', '.join(f'`{b}`' for b in never)}." if never
                        else ""))
    lines.append("")
    return lines


# ----------------------------------------------------------------------------------------------------------------------
# Per-benchmark tables
# ----------------------------------------------------------------------------------------------------------------------


def _best_over(res: BenchmarkResults, nfe: int, keep) -> tuple[Best, str]:
    b = res.best(nfe, keep)
    if not b.found:
        ran = any(keep(f) and row.has(nfe) for f, row in res.rows.items())
        return b, "diverged" if ran else "—"
    disc = DISCRETISATION_LABELS[split_stock(family_base(b.family))[1]]
    setting = b.spec.describe() if b.spec is not None else ""
    return b, f"{format_value(b.value)} ({disc}{', ' + setting if setting else ''})"


def summary_table(res: BenchmarkResults) -> list[str]:
    """Each solver at its best discretisation, each LML method on each parent at its best discretisation."""
    lines = ["| sampler (best discretisation per NFE) | " + " | ".join(f"NFE {n}" for n in res.nfes) + " |",
             "|" + "---|" * (len(res.nfes) + 1)]
    groups = [(SOLVER_LABELS[s], lambda f, s=s: family_method(f) == "stock" and split_stock(family_base(f))[0] == s)
              for s in STOCK_SOLVERS]
    methods = list(dict.fromkeys(family_method(f) for f in res.rows if family_method(f) != "stock"))
    for m in methods:
        for p in LML_PARENTS:
            groups.append((f"{METHOD_LABELS[m]} on {SOLVER_LABELS[p]}",
                           lambda f, m=m, p=p: family_method(f) == m and split_stock(family_base(f))[0] == p))
    for label, keep in groups:
        if not any(keep(f) for f in res.rows):
            continue
        cells = [_best_over(res, n, keep)[1] for n in res.nfes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def full_table(res: BenchmarkResults) -> list[str]:
    lines = ["| sampler | tuned setting (NFE 10) | " + " | ".join(f"NFE {n}" for n in res.nfes) + " |",
             "|" + "---|" * (len(res.nfes) + 2)]
    for row in res.rows.values():
        cells = [format_mean_spread(row, n) for n in res.nfes]
        lines.append(f"| {row.label} | {row.settings.get(10, '')} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def benchmark_section(res: BenchmarkResults) -> list[str]:
    floor_txt = ", ".join(f"{f.value:.3g}" for f in res.floors)
    meta = res.meta
    lml_on = ("every discretisation" if meta.lml_top is None
              else f"the default and the {meta.lml_top} best other discretisations of each parent")
    lines = [f"**{meta.title}** — {meta.metric}; N = {meta.n} samples per cell; reported seed set(s) "
             f"{', '.join(map(str, meta.report_seeds))}; tuned at NFE {', '.join(map(str, meta.tune_nfes))} on seed "
             f"set {TUNE_SEED}; LML γ family on {lml_on}; estimator floor (N exact samples) {floor_txt}."]
    if res.name == "gaussian" and res.floors:
        full = ", ".join(f"{f.fd_full:.3g}" for f in res.floors)
        se = res.se_nfe10
        se_txt = f"; jackknife SE at NFE 10 {min(se):.2g}–{max(se):.2g}" if se else ""
        lines += ["", "Linear samplers: exact transfer-matrix FD. Others: stationary spectral FD with the "
                      f"input-noise control variate (exact for linear samplers{se_txt}; the plain full-covariance "
                      f"sample FD would have a floor of {full} at this N)."]
    lines += [""] + summary_table(res)
    lines += ["<details><summary>every sampler and discretisation</summary>", ""] + full_table(res) + ["</details>",
                                                                                                      ""]
    return lines


def _official_table(g: BenchmarkResults) -> list[str]:
    lines = ["**LML official formula at κ = 0: fp32 rounding, fp64 identity** (Gaussian, relative "
             "deviation ‖x_LML − x_stock‖/‖x_stock‖ of the final samples, same noise, seed set 1; NaN: the released "
             "expression returned NaN, ‖w‖ = 0 → 0/0. The 'fp64' runs are fp64 model and LM arithmetic, but "
             "diffusers' `DPMSolverMultistepScheduler.step` casts the sample to float32, so the last column "
             "is the scale of plain fp32 rounding in these runs; docs/lml.md §2)",
             "",
             "| variant | NFE | λ | fp32 LML vs fp32 stock | fp64 LML vs fp64 stock | fp32 stock vs fp64 stock |",
             "|---|---|---|---|---|---|"]
    for fam, by_nfe in g.official.items():
        for nfe, c in by_nfe.items():
            dev32 = c.fp32_vs_stock_fp32
            lines.append(f"| {family_label(fam)} | {nfe} | {c.lamb:.3g} | "
                         f"{'NaN' if not math.isfinite(dev32) else f'{dev32:.2e}'} "
                         f"| {c.fp64_vs_stock_fp64:.1e} | {c.stock_fp32_vs_fp64:.1e} |")
    lines.append("")
    return lines


def _diagnostic_table(g: BenchmarkResults) -> list[str]:
    lines = ["**Where the Gaussian error sits** (NFE 10, seed set 1; c_f/p_f = output / true power, mean over "
             "the radial band |f| ≤ 0.125, 0.125–0.3, > 0.3 cycles/pixel; FD split by band; last column: "
             f"distance of each sample to the converged ODE solution from the same noise, DPM-Solver 3 at "
             f"{ODE_REFERENCE_NFE} steps)",
             "",
             "| sampler | tr C / tr Σ | low c/p | mid c/p | high c/p | FD low | FD mid | FD high | "
             "‖x − x_ODE‖/‖x_ODE‖ |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d in g.diagnostics:
        setting = d.spec.describe()
        b = d.bands
        lines.append(f"| {family_label(d.spec.family)}{f' ({setting})' if setting else ''} | {b.var_ratio:.3f} | "
                     f"{b.low_power_ratio:.3f} | {b.mid_power_ratio:.3f} | {b.high_power_ratio:.3f} | "
                     f"{b.low_fd:.3f} | {b.mid_fd:.3f} | {b.high_fd:.3f} | {d.ode_error:.3f} |")
    lines.append("")
    by_family = {d.spec.family: d for d in g.diagnostics}
    reading = []
    for base in dict.fromkeys(family_base(d.spec.family) for d in g.diagnostics
                              if split_stock(family_base(d.spec.family))[0] == "dpm++2m"):
        stock, lml = by_family.get(family("stock", base)), by_family.get(family("gamma", base))
        if stock is None or lml is None:
            continue
        r, m = stock.bands, lml.bands
        reading.append(
            f"on {DISCRETISATION_LABELS[split_stock(base)[1]]} steps DPM-Solver++ 2M keeps {r.high_power_ratio:.2f} "
            f"of the true high-frequency power and {r.var_ratio:.2f} of the total variance ({r.high_fd / max(r.total_fd, 1e-12):.0%} "
            f"of its FD {r.total_fd:.3g} in the high band); LML ({lml.spec.describe()}) moves the band powers "
            f"{r.low_power_ratio:.2f}/{r.mid_power_ratio:.2f}/{r.high_power_ratio:.2f} → "
            f"{m.low_power_ratio:.2f}/{m.mid_power_ratio:.2f}/{m.high_power_ratio:.2f} (low/mid/high), FD "
            f"{r.total_fd:.3g} → {m.total_fd:.3g}, distance to the ODE solution {stock.ode_error:.3f} → "
            f"{lml.ode_error:.3f}")
    if reading:
        lines += ["Reading: " + "; ".join(reading) + ". LML renormalises each increment to ‖v‖, so it can only "
                  "reshuffle power between frequencies; it pays where the stock solver is over-smooth (few, badly "
                  "placed steps) and has little to fix once the steps are well placed.", ""]
    return lines


def target_sentence(results: dict[str, BenchmarkResults]) -> str:
    """The section's first sentence: whether the targets are met, with the ratios."""
    ok, parts = targets(headline(results), results)
    goal_nfes = " and ".join(map(str, GOAL_NFES))
    missing = [SHORT[n] for n in BENCHMARK_ORDER if n not in results]
    return (f"**The LML targets are {'met' if ok else 'not met'}**: best LML / best stock, both over every time "
            f"discretisation, at NFE {goal_nfes} — " + "; ".join(parts)
            + (f"; {', '.join(missing)}: not run" if missing else "") + ".")


def coverage_lines(results: dict[str, BenchmarkResults]) -> list[str]:
    """Which cells this section rests on: per benchmark the NFEs run and tuned, N, the grid and the report rows."""
    out = ["Cells run:"]
    for name in BENCHMARK_ORDER:
        res = results.get(name)
        if res is None:
            out.append(f"- {SHORT[name]}: not run.")
            continue
        m = res.meta
        missing = [n for n in NFES if n not in m.nfes]
        ran = [n for n in m.stock if all(res.rows[f"stock:{n}"].has(nfe) for nfe in m.nfes)]
        stock = ("every stock solver × discretisation" if len(ran) == len(m.stock) else
                 f"{len(ran)} of the {len(m.stock)} stock solver × discretisation names (the {2 * m.report_top} best "
                 "by seed set 0 at each NFE and every solver's default steps)")
        rows = ("every tuned family" if m.report_top is None else
                f"the families chosen on seed set 0 (the {m.report_top} best LML and the {m.report_top} best "
                "deterministic LML families, the best on a default discretisation, the best LM-preconditioned "
                "corrector, the isotropic controls)")
        out.append(f"- {SHORT[name]}: NFE {', '.join(map(str, m.nfes))}"
                   + (f" (not run: NFE {', '.join(map(str, missing))})" if missing else "")
                   + f"; tuned on seed set {TUNE_SEED} at NFE {', '.join(map(str, m.tune_nfes))} "
                   f"(other NFEs take the nearest tuned NFE's setting), {m.grid_level} grid"
                   + ("" if m.lml_top is None else f", γ family on the default and the {m.lml_top} best other "
                      "discretisations of each LML parent")
                   + f"; N = {m.n}; report seed sets {', '.join(map(str, m.report_seeds))}: {rows}; {stock}.")
    return out


def markdown(results: dict[str, BenchmarkResults], quick: bool, plot_link: str, ratio_link: str | None = None) -> str:
    """The README section ``verdict``; ``plot_link`` (and ``ratio_link``) are where the plots are linked from."""
    lines = [
        target_sentence(results),
        "",
        "Generated by `python -m benchmarks.lml_verdict` (cells cached under `runs/lml_verdict/`; "
        "`--report-only` rebuilds this section)." + (" **Quick smoke run: not the study.**" if quick else ""),
        "",
        "Setup: exact-score models, so the error is the sampler's alone, plus the trained digits model. Every stock "
        "solver (DDIM, DPM-Solver++ 2M/3M, DPM-Solver 3, UniPC, DEIS, Euler) runs with every time discretisation "
        "its diffusers class offers (`linspace`, `leading`, `trailing` spacing; Karras, exponential and beta σ; "
        "uniform λ = `use_lu_lambdas` for DPM-Solver), from one config (linear betas 1e-4→0.02, 1000 steps, "
        "`clip_sample=False`); the \"best stock\" of a cell is the best of all of them on the report seed sets. "
        "LML runs on top of the same "
        "solvers and discretisations: stable γ = `lm_gamma=γ, kappa=1e-3` (rank 1 or k; docs/lml.md §4, §6), the "
        "released fp32 expression at κ=0 with the λ of the released code's README (`linspace` only, as released), "
        "and the Langevin corrector of `lml_sampler.sampling.sample` (docs/lml.md §7), counted at equal NFE. γ, k "
        "and the corrector settings are tuned per (method, solver, discretisation) on seed set 0; values are means "
        "over the report seed sets (1 and 2; the trained model: 1). The rank-k family runs on DPM-Solver++ 2M/3M "
        "on their default and 2 best other discretisations, the Langevin corrector on DPM-Solver++ 2M on its "
        "default and its best one (\"best\": stock error on seed set 0, mean rank over the tuned NFEs).",
        "",
        *coverage_lines(results),
        "",
        "**Verdict**",
        "",
        *verdict_lines(results),
        "",
        *headline_table(results),
        *instability_lines(results),
        *gamma_transfer_lines(results),
    ]
    if ratio_link:
        lines += [f"![best LML / best stock]({ratio_link})", ""]
    for res in results.values():
        lines += benchmark_section(res)
    g = results.get("gaussian")
    if g and g.official:
        lines += _official_table(g)
    if g and g.diagnostics:
        lines += _diagnostic_table(g)
    total_cpu = sum(r.cpu_s for r in results.values())
    total_wall = sum(r.wall_s for r in results.values())
    lines.append(f"Runtime: {total_cpu / 60:.1f} CPU minutes ({total_wall / 60:.1f} min wall) summed over all cells, "
                 "one thread.")
    lines.append("")
    lines.append(f"![error vs NFE]({plot_link})")
    return "\n".join(lines)


def _gain(r: float) -> str:
    if not math.isfinite(r):
        return "—"
    return f"{r:.2f}× ({'helps' if r < 1 - TIE else 'hurts' if r > 1 + TIE else 'no gain'})"


def tuning_lines(results: dict[str, BenchmarkResults]) -> list[str]:
    """The README section ``tuning`` (inside "Read this before tuning"): what the study says to do, from its
    numbers: how much a good discretisation buys first, then what LML adds on top of it, per model at the goal
    NFEs."""
    cells = [c for c in headline(results) if c.nfe in GOAL_NFES]
    schedule, lml, default = [], [], []
    for c in cells:
        if c.stock.found and c.stock_default.found:
            schedule.append(f"{SHORT[c.bench]} NFE {c.nfe}: `{c.stock_default.spec.sampler_name()}` "
                            f"{format_value(c.stock_default.value)} → `{c.stock.spec.sampler_name()}` "
                            f"{format_value(c.stock.value)} ({c.stock_default.value / c.stock.value:.1f}× lower)")
        if c.stock.found and c.drop_in.found:
            lml.append(f"{SHORT[c.bench]} NFE {c.nfe}: {short_name(c.drop_in)} {_gain(c.drop_in_ratio)}")
        if c.stock.found and c.lml_default.found:
            default.append((f"{SHORT[c.bench]} NFE {c.nfe}", c.lml_default.value / c.stock.value))
    if not schedule:
        return ["(the study has not run yet: `python -m benchmarks.lml_verdict`)"]
    return [
        "Measured by `python -m benchmarks.lml_verdict` (\"Does LML help?\" below; regenerated with it):",
        "",
        "- **Use a good schedule first.** Best stock solver on its default steps → best stock solver on its best "
        "discretisation (`-karras` = `use_karras_sigmas=True`, `-lu` = `use_lu_lambdas=True`, `-exp` = "
        "`use_exponential_sigmas=True`): " + "; ".join(schedule) + ".",
        "- **Then LML on top, if at all.** Best drop-in LML scheduler (any solver and discretisation; γ tuned on "
        "seed set 0) / best stock: " + "; ".join(lml) + ".",
        ("- **LML does not replace the schedule.**" if all(r > 1 for _, r in default)
         else "- **LML on default steps against a good schedule.**")
        + " The best LML on its solver's default steps / the best stock solver on its best discretisation: "
        + "; ".join(f"{where}: {r:.2f}×" for where, r in default) + ".",
    ]


# ----------------------------------------------------------------------------------------------------------------------
# Recommended settings
# ----------------------------------------------------------------------------------------------------------------------


def recommendations(results: dict[str, BenchmarkResults]) -> list[Recommendation]:
    """One row per benchmark and NFE of :data:`RECOMMENDED_NFES`: the best stock sampler, and the best drop-in LML
    scheduler on top of a discretisation (a scheduler name, so the Langevin corrector is not a candidate)."""
    rows = []
    for name, res in results.items():
        for nfe in RECOMMENDED_NFES:
            if nfe not in res.nfes:
                continue
            stock = res.best_stock(nfe)
            lml = res.best(nfe, lambda f: family_method(f) in ("gamma", "rank"))
            if not stock.found:
                continue
            rows.append(Recommendation(
                model=res.meta.title, nfe=nfe, metric=res.meta.metric, stock=stock.spec.sampler_name(),
                stock_error=stock.value, lml=lml.spec.sampler_name() if lml.found else None,
                lml_error=lml.value if lml.found else float("nan"), study="lml_verdict"))
    return rows


#: The parent of the γ-transfer check: DPM-Solver++ 2M on its diffusers default steps (every model runs its γ family).
GAMMA_RULE_PARENT = "dpm++2m"


def gamma_transfer(results: dict[str, BenchmarkResults]) -> tuple[list[int], dict[str, dict[int, tuple[float, float]]],
                                                                   dict[str, dict[int, float]], dict[int, float]]:
    """Whether one γ per NFE transfers across models, for rank-1 LML on :data:`GAMMA_RULE_PARENT`'s default steps.

    Returns ``(nfes, best, held_out, rule)``: ``best[model][nfe] = (γ, LML/parent)`` of the model's own best γ on
    seed set 0, ``held_out[model][nfe]`` the LML/parent ratio on ``model`` of the γ chosen on the *other* models (the
    one whose worst ratio over them is smallest; γ from the grid every model ran), i.e. an ``lm_gamma="auto"`` rule
    validated on a model it was not fitted on, and ``rule[nfe]`` the γ chosen that way on all models.
    """
    base = default_stock(GAMMA_RULE_PARENT)
    grids = {name: {s.settings["gamma"]: s.id for s in res.meta.grid_specs()
                    if s.kind == "lml" and s.base == base and s.settings["rank"] == 1} for name, res in results.items()}
    grids = {n: g for n, g in grids.items() if g}
    if len(grids) < 2:
        return [], {}, {}, {}
    common = sorted(set.intersection(*(set(g) for g in grids.values())))
    nfes = sorted(set.intersection(*(set(results[n].meta.tune_nfes) for n in grids)))

    best: dict[str, dict[int, tuple[float, float]]] = {}
    held_out: dict[str, dict[int, float]] = {}
    rule: dict[int, float] = {}
    for nfe in nfes:
        table = {n: {g: r for g in grids[n] if (r := results[n].tuning_ratio(grids[n][g], base, nfe)) is not None}
                 for n in grids}
        if not all(table[n] and all(g in table[n] for g in common) for n in grids):
            continue
        for n in grids:
            g = min(table[n], key=table[n].get)
            best.setdefault(n, {})[nfe] = (g, table[n][g])
            others = [m for m in grids if m != n]
            chosen = min(common, key=lambda g: max(table[m][g] for m in others))
            held_out.setdefault(n, {})[nfe] = table[n][chosen]
        rule[nfe] = min(common, key=lambda g: max(table[m][g] for m in grids))
    return [k for k in nfes if any(k in b for b in best.values())], best, held_out, rule


def gamma_transfer_lines(results: dict[str, BenchmarkResults]) -> list[str]:
    nfes, best, held_out, rule = gamma_transfer(results)
    if not nfes:
        return []
    lines = [f"**Does one γ per NFE transfer across models?** (an `lm_gamma=\"auto\"` rule) Rank-1 LML on "
             f"`{default_stock(GAMMA_RULE_PARENT)}`, seed set 0: each model's best γ with its LML / parent ratio, and the "
             "ratio on that model of the γ chosen on the *other* models (smallest worst ratio over them, from the γ "
             "grid every model ran): a rule fitted without the model, validated on it.", "",
             "| model | " + " | ".join(f"NFE {k}: best γ (ratio) | held-out rule" for k in nfes) + " |",
             "|---" * (2 * len(nfes) + 1) + "|"]
    for name, by_nfe in best.items():
        cells = []
        for k in nfes:
            if k in by_nfe:
                g, r = by_nfe[k]
                cells += [f"{g:g} ({r:.2f})", f"{held_out[name][k]:.2f}"]
            else:
                cells += ["—", "—"]
        lines.append(f"| {SHORT[name]} | " + " | ".join(cells) + " |")
    hurt = [(SHORT[n], k, r) for n, v in held_out.items() for k, r in v.items() if r > 1 + TIE]
    spread = {k: [best[n][k][0] for n in best if k in best[n]] for k in nfes}
    span = "; ".join(f"NFE {k}: γ {min(v):g}–{max(v):g}" for k, v in spread.items() if v)
    default = [c.lml_default.value / c.stock.value for c in headline(results)
               if c.nfe in GOAL_NFES and c.stock.found and c.lml_default.found]
    fitted = ", ".join(f"γ = {g:g} at NFE {k}" for k, g in rule.items())
    shipped = {k: auto_lm_gamma(k) for k in rule}
    same = all(shipped[k] == g for k, g in rule.items())
    auto = ("`lm_gamma=\"auto\"` (`lml_sampler.schedulers._lm.AUTO_GAMMA`) " + (
        "equals it." if same else "**differs** from it: " + ", ".join(f"NFE {k}: {shipped[k]:g}" for k in rule) + "."))
    if hurt:
        verdict = ("**A rule fitted on the other models hurts the held-out one** in " + ", ".join(
            f"{m} at NFE {k} ({r:.2f})" for m, k, r in hurt) + f"; the best γ spans {span}. Fitted on all models: "
            f"{fitted}; {auto} The rule does not transfer: tune γ per model.")
    else:
        verdict = (f"A rule fitted on the other models never hurts the held-out one ({span}). Fitted on all models: "
                   f"{fitted}; {auto} It holds on these default steps only")
        verdict += (f": LML on default steps is {min(default):.2f}–{max(default):.2f}× the error of the best stock "
                    "solver on its best discretisation (NFE 5 and 10), and on the better discretisations the setting "
                    "that helps differs per parent and model (\"Recommended settings\"): fix the discretisation "
                    "first, then tune γ there (κ = 0, the parent exactly, stays the default)." if default else ".")
    lines += ["", verdict, ""]
    return lines


#: The parent schedulers of the trusted-settings table, by LML parent solver.
PARENT_LABELS = {
    "ddim": "DDIMScheduler → LMLDDIMScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler, DPM-Solver++ 2M → LMLDPMSolverMultistepScheduler",
    "dpm++3m": "DPMSolverMultistepScheduler, DPM-Solver++ 3M → LMLDPMSolverMultistepScheduler",
    "dpm": "DPMSolverMultistepScheduler, DPM-Solver 3 → LMLDPMSolverMultistepScheduler",
}
#: The trained model: a setting must not hurt it; every other benchmark is an exact-score model.
TRAINED = "bundled"


def trusted_settings(results: dict[str, BenchmarkResults]) -> list[Trusted]:
    """Per LML parent and NFE tuned on every model: the deterministic LML spec (discretisation, γ, rank) run on
    seed set 0 by every exact-score model whose worst LML / parent ratio over them is smallest, among those whose
    ratio on the trained model is at most 1 + TIE (where the trained model's smaller grid has the spec: else its
    ratio is nan, unchecked, and a checked setting that helps is preferred); recommended (``lml`` set) only if that
    worst ratio is below 1 − TIE. The parent is the stock solver on the spec's own discretisation."""
    exact = [name for name in results if name != TRAINED]
    if not exact:
        return []
    grids = [{s.id: s for s in results[name].meta.grid_specs() if s.kind == "lml"} for name in exact]
    common = [sid for sid in grids[0] if all(sid in g for g in grids[1:])]
    nfes = sorted(set.intersection(*(set(res.meta.tune_nfes) for res in results.values())))
    out = []
    for parent in LML_PARENTS:
        candidates = [grids[0][sid] for sid in common if split_stock(grids[0][sid].base)[0] == parent]
        for nfe in nfes:
            best = None  # (worst exact ratio, its model, trained ratio, spec)
            for spec in candidates:
                ratios = {}
                for name, res in results.items():
                    r = res.tuning_ratio(spec.id, spec.base, nfe)
                    if r is None:
                        if name == TRAINED:  # not run on the trained model (its grid is smaller): unchecked there
                            continue
                        break
                    ratios[name] = r
                else:
                    trained = ratios.get(TRAINED, float("nan"))
                    if TRAINED in ratios and not trained <= 1 + TIE:  # hurt the trained model (or diverged there)
                        continue
                    model = max(exact, key=lambda n: ratios[n])
                    # a setting that helps first, among those one checked on the trained model, then the smallest
                    # worst ratio
                    key = (ratios[model] >= 1 - TIE, TRAINED not in ratios, ratios[model])
                    if best is None or key < best[0]:
                        best = (key, model, trained, spec)
            if best is None:
                continue
            (_, _, worst), model, trained, spec = best
            out.append(Trusted(parent=PARENT_LABELS[parent], nfe=nfe,
                               lml=spec.sampler_name() if worst < 1 - TIE else None, worst_exact=worst,
                               worst_model=SHORT[model], trained=trained, models=len(exact), study="lml_verdict"))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------------------


def _log_nfe_axis(ax, nfes) -> None:
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_xticks(list(nfes))
    ax.set_xticklabels([str(n) for n in nfes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("NFE")
    ax.grid(True, which="both", alpha=0.3)


def plot(results: dict[str, BenchmarkResults], path: Path) -> None:
    """Error vs NFE, one panel per benchmark: each stock solver and each LML parent at its best discretisation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    cols = 2 if len(names) > 1 else 1
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(6.2 * cols, 11), 4.3 * rows + 1.8), squeeze=False)
    colours = list(plt.get_cmap("tab10").colors)
    handles = {}
    for ax, name in zip(axes.flat, names):
        res = results[name]
        curves = [(f"{SOLVER_LABELS[s]} (stock)", dict(color=colours[i], ls="-", marker="o", lw=1.2),
                   lambda f, s=s: family_method(f) == "stock" and split_stock(family_base(f))[0] == s)
                  for i, s in enumerate(STOCK_SOLVERS)]
        curves += [(f"LML γ on {SOLVER_LABELS[p]}", dict(color=colours[STOCK_SOLVERS.index(p)], ls="--", marker="s",
                                                         lw=1.2),
                    lambda f, p=p: family_method(f) in ("gamma", "rank") and split_stock(family_base(f))[0] == p)
                   for p in LML_PARENTS]
        curves += [("best stock (any)", dict(color="k", ls="-", lw=2.6), lambda f: family_method(f) == "stock"),
                   ("best LML (any)", dict(color="crimson", ls="--", lw=2.6),
                    lambda f: family_method(f) not in ("stock", "langevin-iso"))]
        for label, style, keep in curves:
            pts = [(n, res.best(n, keep).value) for n in res.nfes]
            pts = [(n, v) for n, v in pts if math.isfinite(v)]
            if pts:
                h, = ax.plot(*zip(*pts), label=label, ms=3, **style)
                handles.setdefault(label, h)
        if res.floors:
            h = ax.axhline(res.floor, color="grey", lw=0.8, ls=":", label="estimator floor (N exact samples)")
            handles.setdefault(h.get_label(), h)
        ax.set_yscale("log")
        _log_nfe_axis(ax, res.nfes)
        ax.set_ylabel(res.meta.metric, fontsize=8)
        ax.set_title(res.meta.title, fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=4, fontsize=7.5)
    fig.suptitle("Does LML help? Error vs NFE, each sampler at its best discretisation per NFE (mean over the "
                 "report seed sets)", fontsize=10)
    fig.tight_layout(rect=(0, 1.8 / (4.3 * rows + 1.8), 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_ratio(results: dict[str, BenchmarkResults], path: Path) -> None:
    """Best LML / best stock per benchmark (solid) and the earlier default-steps ratio (dashed), against the goals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    cells = headline(results)
    fig, ax = plt.subplots(figsize=(8, 5.2))
    colours = list(plt.get_cmap("tab10").colors)
    nfes = sorted({c.nfe for c in cells})
    for i, name in enumerate(results):
        mine = [c for c in cells if c.bench == name]
        for attr, ls, what in (("ratio", "-", "every discretisation"), ("default_ratio", "--", "default steps only")):
            pts = [(c.nfe, getattr(c, attr)) for c in mine if math.isfinite(getattr(c, attr))]
            if pts:
                ax.plot(*zip(*pts), color=colours[i], ls=ls, marker="o", ms=3.5, label=f"{SHORT[name]}: {what}")
    ax.axhline(GOAL_EXACT, color="k", ls=":", lw=0.9, label=f"goal {GOAL_EXACT}× (exact-score models)")
    ax.axhline(GOAL_TRAINED, color="grey", ls=":", lw=0.9, label=f"goal {GOAL_TRAINED}× (trained model)")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(FixedLocator([0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 3.0]))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    _log_nfe_axis(ax, nfes)
    ax.set_ylabel("best LML / best stock")
    ax.set_title("Best LML over best stock: over every discretisation (solid) vs default steps only (dashed)",
                 fontsize=9)
    ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(results: dict[str, BenchmarkResults], folder: Path) -> dict[str, Path]:
    """Write the plots into ``folder`` (the run folder); returns {"verdict": path, "ratio": path}."""
    paths = {"verdict": folder / PLOT_NAMES["verdict"], "ratio": folder / PLOT_NAMES["ratio"]}
    plot(results, paths["verdict"])
    plot_ratio(results, paths["ratio"])
    return paths


__all__ = ["Cell", "headline", "instabilities", "markdown", "recommendations", "target_sentence", "targets",
           "tuning_lines", "write_plots"]
