"""Running the flow study: one resumable cell per (benchmark, sampler, NFE, seed set), tuning on seed set 0.

Cells live in a :class:`lml_sampler._io.CellStore` keyed ``<benchmark>/<spec>/nfe<NFE>_seed<s>`` (floors
``<benchmark>/_floor/seed<s>``, precision checks ``<benchmark>/_dtype/<spec>_nfe<NFE>``, guidance cells
``cfg-<vp|flow>/w<scale>/<spec>/nfe<NFE>_seed<s>``). Every sampler runs through ``lml_sampler.sampling.sample``,
which counts the model calls; a cell records the NFE it used (Heun: 2N − 1 ≤ the budget).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from benchmarks.lml_verdict.estimators import full_fd, relative_deviation
from lml_sampler._io import Cell, CellStore
from lml_sampler.eval import initial_noise
from lml_sampler.models.analytic import GuidedMixtureDenoiser
from lml_sampler.sampling import sample
from lml_sampler.schedulers.registry import make_scheduler

from .models import CFG_REFERENCE, FLOW_CONFIG, FlowBenchmark, class_gmm, reference_statistics, vp_config
from .specs import (
    REPORT_SEEDS,
    TUNE_SEED,
    FlowSpec,
    grid_specs,
    official_specs,
    stock_specs,
    vp_grid_specs,
    vp_stock_specs,
)

_noise_cache: dict = {}
_reference_cache: dict = {}


def noise_for(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Float64 initial noise of seed set ``seed``, the same for every sampler."""
    key = (n, shape, seed)
    if key not in _noise_cache:
        _noise_cache.clear()
        _noise_cache[key] = initial_noise(seed, range(n), shape, dtype=torch.float64)
    return _noise_cache[key]


def run_spec(model, spec: FlowSpec, nfe: int, base_config: dict, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Outputs of ``spec`` within ``nfe`` model calls from the initial noise ``x``, and the calls it used."""
    scheduler = make_scheduler(spec.sampler, base_config, **spec.config)
    out, used = sample(model, scheduler, x, spec.steps(nfe))
    if used > nfe:
        raise RuntimeError(f"{spec.id} used {used} model calls, more than the budget {nfe}")
    return out, used


def _timed(compute: Callable[[], dict]) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    result = compute()
    result["wall_s"], result["cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    return result


def cell_key(bench: str, spec_id: str, nfe: int, seed: int) -> str:
    return f"{bench}/{spec_id}/nfe{nfe:03d}_seed{seed}"


def stored(store: CellStore, key: str) -> dict | None:
    return Cell(store.root / key).result()


def _ensure(store: CellStore, key: str, manifest: dict, compute: Callable[[], dict]) -> dict:
    def run() -> dict:
        result = {**manifest, **_timed(compute)}
        print(f"{key:60s} value={result.get('value', float('nan')):.4g} ({result['wall_s']:.1f}s)", flush=True)
        return result

    return store.ensure(key, manifest, run)


# ----------------------------------------------------------------------------------------------------------------------
# Unguided flow benchmarks
# ----------------------------------------------------------------------------------------------------------------------


def ensure_cell(store: CellStore, bench: FlowBenchmark, spec: FlowSpec, nfe: int, seed: int) -> dict:
    manifest = {"benchmark": bench.name, "spec": spec.id, "family": spec.family, "kind": spec.kind,
                "sampler": spec.sampler, "params": spec.config, "nfe": nfe, "seed": seed, "n": bench.n}

    def compute() -> dict:
        noise = noise_for(bench.n, bench.shape, seed)
        # the released expression runs in float32, as released; everything else in float64 (sampler error only)
        x = noise.float() if spec.kind == "official" else noise
        out, used = run_spec(bench.model, spec, nfe, bench.base_config, x)
        cell = {"nfe_used": used, "finite": bool(torch.isfinite(out).all())}
        cell.update(bench.evaluate(out.double(), noise) if cell["finite"] else {"value": float("inf")})
        if spec.kind == "stock" and bench.exact_linear is not None:
            cell["value_sampled"] = cell["value"]
            scheduler = make_scheduler(spec.sampler, bench.base_config, **spec.config)
            cell["value"], cell["exact"] = bench.exact_linear(scheduler, spec.steps(nfe)), True
        return cell

    return _ensure(store, cell_key(bench.name, spec.id, nfe, seed), manifest, compute)


def _select(store: CellStore, key: Callable[[str, int, int], str], specs: list[FlowSpec],
            nfes) -> dict[tuple[str, int], FlowSpec]:
    """Best spec per (family, NFE) on seed set ``TUNE_SEED`` (smallest value; ties: first in the grid); ``key(spec
    id, NFE, seed)`` names a cell."""
    best: dict[tuple[str, int], tuple[float, FlowSpec]] = {}
    for spec in specs:
        for nfe in nfes:
            cell = stored(store, key(spec.id, nfe, TUNE_SEED))
            if cell is None:
                continue
            v = cell["value"] if math.isfinite(cell["value"]) else float("inf")
            if (spec.family, nfe) not in best or v < best[(spec.family, nfe)][0]:
                best[(spec.family, nfe)] = (v, spec)
    return {k: s for k, (_, s) in best.items()}


def select(store: CellStore, bench: str, specs: list[FlowSpec], nfes) -> dict[tuple[str, int], FlowSpec]:
    """The tuned choice per (family, NFE) on an unguided benchmark."""
    return _select(store, lambda sid, nfe, seed: cell_key(bench, sid, nfe, seed), specs, nfes)


def all_specs(level: str) -> list[FlowSpec]:
    return stock_specs() + official_specs() + grid_specs(level)


#: The NFEs that matter most first (the brief's 4, 8, 20), then the rest.
PRIORITY = (4, 8, 20, 6, 12, 28)


def by_priority(nfes) -> list[int]:
    return sorted(nfes, key=lambda k: (PRIORITY.index(k) if k in PRIORITY else len(PRIORITY), k))


def run_benchmark(store: CellStore, bench: FlowBenchmark, nfes, seeds) -> None:
    """Floors, every spec on seed set 0, the chosen spec of each family on the report seed sets."""
    report = [s for s in seeds if s != TUNE_SEED]
    for seed in seeds:
        _ensure(store, f"{bench.name}/_floor/seed{seed}", {"benchmark": bench.name, "seed": seed, "n": bench.n},
                lambda seed=seed: {"value": bench.floor(seed)})
    specs = all_specs(bench.grid_level)
    for nfe in by_priority(nfes):  # tune and report one NFE at a time: a cut-short run has whole columns
        for spec in specs:
            ensure_cell(store, bench, spec, nfe, TUNE_SEED)
        chosen = select(store, bench.name, specs, (nfe,))
        for seed in report:
            for spec in chosen.values():
                ensure_cell(store, bench, spec, nfe, seed)
        if bench.name == "gaussian-flow" and report and ("gamma-flow-euler", nfe) in chosen:
            ensure_precision(store, bench, chosen[("gamma-flow-euler", nfe)], nfe, report[0])


def ensure_precision(store: CellStore, bench: FlowBenchmark, spec: FlowSpec, nfe: int, seed: int) -> dict:
    """The tuned stable operator and its stock parent (same shift) in bf16 and fp16 against fp32, same noise:
    how far the low-precision LML run moves from fp32, beside how far the stock sampler itself moves."""
    stock = FlowSpec(spec.sampler.removeprefix("lml-"), "stock", "stock", spec.sampler.removeprefix("lml-"))
    manifest = {"benchmark": bench.name, "spec": spec.id, "nfe": nfe, "seed": seed, "n": bench.n}

    def compute() -> dict:
        noise = noise_for(bench.n, bench.shape, seed)
        runs = {(s.kind, dt): run_spec(bench.model, s, nfe, bench.base_config, noise.to(dt))[0]
                for s in (spec, stock) for dt in (torch.float32, torch.bfloat16, torch.float16)}
        cell = {"value": bench.evaluate(runs[("lml", torch.float32)].double(), noise)["value"]}
        for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            cell[f"lml_{name}_vs_fp32"] = relative_deviation(runs[("lml", dt)], runs[("lml", torch.float32)])
            cell[f"stock_{name}_vs_fp32"] = relative_deviation(runs[("stock", dt)], runs[("stock", torch.float32)])
            cell[f"lml_{name}_fd"] = bench.evaluate(runs[("lml", dt)].double(), noise)["value"]
            cell[f"stock_{name}_fd"] = bench.evaluate(runs[("stock", dt)].double(), noise)["value"]
        cell["stock_fp32_fd"] = bench.evaluate(runs[("stock", torch.float32)].double(), noise)["value"]
        return cell

    return _ensure(store, f"{bench.name}/_dtype/{spec.id}_nfe{nfe:03d}", manifest, compute)


# ----------------------------------------------------------------------------------------------------------------------
# Classifier-free guidance
# ----------------------------------------------------------------------------------------------------------------------


def cfg_specs(kind: str, level: str) -> list[FlowSpec]:
    if kind == "vp":
        return vp_stock_specs() + vp_grid_specs(level)
    return stock_specs() + [s for s in grid_specs(level) if s.family == "gamma-flow-euler"]


def guided_model(kind: str, scale: float, n: int):
    gmm, _ = class_gmm("flow" if kind == "flow" else "epsilon")
    return GuidedMixtureDenoiser(gmm, torch.arange(10), torch.arange(n) % 10, scale)


def cfg_reference(kind: str, scale: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fine, coarse) solutions of the guided ODE from the noise of ``seed`` (``CFG_REFERENCE``), memoised."""
    key = (kind, scale, n, seed)
    if key not in _reference_cache:
        sampler, fine, coarse = CFG_REFERENCE[kind]
        model, config = guided_model(kind, scale, n), (FLOW_CONFIG if kind == "flow" else vp_config())
        noise = noise_for(n, (1, 8, 8), seed)
        steps = {"fine": fine, "coarse": coarse}
        outs = {k: sample(model, make_scheduler(sampler, config), noise, s)[0] for k, s in steps.items()}
        _reference_cache[key] = (outs["fine"].double(), outs["coarse"].double())
    return _reference_cache[key]


def cfg_key(kind: str, scale: float, spec_id: str, nfe: int, seed: int) -> str:
    return f"cfg-{kind}/w{scale:g}/{spec_id}/nfe{nfe:03d}_seed{seed}"


def ensure_cfg_cell(store: CellStore, kind: str, scale: float, spec: FlowSpec, nfe: int, seed: int, n: int) -> dict:
    manifest = {"benchmark": f"cfg-{kind}", "scale": scale, "spec": spec.id, "family": spec.family,
                "kind": spec.kind, "sampler": spec.sampler, "params": spec.config, "nfe": nfe, "seed": seed, "n": n}

    def compute() -> dict:
        fine, _ = cfg_reference(kind, scale, n, seed)
        config = FLOW_CONFIG if kind == "flow" else vp_config()
        out, used = run_spec(guided_model(kind, scale, n), spec, nfe, config, noise_for(n, (1, 8, 8), seed))
        out = out.double()
        if not torch.isfinite(out).all():
            return {"value": float("inf"), "nfe_used": used}
        return {"value": full_fd(out, reference_statistics(fine)), "path_error": relative_deviation(out, fine),
                "nfe_used": used}

    return _ensure(store, cfg_key(kind, scale, spec.id, nfe, seed), manifest, compute)


def ensure_cfg_floor(store: CellStore, kind: str, scale: float, seed: int, n: int) -> dict:
    def compute() -> dict:
        fine, coarse = cfg_reference(kind, scale, n, seed)
        return {"value": full_fd(coarse, reference_statistics(fine)), "path_error": relative_deviation(coarse, fine)}

    return _ensure(store, f"cfg-{kind}/w{scale:g}/_floor/seed{seed}", {"kind": kind, "scale": scale, "seed": seed,
                                                                       "n": n}, compute)


def select_cfg(store: CellStore, kind: str, scale: float, specs: list[FlowSpec], nfes):
    """The tuned choice per (family, NFE) at guidance scale ``scale``."""
    return _select(store, lambda sid, nfe, seed: cfg_key(kind, scale, sid, nfe, seed), specs, nfes)


def run_cfg(store: CellStore, scales, nfes, seeds, n: int, level: str) -> None:
    """Guidance study: every spec at every scale on seed set 0; the chosen ones, and the γ chosen at w = 1 (the
    transfer test), on the report seed sets."""
    report = [s for s in seeds if s != TUNE_SEED]
    for nfe in by_priority(nfes):
        for kind in ("flow", "vp"):
            specs = cfg_specs(kind, level)
            for scale in scales:
                for seed in seeds:
                    ensure_cfg_floor(store, kind, scale, seed, n)
                for spec in specs:
                    ensure_cfg_cell(store, kind, scale, spec, nfe, TUNE_SEED, n)
                chosen = select_cfg(store, kind, scale, specs, (nfe,))
                transfer = select_cfg(store, kind, scales[0], specs, (nfe,))
                for seed in report:
                    for spec in list(chosen.values()) + list(transfer.values()):
                        ensure_cfg_cell(store, kind, scale, spec, nfe, seed, n)


__all__ = ["run_benchmark", "run_cfg", "select", "select_cfg", "stored", "cell_key", "cfg_key", "all_specs",
           "cfg_specs", "REPORT_SEEDS"]
