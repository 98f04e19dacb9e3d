"""Per-index seeded, sharded, resumable sample generation.

* Sample ``i`` of seed set ``s`` is drawn from its own generator seeded by ``sample_seed(s, i)`` (initial noise and
  any per-step noise), so it is the same whatever the batch size, shard size or number of processes.
* The index range ``[0, N)`` is cut into shards of ``shard_size``; each shard is written atomically
  (temp file + ``os.replace``) as ``shard_XXXXXX.npz`` with its ``indices``, outputs and ``features``; a restarted run
  skips finished shards, so a killed run loses at most the shard in flight and never counts one twice.
* Under ``accelerate launch`` / torchrun each process owns a contiguous block of shards (a disjoint index range);
  statistics are float64 sums all-reduced by :class:`~eval.fid.FeatureStatistics`.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .exact import sample_loop
from .fid import FeatureStatistics, quantize_uint8

__all__ = [
    "sample_seed",
    "sample_generators",
    "initial_noise",
    "ModelSampler",
    "PipelineSampler",
    "DistInfo",
    "dist_info",
    "shard_ranges",
    "owned_shards",
    "run_shards",
    "shard_statistics",
    "load_shards",
]


def sample_seed(seed: int, index: int, stream: int = 0) -> int:
    """63-bit seed of sample ``index`` in seed set ``seed`` (numpy SeedSequence hash: no collisions between nearby
    ``(seed, index)`` pairs, unlike ``seed + index``). ``stream > 0`` gives further independent streams of the same
    sample (per-step noise of an own sampling loop)."""
    if seed < 0 or index < 0 or stream < 0:
        raise ValueError(f"seed, index and stream must be >= 0, got {seed}, {index}, {stream}")
    entropy = [int(seed), int(index)] + ([int(stream)] if stream else [])
    hi, lo = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return ((int(hi) << 32) | int(lo)) & ((1 << 63) - 1)


def sample_generators(seed: int, indices, device: str | torch.device = "cpu", stream: int = 0) -> list[torch.Generator]:
    """One ``torch.Generator`` per sample index (diffusers pipelines accept such a list as ``generator=``)."""
    return [torch.Generator(device=device).manual_seed(sample_seed(seed, int(i), stream)) for i in indices]


def initial_noise(seed: int, indices, shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Initial noise ``(len(indices), *shape)``; row k drawn from the generator of ``indices[k]`` alone."""
    gens = sample_generators(seed, indices, device)
    return torch.stack([torch.randn(shape, generator=g, dtype=dtype, device=device) for g in gens])


def _sample_unconditional(model, scheduler, steps: int, seed: int, indices, shape: tuple[int, ...],
                          dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, int]:
    """x_T from each index's own CPU generator, then :func:`~eval.exact.sample_loop`; the same generators continue
    into the scheduler's per-step noise (as in ``DDPMPipeline``), so stochastic samplers stay per-index too."""
    gens = sample_generators(seed, indices)
    # drawn on the CPU and moved: the same samples on every device; equals diffusers' randn_tensor with a list
    x_T = torch.stack([torch.randn(shape, generator=g, dtype=dtype) for g in gens]).to(device)
    return sample_loop(model, scheduler, x_T, steps, generator=gens)


class ModelSampler:
    """Sampler over an unconditional denoiser called like ``UNet2DModel`` (analytic models), own loop, no clamping.

    Returns ``{"raw": float32 outputs, "images": uint8}`` (images quantised from ``value_range``; only for
    image-shaped outputs) and records the measured NFE in ``self.nfe``.
    """

    def __init__(self, model, scheduler, num_inference_steps: int, seed: int, sample_shape: tuple[int, ...],
                 value_range: tuple[float, float] = (-1.0, 1.0), dtype: torch.dtype = torch.float32) -> None:
        self.model, self.scheduler, self.steps, self.seed = model, scheduler, int(num_inference_steps), int(seed)
        self.sample_shape, self.value_range, self.dtype = tuple(sample_shape), value_range, dtype
        self.nfe: int | None = None

    @torch.no_grad()
    def __call__(self, indices) -> dict[str, np.ndarray]:
        device = next((b.device for b in self.model.buffers()), torch.device("cpu")) \
            if isinstance(self.model, torch.nn.Module) else torch.device("cpu")
        x0, self.nfe = _sample_unconditional(self.model, self.scheduler, self.steps, self.seed, indices,
                                             self.sample_shape, self.dtype, device)
        out = {"raw": x0.float().cpu().numpy()}
        if x0.ndim == 4:
            out["images"] = quantize_uint8(x0.float().cpu(), self.value_range).numpy()
        return out


class PipelineSampler:
    """Sampler over a diffusers pipeline (unconditional, or text-to-image with ``prompts``).

    Sample ``i`` uses prompt ``prompts[i % len(prompts)]`` and the generator of ``sample_seed(seed, i)``. Outputs
    are quantised to uint8 by rounding (what saving a PNG does). The NFE is measured by counting denoiser calls.

    Pipelines made of only ``unet`` + ``scheduler`` (``DDPMPipeline``, ``DDIMPipeline``) are run by an own loop on
    ``pipe.unet`` that mirrors them: ``DDPMPipeline`` always passes ``generator=`` to ``scheduler.step`` (UniPC
    rejects it) and never applies ``init_noise_sigma`` / ``scale_model_input`` (wrong for Euler); the loop forwards
    ``generator`` only where accepted and applies both, then post-processes like the pipeline
    (``(x/2 + 0.5).clamp(0, 1)``). Other pipelines are called with ``output_type="np"``.
    """

    def __init__(self, pipe, scheduler, num_inference_steps: int, seed: int, prompts: list[str] | None = None,
                 **pipe_kwargs: Any) -> None:
        self.pipe, self.scheduler, self.steps, self.seed = pipe, scheduler, int(num_inference_steps), int(seed)
        self.prompts, self.pipe_kwargs = prompts, pipe_kwargs
        self.nfe: int | None = None
        self.denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if self.denoiser is None:
            raise ValueError("pipeline has neither .unet nor .transformer: cannot count NFE")
        components = getattr(pipe, "components", None)
        self.own_loop = prompts is None and isinstance(components, dict) and set(components) <= {"unet", "scheduler"}

    @torch.no_grad()
    def __call__(self, indices) -> dict[str, np.ndarray]:
        if self.own_loop:
            unet = self.denoiser
            cfg = unet.config
            size = cfg.sample_size if isinstance(cfg.sample_size, (tuple, list)) else (cfg.sample_size,) * 2
            x0, self.nfe = _sample_unconditional(unet, self.scheduler, self.steps, self.seed, indices,
                                                 (cfg.in_channels, *size), unet.dtype, unet.device)
            x = (x0 / 2 + 0.5).clamp(0, 1).float().cpu()
            return {"images": quantize_uint8(x, (0.0, 1.0)).numpy()}
        self.pipe.scheduler = self.scheduler
        # CPU generators: diffusers' randn_tensor draws on the CPU and moves, so samples do not depend on the device
        gens = sample_generators(self.seed, indices)
        kwargs = dict(self.pipe_kwargs, generator=gens, num_inference_steps=self.steps, output_type="np")
        if self.prompts is not None:
            kwargs["prompt"] = [self.prompts[int(i) % len(self.prompts)] for i in indices]
        elif "batch_size" in inspect.signature(self.pipe.__call__).parameters:
            kwargs["batch_size"] = len(indices)
        if hasattr(self.pipe, "set_progress_bar_config"):
            self.pipe.set_progress_bar_config(disable=True)
        calls = [0]
        hook = self.denoiser.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        try:
            out = self.pipe(**kwargs)
        finally:
            hook.remove()
        self.nfe = calls[0]
        images = out.images if hasattr(out, "images") else out[0]
        x = torch.as_tensor(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
        return {"images": quantize_uint8(x, (0.0, 1.0)).numpy()}


class DistInfo:
    """Rank, world size and a barrier; from accelerate when launched with ``accelerate launch``."""

    def __init__(self, rank: int = 0, world_size: int = 1, barrier: Callable[[], None] = lambda: None) -> None:
        self.rank, self.world_size, self.barrier = rank, world_size, barrier

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info(cpu: bool | None = None) -> DistInfo:
    """Process info from ``accelerate.PartialState`` when several processes were launched, else a single process.

    ``cpu`` (default: no CUDA, or ``ACCELERATE_USE_CPU`` set) makes accelerate use the gloo backend
    (``DistributedType.MULTI_CPU``). Launch CPU processes with ``accelerate launch --multi_gpu --num_processes 2``
    or ``torchrun --nproc_per_node 2``: ``accelerate launch --cpu --num_processes 2`` starts one process unless
    an MPI hostfile is given.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or torch.distributed.is_initialized():
        from accelerate import PartialState

        if cpu is None:
            cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
        state = PartialState(cpu=cpu)
        if state.num_processes != int(os.environ.get("WORLD_SIZE", state.num_processes)):
            raise RuntimeError(f"accelerate sees {state.num_processes} processes but WORLD_SIZE is "
                               f"{os.environ['WORLD_SIZE']}: each process would redo the whole run")
        return DistInfo(state.process_index, state.num_processes, state.wait_for_everyone)
    return DistInfo()


def shard_ranges(num_samples: int, shard_size: int) -> list[range]:
    """Index ranges of the shards: ``[0, s), [s, 2s), ...`` (the last may be shorter)."""
    if num_samples < 1 or shard_size < 1:
        raise ValueError(f"num_samples and shard_size must be >= 1, got {num_samples}, {shard_size}")
    return [range(a, min(a + shard_size, num_samples)) for a in range(0, num_samples, shard_size)]


def owned_shards(num_shards: int, rank: int, world_size: int) -> list[int]:
    """Contiguous block of shard ids owned by ``rank`` (disjoint across ranks, covering all shards)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return list(range(num_shards * rank // world_size, num_shards * (rank + 1) // world_size))


def _shard_path(out_dir: Path, k: int) -> Path:
    return out_dir / f"shard_{k:06d}.npz"


def _shard_done(path: Path, expected: range) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path) as data:
            return np.array_equal(data["indices"], np.arange(expected.start, expected.stop))
    except Exception:  # unreadable leftovers are regenerated (atomic writes make this rare)
        return False


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write ``cell.json`` or check that an existing one describes the same run (never mix two runs' shards)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "cell.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in manifest.items() if old.get(k) != v}
        if diff:
            raise ValueError(f"{out_dir} holds shards of a different run ({diff}); use another --out or delete it")
        return
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".cell.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def run_shards(sample_fn: Callable[[list[int]], dict[str, np.ndarray]], out_dir: str | os.PathLike,
               num_samples: int, shard_size: int, batch_size: int,
               feature_fn: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None,
               dist: DistInfo | None = None, keep: tuple[str, ...] | None = None,
               progress: bool = True, desc: str = "") -> list[int]:
    """Generate this process's shards that are not on disk yet; return the shard ids it owns.

    Args:
        sample_fn: ``indices -> dict of arrays`` with leading dim ``len(indices)`` (a :class:`ModelSampler` or
            :class:`PipelineSampler`); its ``.nfe`` attribute, if any, is recorded.
        feature_fn: ``outputs -> (B, d)`` features saved as ``features`` (float64) for the statistics.
        keep: output keys to store in every shard (``None``: all); shard 0 always keeps everything, for grids.
    """
    from tqdm.auto import tqdm

    dist = dist or DistInfo()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranges = shard_ranges(num_samples, shard_size)
    mine = owned_shards(len(ranges), dist.rank, dist.world_size)
    todo = [k for k in mine if not _shard_done(_shard_path(out_dir, k), ranges[k])]
    bar = tqdm(total=sum(len(ranges[k]) for k in todo), desc=desc, unit="img", disable=not progress,
               position=dist.rank, leave=False)
    for k in todo:
        idx = list(ranges[k])
        parts: list[dict[str, np.ndarray]] = []
        feats: list[np.ndarray] = []
        gen_s = feat_s = 0.0
        for a in range(0, len(idx), batch_size):
            t0 = time.perf_counter()
            out = sample_fn(idx[a : a + batch_size])
            t1 = time.perf_counter()
            if feature_fn is not None:
                feats.append(np.asarray(feature_fn(out), dtype=np.float64))
            feat_s += time.perf_counter() - t1
            gen_s += t1 - t0
            parts.append(out)
            bar.update(len(idx[a : a + batch_size]))
        arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]
                  if keep is None or k == 0 or key in keep}
        arrays.update(indices=np.asarray(idx, dtype=np.int64), seconds=np.float64(gen_s),
                      feature_seconds=np.float64(feat_s), nfe=np.int64(getattr(sample_fn, "nfe", None) or -1),
                      rank=np.int64(dist.rank))
        if feats:
            arrays["features"] = np.concatenate(feats)
        _atomic_savez(_shard_path(out_dir, k), arrays)
    bar.close()
    return mine


def shard_statistics(out_dir: str | os.PathLike, shard_ids: list[int], num_features: int | None = None,
                     key: str = "features") -> tuple[FeatureStatistics, dict[str, float]]:
    """Float64 statistics of ``key`` over the given shards plus totals (``seconds``, ``count``, ``nfe``).

    Every process passes its own shards; ``stats.compute()`` then all-reduces across processes. The totals are
    all-reduced here too when ``torch.distributed`` is initialised.
    """
    out_dir = Path(out_dir)
    stats: FeatureStatistics | None = None
    totals = torch.zeros(4, dtype=torch.float64)  # seconds, feature seconds, count, max nfe
    for k in shard_ids:
        with np.load(_shard_path(out_dir, k)) as data:
            f = data[key].reshape(len(data["indices"]), -1)
            if stats is None:
                stats = FeatureStatistics(num_features or f.shape[1])
            stats.update(torch.from_numpy(f))
            totals += torch.tensor([float(data["seconds"]), float(data["feature_seconds"]), f.shape[0], 0.0])
            totals[3] = max(float(totals[3]), float(data["nfe"]))
    if stats is None:
        if num_features is None:
            raise ValueError("this process owns no shards: pass num_features so the statistics can be synced")
        stats = FeatureStatistics(num_features)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        nfe = totals[3:].clone()
        torch.distributed.all_reduce(totals)
        torch.distributed.all_reduce(nfe, op=torch.distributed.ReduceOp.MAX)
        totals[3] = nfe[0]
    return stats, {"seconds": float(totals[0]), "feature_seconds": float(totals[1]), "count": int(totals[2]),
                   "nfe": int(totals[3])}


def load_shards(out_dir: str | os.PathLike, key: str, limit: int | None = None) -> np.ndarray:
    """Concatenate array ``key`` of all shards on disk in index order (up to ``limit`` rows)."""
    paths = sorted(Path(out_dir).glob("shard_*.npz"))
    rows: list[np.ndarray] = []
    count = 0
    for p in paths:
        with np.load(p) as data:
            if key not in data:
                continue
            rows.append(data[key])
            count += len(data[key])
        if limit is not None and count >= limit:
            break
    if not rows:
        raise FileNotFoundError(f"no shard in {out_dir} stores {key!r}")
    out = np.concatenate(rows)
    return out[:limit] if limit is not None else out
