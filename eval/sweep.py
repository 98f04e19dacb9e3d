"""The model × sampler × NFE grid: one resumable, shardable *cell* per (model, sampler, NFE, seed set)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .exact import linear_sampler_distance
from .fid import frechet_distance, save_statistics
from .generate import DistInfo, ModelSampler, PipelineSampler, dist_info, run_shards, shard_statistics, write_manifest
from .models import EvalModel, load_eval_model
from .samplers import is_flow_sampler, is_lml, make_scheduler, parse_sampler_spec, sampler_label

__all__ = ["SweepConfig", "run_cell", "run_sweep", "DEFAULT_SAMPLERS", "DEFAULT_NFE", "DEFAULT_MODELS"]

DEFAULT_MODELS = ("digits", "gmm")
DEFAULT_SAMPLERS = ("ddim", "dpm++2m", "unipc", "lml-ddim", "lml-dpm++2m")
DEFAULT_NFE = (5, 10, 20)


@dataclass
class SweepConfig:
    """Everything that defines a sweep. ``num_samples`` of ``None`` takes the per-metric default
    (``default_samples``)."""

    out: str
    models: tuple[str, ...] = DEFAULT_MODELS
    samplers: tuple[str, ...] = DEFAULT_SAMPLERS
    nfe: tuple[int, ...] = DEFAULT_NFE
    seed: int = 0
    num_samples: int | None = None
    # sized so that the default sweep takes a few minutes on 2 CPU cores; floors are reported at the same N
    default_samples: dict[str, int] = field(default_factory=lambda: {"domain-fid": 500, "inception-fid": 10000,
                                                                      "exact-fd": 2000})
    batch_size: int = 250
    shard_size: int = 250
    # LML defaults: κ > 0 is needed for any effect (the stable operator is the identity at κ = 0); with λ = 1 and
    # ‖v‖² ≈ d = 256 (16×16 images) γ = κ‖v‖²/λ ≈ 0.26, inside the useful range of lml.md §2.3
    lamb: float | None = 1.0
    kappa: float | None = 1e-3
    freeze: float | None = None
    lm_formula: str | None = None
    extractor: str | None = None
    inception_weights: str | None = None
    ref_stats: str | None = None
    prompts: str | None = None
    guidance_scale: float | None = None
    device: str = "cpu"
    progress: bool = True
    grid_samples: int = 8

    def lml_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in dict(lamb=self.lamb, kappa=self.kappa, freeze=self.freeze,
                                      lm_formula=self.lm_formula).items() if v is not None}


def _atomic_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True, default=float)
    os.replace(tmp, path)


def _safe(name: str) -> str:
    """A file-name-safe version of a model name (Hub ids contain '/')."""
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)


def _effective_lml(sampler: str, cfg: SweepConfig, scheduler) -> dict[str, Any]:
    """The LML settings a row reports: the scheduler's actual config values (defaults included)."""
    if not is_lml(sampler):
        return {}
    return {k: scheduler.config[k] for k in ("lamb", "kappa", "freeze", "lm_formula")}


def run_cell(model: EvalModel, sampler: str, nfe: int, cfg: SweepConfig, dist: DistInfo | None = None) -> dict:
    """Generate (resumably, sharded) and score one cell; returns its result row (all ranks get the same row).

    A cell whose ``result.json`` exists is not recomputed. Cells of linear samplers on a linear-Gaussian model are
    scored exactly from the transfer matrix (no samples, no Monte-Carlo error).
    """
    dist = dist or dist_info()
    sampler, own = parse_sampler_spec(sampler)
    if model.is_flow != is_flow_sampler(sampler):
        raise ValueError(f"sampler {sampler!r} does not fit model {model.name!r} "
                         f"({'flow-matching' if model.is_flow else 'diffusion'} model)")
    scheduler = make_scheduler(sampler, model.scheduler_config, **({**cfg.lml_kwargs(), **own} if is_lml(sampler) else {}))
    lml = _effective_lml(sampler, cfg, scheduler)
    label = sampler_label(sampler, {k: lml[k] for k in ("lamb", "kappa")} if lml else None)
    n = cfg.num_samples or cfg.default_samples[model.metric]
    slug = sampler + "".join(f"_{k}{v:g}" if isinstance(v, float) else f"_{k}-{v}" for k, v in lml.items()
                             if not (k == "freeze" and v == 0) and not (k == "lm_formula" and v == "stable"))
    rel = Path("cells") / _safe(model.name) / slug / f"nfe{nfe:03d}_seed{cfg.seed}"
    cell = Path(cfg.out) / rel
    result_path = cell / "result.json"
    manifest = {"model": model.name, "sampler": label, "nfe": nfe, "seed": cfg.seed, "num_samples": n,
                "shard_size": cfg.shard_size, "metric": model.metric, "extractor": model.extractor_name}
    if result_path.is_file():
        if (cell / "cell.json").is_file():
            write_manifest(cell, manifest)  # raises if this folder holds a run with other settings
        return json.loads(result_path.read_text())

    row: dict[str, Any] = {"model": model.name, "sampler": label, "sampler_name": sampler, "nfe": nfe,
                           "cell": rel.as_posix(),
                           "seed": cfg.seed, "metric": model.metric, "reference": model.reference_desc,
                           "extractor": model.extractor_name or "pixels", **{k: lml.get(k) for k in
                                                                              ("lamb", "kappa", "freeze", "lm_formula")}}
    exact_linear = model.linear and (not is_lml(sampler) or not scheduler.lm_engaged)
    if exact_linear:
        if dist.is_main:
            t0 = time.perf_counter()
            dtype = torch.float64
            try:
                value = linear_sampler_distance(model.denoiser, scheduler, nfe, dtype=dtype)
            except RuntimeError as exc:  # UniPC in diffusers 0.42 mixes float32/float64 in a solve in float64 runs
                if "dtype" not in str(exc):
                    raise
                dtype = torch.float32
                value = linear_sampler_distance(model.denoiser, scheduler, nfe, dtype=dtype)
            row.update(fid=value, floor=0.0, num_samples=0, nfe_measured=nfe, dtype=str(dtype).removeprefix("torch."),
                       seconds_per_sample=(time.perf_counter() - t0) / model.denoiser.dim,
                       method="transfer-matrix (exact)")
            _atomic_json(result_path, row)
        dist.barrier()
        return json.loads(result_path.read_text())

    if dist.is_main:
        write_manifest(cell, manifest)
    dist.barrier()
    write_manifest(cell, manifest)  # every rank checks it resumes the same run
    if model.kind == "analytic":
        dtype = torch.float32  # what a trained network would run in; the analytic model computes in float64 inside
        sample_fn: Any = ModelSampler(model.denoiser, scheduler, nfe, cfg.seed, tuple(model.denoiser.data_shape),
                                      dtype=dtype)
    else:
        sample_fn = PipelineSampler(model.pipe, scheduler, nfe, cfg.seed, prompts=model.prompts, **model.pipe_kwargs)
        dtype = sample_fn.denoiser.dtype
    keep = ("features", "raw") if model.metric == "exact-fd" else ()
    mine = run_shards(sample_fn, cell, n, cfg.shard_size, cfg.batch_size, feature_fn=model.features, dist=dist,
                      keep=keep, progress=cfg.progress, desc=f"{model.name} {label} nfe={nfe}")
    dist.barrier()
    reference = model.reference()
    stats, totals = shard_statistics(cell, mine, num_features=len(reference.mu))
    gen_stats = stats.compute()  # all-reduced float64 sums across processes
    if dist.is_main:
        if totals["count"] != n or gen_stats.n != n:
            raise RuntimeError(f"{cell}: expected {n} samples, statistics hold {gen_stats.n} ({totals['count']})")
        save_statistics(cell / "statistics.npz", gen_stats, extractor=model.extractor_name or "pixels")
        row.update(fid=frechet_distance(gen_stats, reference), num_samples=n,
                   floor=model.floor(n) if model.floor is not None else None,
                   nfe_measured=totals["nfe"], seconds_per_sample=totals["seconds"] / n,
                   feature_seconds_per_sample=totals["feature_seconds"] / n,
                   dtype=str(dtype).removeprefix("torch."),
                   method="samples")
        _atomic_json(result_path, row)
    dist.barrier()
    return json.loads(result_path.read_text())


def run_sweep(cfg: SweepConfig, write_reports: bool = True) -> list[dict]:
    """Run every cell of the grid (skipping finished ones) and write ``results.{csv,json,md}``, the FID-vs-NFE
    plot and one image grid per (model, sampler)."""
    from tqdm.auto import tqdm

    from . import report

    dist = dist_info(cpu=str(cfg.device) == "cpu")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = Path(cfg.prompts).read_text().splitlines() if cfg.prompts else None
    prompts = [p for p in prompts if p.strip()] if prompts else None
    rows: list[dict] = []
    models: list[EvalModel] = []
    for spec in cfg.models:
        models.append(load_eval_model(spec, extractor=cfg.extractor if spec not in ("gmm", "gaussian") else None,
                                      inception_weights=cfg.inception_weights, ref_stats=cfg.ref_stats,
                                      prompts=prompts, cache_dir=out / "reference", guidance_scale=cfg.guidance_scale,
                                      device=cfg.device))
    fits = {s: is_flow_sampler(parse_sampler_spec(s)[0]) for s in cfg.samplers}
    cells = [(m, s, k) for m in models for s in cfg.samplers for k in cfg.nfe if m.is_flow == fits[s]]
    skipped = [(m.name, s) for m in models for s in cfg.samplers if m.is_flow != fits[s]]
    bar = tqdm(cells, desc="sweep", unit="cell", disable=not (cfg.progress and dist.is_main))
    for model, sampler, nfe in bar:
        bar.set_postfix_str(f"{model.name} {sampler} {nfe}")
        rows.append(run_cell(model, sampler, nfe, cfg, dist))
    if write_reports and dist.is_main:
        report.write_reports(rows, out, cfg.grid_samples)
        if skipped:
            print(f"skipped (sampler does not fit the model type): {sorted(set(skipped))}")
    dist.barrier()
    return rows
