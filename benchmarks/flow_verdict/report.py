"""The README section of the flow study and its plot, rebuilt from the stored cells alone."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lml_sampler._io import CellStore
from lml_sampler.schedulers._lm import AUTO_GAMMA, auto_lm_gamma
from lml_sampler.schedulers.registry import format_sampler

from benchmarks.recommended import Recommendation, Trusted

from .models import BENCHMARKS, CFG_REFERENCE
from .runner import all_specs, cell_key, cfg_key, cfg_specs, select, select_cfg, stored
from .specs import CFG_NFES, FAMILY_LABELS, GUIDANCE_SCALES, REPORT_SEEDS, STOCK_LABELS, TIE, TUNE_SEED, FlowSpec

LML_FAMILIES = tuple(FAMILY_LABELS)
STOCK_FAMILIES = tuple(STOCK_LABELS)
_LEVELS = ("full", "reduced", "quick")


def _index() -> dict[str, FlowSpec]:
    out = {}
    for level in _LEVELS:
        for s in all_specs(level) + cfg_specs("vp", level) + cfg_specs("flow", level):
            out[s.id] = s
    return out


@dataclass
class Entry:
    """One family at one NFE: the spec chosen on seed set 0, its seed-0 value and its values on the report sets."""

    spec: FlowSpec
    tune: float
    values: list[float]
    nfe_used: int

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")

    @property
    def half_range(self) -> float:
        return float((max(self.values) - min(self.values)) / 2) if len(self.values) > 1 else float("nan")


def _entries(store, key_fn, chosen, nfes) -> dict[str, dict[int, Entry]]:
    out: dict[str, dict[int, Entry]] = {}
    for (family, nfe), spec in chosen.items():
        if nfe not in nfes:
            continue
        tune = stored(store, key_fn(spec.id, nfe, TUNE_SEED))
        cells = [stored(store, key_fn(spec.id, nfe, s)) for s in REPORT_SEEDS]
        cells = [c for c in cells if c is not None]
        if tune is None or not cells:
            continue
        out.setdefault(family, {})[nfe] = Entry(spec, tune["value"], [c["value"] for c in cells],
                                                tune.get("nfe_used", nfe))
    return out


def _best(entries: dict[str, dict[int, Entry]], families, nfe: int) -> Entry | None:
    """The family entry with the smallest seed-0 value at ``nfe`` (selection on the tuning set, as for γ)."""
    found = [entries[f][nfe] for f in families if f in entries and nfe in entries[f]]
    return min(found, key=lambda e: e.tune if math.isfinite(e.tune) else float("inf")) if found else None


def _fmt(e: Entry | None, setting: bool = True) -> str:
    if e is None:
        return "—"
    if not math.isfinite(e.mean):
        return "diverged"
    hr = f" ± {e.half_range:.2g}" if math.isfinite(e.half_range) else ""
    used = f", {e.nfe_used} NFE" if e.nfe_used != e.spec.steps(e.nfe_used) or "heun" in e.spec.sampler else ""
    return f"{e.mean:.3g}{hr}" + (f" ({e.spec.describe()}{used})" if setting else "")


def _floor(store, prefix: str) -> float:
    vals = [c["value"] for s in REPORT_SEEDS if (c := stored(store, f"{prefix}/_floor/seed{s}")) is not None]
    return float(np.mean(vals)) if vals else float("nan")


def _word(ratio: float) -> str:
    if not math.isfinite(ratio):
        return "n/a"
    if ratio < 1 - TIE:
        return f"**LML better** ({ratio:.2f})"
    if ratio > 1 + TIE:
        return f"stock better ({ratio:.2f})"
    return f"on par ({ratio:.2f})"


def benchmark_results(store: CellStore, name: str, nfes) -> dict[str, dict[int, Entry]]:
    index = _index()
    specs = [index[c["spec"]] for c in store.results(f"{name}/*/nfe*_seed{TUNE_SEED}/result.json")
             if c["spec"] in index]
    chosen = select(store, name, list({s.id: s for s in specs}.values()), nfes)
    return _entries(store, lambda sid, nfe, seed: cell_key(name, sid, nfe, seed), chosen, nfes)


def cfg_results(store: CellStore, kind: str, scale: float, nfes, transfer_from: float | None = None):
    index = _index()
    specs = [index[c["spec"]] for c in store.results(f"cfg-{kind}/w{scale:g}/*/nfe*_seed{TUNE_SEED}/result.json")
             if c["spec"] in index]
    specs = list({s.id: s for s in specs}.values())
    chosen = select_cfg(store, kind, transfer_from if transfer_from is not None else scale, specs, nfes)
    return _entries(store, lambda sid, nfe, seed: cfg_key(kind, scale, sid, nfe, seed), chosen, nfes)


def ratios(entries, nfes) -> dict[int, float]:
    out = {}
    for nfe in nfes:
        lml, stock = _best(entries, LML_FAMILIES, nfe), _best(entries, STOCK_FAMILIES, nfe)
        if lml is not None and stock is not None:
            out[nfe] = lml.mean / stock.mean
    return out


def _benchmark_table(store, name: str, nfes) -> tuple[list[str], dict[int, float]]:
    entries = benchmark_results(store, name, nfes)
    if not entries:
        return [], {}
    bench = BENCHMARKS[name](False)
    lines = [f"**{bench.title}** — {bench.metric_label}, N = "
             f"{stored(store, f'{name}/_floor/seed{TUNE_SEED}')['n']} per seed set; estimator floor (N exact "
             f"samples) {_floor(store, name):.3g}.", "",
             "| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |", "|---" * (len(nfes) + 1) + "|"]
    for fam in STOCK_FAMILIES + LML_FAMILIES:
        if fam in entries:
            label = STOCK_LABELS.get(fam) or FAMILY_LABELS[fam]
            lines.append(f"| {label} | " + " | ".join(_fmt(entries[fam].get(k)) for k in nfes) + " |")
    r = ratios(entries, nfes)
    floor = _floor(store, name)
    floored = {k for k in r if (e := _best(entries, STOCK_FAMILIES, k)) is not None and e.mean < 1.5 * floor}
    lines.append("| **best LML / best stock** | " + " | ".join(f"**{r[k]:.2f}**" if k in r else "—" for k in nfes)
                 + " |")
    return lines + ["", f"Verdict ({name}): {_verdict(r, floored)}."], r


def _precision_table(store, nfes) -> list[str]:
    cells = sorted(store.results("gaussian-flow/_dtype/*/result.json"), key=lambda c: c["nfe"])
    if not cells:
        return []
    lines = ["Low precision (Gaussian, seed set 1, the tuned stable Euler operator and its stock parent, same noise; "
             "FD of the outputs, and ‖x − x_fp32‖/‖x_fp32‖ of the final samples):", "",
             "| NFE | LML fp32 | LML bf16 | LML fp16 | LML bf16 vs fp32 | stock bf16 vs fp32 | LML fp16 vs fp32 | "
             "stock fp16 vs fp32 |", "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['nfe']} | {c['value']:.3g} | {c['lml_bf16_fd']:.3g} | {c['lml_fp16_fd']:.3g} | "
                     f"{c['lml_bf16_vs_fp32']:.2e} | {c['stock_bf16_vs_fp32']:.2e} | {c['lml_fp16_vs_fp32']:.2e} | "
                     f"{c['stock_fp16_vs_fp32']:.2e} |")
    return lines


def _cfg_table(store, kind: str) -> tuple[list[str], dict[tuple[float, int], float]]:
    scales = [w for w in GUIDANCE_SCALES if store.results(f"cfg-{kind}/w{w:g}/*/nfe*_seed{TUNE_SEED}/result.json")]
    if not scales:
        return [], {}
    nfes = CFG_NFES
    stock_fams = STOCK_FAMILIES if kind == "flow" else ("dpm++2m",)
    lml_fams = ("gamma-flow-euler",) if kind == "flow" else ("gamma-dpm++2m",)
    title = ("flow matching (velocity model): best stock flow solver (shift chosen on seed set 0) vs LML stable γ "
             "on Euler" if kind == "flow" else
             "VP (ε model): DPM-Solver++ 2M at its best discretisation (linspace / Karras / log-SNR, chosen on seed "
             "set 0) vs LML stable γ on the same solver")
    lines = [f"*{title}.* Error = FD to the moments of the converged guided ODE "
             f"({CFG_REFERENCE[kind][0]}, {CFG_REFERENCE[kind][1]} steps) from the same noise.", "",
             "| w | floor | " + " | ".join(f"stock NFE {k} | LML NFE {k} | ratio (γ@w=1)" for k in nfes) + " |",
             "|---" * (2 + 3 * len(nfes)) + "|"]
    out, moved_out = {}, {}
    for w in scales:
        own = cfg_results(store, kind, w, nfes)
        moved = cfg_results(store, kind, w, nfes, transfer_from=GUIDANCE_SCALES[0])
        cols = []
        for k in nfes:
            s, lm, tr = _best(own, stock_fams, k), _best(own, lml_fams, k), _best(moved, lml_fams, k)
            r = lm.mean / s.mean if s and lm else float("nan")
            rt = tr.mean / s.mean if s and tr else float("nan")
            out[(w, k)], moved_out[(w, k)] = r, rt
            stock_name = s.spec.id if s else ""
            cols.append(f"{_fmt(s, False)} ({stock_name}) | {_fmt(lm)} | {r:.2f} ({rt:.2f})")
        lines.append(f"| {w:g} | {_floor(store, f'cfg-{kind}/w{w:g}'):.1e} | " + " | ".join(cols) + " |")
    verdict = []
    for k in nfes:
        ws = [w for w in scales if math.isfinite(out.get((w, k), float("nan")))]
        if ws:
            verdict.append(f"NFE {k}: " + ", ".join(f"w={w:g} {_word(out[(w, k)])}" for w in ws)
                           + "; γ tuned at w=1 gives " + ", ".join(f"{moved_out[(w, k)]:.2f}" for w in ws))
    lines += ["", f"Verdict (guidance, {kind}): " + ("; ".join(verdict) if verdict else "no finished column") + "."]
    return lines, out


def _verdict(r: dict[int, float], floored: set[int] = frozenset()) -> str:
    bands = {"NFE ≤ 6": [k for k in r if k <= 6], "NFE 8–12": [k for k in r if 8 <= k <= 12],
             "NFE ≥ 20": [k for k in r if k >= 20]}
    parts = []
    for band, ks in bands.items():
        if ks:
            parts.append(f"{band}: " + ", ".join(_word(r[k]) + (" at the estimator floor" if k in floored else "")
                                                 for k in sorted(ks)))
    return "; ".join(parts)


def auto_gamma_lines(store: CellStore, nfes) -> list[str]:
    """``lm_gamma="auto"`` (a rule fitted on the VP models only) on the flow models: LML / parent at shift 1, seed
    set 0 (a fixed rule involves no selection, so the tuning seed set is unbiased for it)."""
    rows, hurt = [], []
    for parent in RECOMMEND_PARENTS:
        for name in BENCHMARKS:
            cells = []
            for nfe in nfes:
                lml = stored(store, cell_key(name, f"lml-{parent}-g{auto_lm_gamma(nfe):g}", nfe, TUNE_SEED))
                stock = stored(store, cell_key(name, parent, nfe, TUNE_SEED))
                if lml and stock and stock["value"] > 0:
                    r = lml["value"] / stock["value"]
                    cells.append(f"{r:.2f}")
                    if not r <= 1 + TIE:
                        hurt.append(f"{parent} on {SHORT[name]} at NFE {nfe} ({r:.2f})")
                else:
                    cells.append("—")
            if any(c != "—" for c in cells):
                rows.append(f"| {RECOMMEND_PARENTS[parent]} | {SHORT[name]} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    verdict = ("It hurts " + ", ".join(hurt) + ": the rule is for the VP solvers it was fitted on; on flow models "
               "use the recommended flow settings above." if hurt else "It never hurts here.")
    return ["**`lm_gamma=\"auto\"` on models it was not fitted on.** The rule (γ = "
            + ", ".join(f"{g:g} up to {last:g} steps" if math.isfinite(last) else f"{g:g} beyond" for last, g in AUTO_GAMMA)
            + ") was fitted on the VP study's models; here it runs unchanged on the flow models (shift 1; LML / parent, "
            "seed set 0; below 1 helps):", "",
            "| parent | model | " + " | ".join(f"NFE {k}" for k in nfes) + " |", "|---" * (len(nfes) + 2) + "|",
            *rows, "", verdict, ""]


def markdown(store: CellStore, nfes, quick: bool, plot_link: str) -> str:
    lines = ["*Generated by `python -m benchmarks.flow_verdict`" + (" --quick (smoke run)" if quick else "")
             + "; protocol in docs/flow-matching.md and docs/cfg.md.* Every sampler starts from the same noise; "
             "settings (γ, rank, time shift 1 or 3, VP discretisation) are chosen on seed set 0 and reported as "
             "mean ± half-range over the report seed sets; ratios below 1 favour LML. Stock linear samplers on the "
             "Gaussian are scored exactly (transfer matrix). Heun's N steps cost 2N − 1 model calls, so it runs "
             "at the largest odd NFE within the budget.", "", f"![flow verdict]({plot_link})", ""]
    headline = {}
    for name in BENCHMARKS:
        table, r = _benchmark_table(store, name, nfes)
        if table:
            lines += table + [""]
            headline[name] = r
    lines += _precision_table(store, nfes) + [""] + recommended_table(store, nfes) + [""]
    lines += auto_gamma_lines(store, nfes)
    cfg_out = {}
    for kind in ("flow", "vp"):
        table, r = _cfg_table(store, kind)
        if table:
            lines += [f"**Classifier-free guidance, {kind}** (digits GMM 8×8, exact conditional and unconditional "
                      "scores; seed set 1 reported):", ""] + table + [""]
            cfg_out[kind] = r
    lines[1:1] = summary_lines(headline, cfg_out)
    return "\n".join(lines)


def _nfe_list(nfes) -> str:
    return ", ".join(map(str, sorted(nfes))) or "none"


def summary_lines(headline: dict[str, dict[int, float]], cfg_out: dict[str, dict[tuple[float, int], float]]) -> list[str]:
    """The section's plain verdict: per model the NFEs where the best LML beats, ties or loses to the best stock
    flow solver, and per guidance study the (w, NFE) cells LML wins."""
    if not headline:
        return []
    parts = []
    for name, r in headline.items():
        better = [k for k, v in r.items() if v < 1 - TIE]
        worse = [k for k, v in r.items() if v > 1 + TIE]
        par = [k for k in r if k not in better and k not in worse]
        parts.append(f"{SHORT[name]}: LML better at NFE {_nfe_list(better)}, on par at {_nfe_list(par)}, "
                     f"worse at {_nfe_list(worse)}")
    for kind, r in cfg_out.items():
        finite = {key: v for key, v in r.items() if math.isfinite(v)}
        won = sorted(key for key, v in finite.items() if v < 1 - TIE)
        parts.append(f"guidance ({kind}): LML better in {len(won)} of {len(finite)} (w, NFE) cells"
                     + (" (" + ", ".join(f"w={w:g} NFE {k}" for w, k in won) + ")" if won else ""))
    wins = [k for r in headline.values() for k, v in r.items() if v < 1 - TIE]
    guided = sorted({k for r in cfg_out.values() for (w, k), v in r.items() if v < 1 - TIE})
    short = (f" Without guidance LML wins nowhere above NFE {max(wins)}" if wins else " Without guidance LML wins nowhere")
    short += (f"; under guidance its wins are at NFE {_nfe_list(guided)} only." if guided else ".")
    return ["", "**Verdict** (best LML / best stock flow solver, each at its best setting; ±3 % is on par): "
            + "; ".join(parts) + "." + short]


def plot(store: CellStore, path: Path, nfes, quick: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, name in zip(axes[:2], BENCHMARKS):
        entries = benchmark_results(store, name, nfes)
        for fam in STOCK_FAMILIES + LML_FAMILIES:
            if fam not in entries:
                continue
            ks = sorted(entries[fam])
            ax.plot(ks, [entries[fam][k].mean for k in ks], marker="o" if fam in STOCK_FAMILIES else "s",
                    linestyle="-" if fam in STOCK_FAMILIES else "--",
                    label=STOCK_LABELS.get(fam) or FAMILY_LABELS[fam])
        ax.axhline(_floor(store, name), color="gray", linestyle=":", label="estimator floor")
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="FD", title=name)
        ax.legend(fontsize=6)
    ax = axes[2]
    for kind in ("flow", "vp"):
        _, r = _cfg_table(store, kind)
        for k in CFG_NFES:
            ws = sorted(w for (w, kk) in r if kk == k and math.isfinite(r[(w, kk)]))
            if ws:
                ax.plot(ws, [r[(w, k)] for w in ws], marker="o", label=f"{kind}, NFE {k}")
    ax.axhline(1.0, color="gray", linestyle=":")
    ax.set(yscale="log", xlabel="guidance scale w", ylabel="best LML / best stock", title="classifier-free guidance")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: The NFEs of the flow rows of the README's "Recommended settings".
RECOMMENDED_NFES = (4, 8, 20)
SHORT = {"gaussian-flow": "Gaussian flow", "gmm-flow": "GMM flow"}
RECOMMEND_PARENTS = {"flow-euler": "FlowMatchEulerDiscreteScheduler → LMLFlowMatchEulerDiscreteScheduler",
                     "flow-dpm++2m": "DPMSolverMultistepScheduler (flow sigmas) → LMLDPMSolverMultistepScheduler"}


def registry_name(spec: FlowSpec) -> str:
    """The registry name that reproduces ``spec`` (its settings after ``@``; κ as the tables write it)."""
    return format_sampler(spec.sampler, {k: v for k, v in spec.config.items() if not (k == "lm_rank" and v == 1)})


def trusted(store: CellStore, nfes) -> list[Trusted]:
    """Per parent scheduler and NFE: the one LML setting (γ, rank, shift; from the grid both models ran) whose worst
    ratio to the parent at its best shift, over both exact-score flow models on seed set 0, is smallest; recommended
    only if that worst ratio is below 1 − TIE, else "leave LML off". There is no trained flow model in the
    repository, so the trained-model check of the VP rows is not available (``trained`` nan)."""
    # the grid every model runs: the intersection of the models' grid levels
    levels = [BENCHMARKS[name](False).grid_level for name in BENCHMARKS]
    ids = set.intersection(*({s.id for s in all_specs(level)} for level in levels))
    grid = [s for s in all_specs(levels[0]) if s.id in ids and s.kind == "lml"]
    out = []
    for parent in RECOMMEND_PARENTS:
        candidates = [s for s in grid if s.sampler.startswith(f"lml-{parent}")]
        for nfe in nfes:
            worst: dict[str, tuple[float, str]] = {}
            complete = True
            for name in BENCHMARKS:
                parent_vals = [c["value"] for sid in (parent, f"{parent}-shift3")
                               if (c := stored(store, cell_key(name, sid, nfe, TUNE_SEED))) is not None]
                if not parent_vals:
                    complete = False
                    break
                for s in candidates:
                    c = stored(store, cell_key(name, s.id, nfe, TUNE_SEED))
                    if c is None:  # a column still running: no recommendation from part of the grid
                        complete = False
                        break
                    r = c["value"] / min(parent_vals)
                    if s.id not in worst or r > worst[s.id][0]:
                        worst[s.id] = (r, name)
            if not complete or not worst:
                continue
            sid = min(worst, key=lambda k: worst[k][0])
            spec = next(s for s in candidates if s.id == sid)
            r, model = worst[sid]
            out.append(Trusted(parent=RECOMMEND_PARENTS[parent], nfe=nfe,
                               lml=registry_name(spec) if r < 1 - TIE else None, worst_exact=r,
                               worst_model=SHORT[model], trained=float("nan"),
                               models=len(BENCHMARKS), study="flow_verdict"))
    return out


def best_rows(store: CellStore, nfes) -> list[Recommendation]:
    """Per exact-score flow model and NFE of the VP table: the best stock flow solver and the best LML scheduler
    (chosen on seed set 0, errors the means over the report seed sets)."""
    rows = []
    for name in BENCHMARKS:
        entries = benchmark_results(store, name, nfes)
        bench = BENCHMARKS[name](False)
        for nfe in nfes:
            stock, lml = _best(entries, STOCK_FAMILIES, nfe), _best(entries, LML_FAMILIES, nfe)
            if stock is None:
                continue
            rows.append(Recommendation(model=bench.title, nfe=nfe, metric=bench.metric_label,
                                       stock=registry_name(stock.spec), stock_error=stock.mean,
                                       lml=registry_name(lml.spec) if lml is not None else None,
                                       lml_error=lml.mean if lml is not None else float("nan"), study="flow_verdict"))
    return rows


def recommended_table(store: CellStore, nfes) -> list[str]:
    rows = trusted(store, nfes)
    if not rows:
        return []
    lines = ["**Recommended flow settings** (the one setting that helped the parent at its best shift on *both* "
             "exact-score flow models, selected on seed set 0; the worst ratio is its larger LML / parent ratio of "
             "the two; there is no trained flow model in the repository, so the \"did not hurt a trained model\" "
             "check of the VP table is not available here; the same rows are in \"Recommended settings\" above):",
             "", "| parent → LML scheduler | NFE | setting | worst ratio |", "|---|---|---|---|"]
    for t in rows:
        setting = f"`{t.lml}`" if t.helps() else "leave LML off"
        lines.append(f"| {t.parent} | {t.nfe} | {setting} | {t.worst_exact:.2f} ({t.worst_model}) |")
    return lines
