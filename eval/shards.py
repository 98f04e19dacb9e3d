"""Sharded, resumable generation: the index range of a cell cut into shard files written atomically.

The index range ``[0, N)`` is cut into shards of ``shard_size``; each shard is written atomically as
``shard_XXXXXX.npz`` with its ``indices``, outputs and ``features``. A restarted run skips finished shards, so a
killed run loses at most the shard in flight and never counts one twice. Under ``accelerate launch`` / torchrun
each process owns a contiguous block of shards (a disjoint index range); statistics are float64 sums all-reduced
by :class:`~lml_sampler.eval.fid.FeatureStatistics`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lml_sampler._io import atomic_open

from .distributed import DistInfo
from .fid import FeatureStatistics

__all__ = ["shard_ranges", "owned_shards", "run_shards", "shard_statistics", "load_shards"]


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


def _shard_state(path: Path, expected: range, tags: dict[str, str]) -> tuple[bool, list[str], bool]:
    """``(done, missing feature keys, has images)`` of a shard file: done when it holds the expected indices;
    a feature key is missing when absent or stored with another tag (e.g. another CLIP model)."""
    if not path.is_file():
        return False, list(tags), False
    try:
        with np.load(path) as data:
            if not np.array_equal(data["indices"], np.arange(expected.start, expected.stop)):
                return False, list(tags), False
            missing = [k for k, t in tags.items() if k not in data or (t and str(data.get(f"tag_{k}", "")) != t)]
            return True, missing, "images" in data
    except Exception:  # unreadable leftovers are regenerated (atomic writes make this rare)
        return False, list(tags), False


FeatureFn = Callable[[dict[str, np.ndarray]], np.ndarray]


def run_shards(sample_fn: Callable[[list[int]], dict[str, np.ndarray]], out_dir: str | os.PathLike,
               num_samples: int, shard_size: int, batch_size: int,
               feature_fns: dict[str, FeatureFn] | None = None, feature_tags: dict[str, str] | None = None,
               dist: DistInfo | None = None, keep: tuple[str, ...] | None = None,
               progress: bool = True, desc: str = "") -> list[int]:
    """Generate this process's shards that are not on disk yet; return the shard ids it owns.

    Args:
        sample_fn: ``indices -> dict of arrays`` with leading dim ``len(indices)`` (a :class:`ModelSampler` or
            :class:`PipelineSampler`); its ``.nfe`` attribute, if any, is recorded.
        feature_fns: ``key -> (outputs -> (B, d))``: feature sets saved under ``key`` (``"features"`` feeds the
            statistics; e.g. ``"clip"`` holds CLIP image embeddings).
        feature_tags: ``key -> tag`` stored as ``tag_<key>`` (what computed the features, e.g. the CLIP model).
            A finished shard that lacks a requested feature set (or has it under another tag) gets it added: from
            its stored ``images`` when it keeps them, otherwise by regenerating the shard (the same samples: the
            seeds are per index).
        keep: output keys to store in every shard (``None``: all); shard 0 always keeps everything, for grids.
    """
    from tqdm.auto import tqdm

    dist = dist or DistInfo()
    feature_fns = dict(feature_fns or {})
    tags = {k: (feature_tags or {}).get(k, "") for k in feature_fns}
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranges = shard_ranges(num_samples, shard_size)
    mine = owned_shards(len(ranges), dist.rank, dist.world_size)
    todo, refeature = [], []
    for k in mine:
        done, missing, has_images = _shard_state(_shard_path(out_dir, k), ranges[k], tags)
        if not done or (missing and not has_images):
            todo.append(k)
        elif missing:
            refeature.append((k, missing))
    regenerated = [k for k in todo if _shard_path(out_dir, k).is_file()]
    if regenerated:
        print(f"{out_dir}: {len(regenerated)} finished shard(s) lack {sorted(tags)} features and keep no images: "
              "regenerating them (same seeds, same samples)", file=sys.stderr)
    for k, missing in refeature:
        path = _shard_path(out_dir, k)
        with np.load(path) as data:
            arrays = dict(data.items())
        for key in missing:
            arrays[key] = np.concatenate([np.asarray(feature_fns[key]({"images": arrays["images"][a : a + batch_size]}))
                                          for a in range(0, len(arrays["indices"]), batch_size)])
            if tags[key]:
                arrays[f"tag_{key}"] = np.asarray(tags[key])
        with atomic_open(path) as fh:
            np.savez(fh, **arrays)
    bar = tqdm(total=sum(len(ranges[k]) for k in todo), desc=desc, unit="img", disable=not progress,
               position=dist.rank, leave=False)
    for k in todo:
        idx = list(ranges[k])
        parts: list[dict[str, np.ndarray]] = []
        feats: dict[str, list[np.ndarray]] = {key: [] for key in feature_fns}
        gen_s = feat_s = 0.0
        for a in range(0, len(idx), batch_size):
            t0 = time.perf_counter()
            out = sample_fn(idx[a : a + batch_size])
            t1 = time.perf_counter()
            for key, fn in feature_fns.items():
                feats[key].append(np.asarray(fn(out), dtype=np.float64 if key == "features" else None))
            feat_s += time.perf_counter() - t1
            gen_s += t1 - t0
            parts.append(out)
            bar.update(len(idx[a : a + batch_size]))
        arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]
                  if keep is None or k == 0 or key in keep}
        arrays.update(indices=np.asarray(idx, dtype=np.int64), seconds=np.float64(gen_s),
                      feature_seconds=np.float64(feat_s), nfe=np.int64(getattr(sample_fn, "nfe", None) or -1),
                      rank=np.int64(dist.rank))
        for key, chunks in feats.items():
            arrays[key] = np.concatenate(chunks)
            if tags[key]:
                arrays[f"tag_{key}"] = np.asarray(tags[key])
        with atomic_open(_shard_path(out_dir, k)) as fh:
            np.savez(fh, **arrays)
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
    """Concatenate array ``key`` of all shards on disk in index order (up to ``limit`` rows); shard files are
    numbered by their first index, so name order is index order."""
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
