"""Per-index seeds: sample ``i`` of seed set ``s`` gets its own generator, whatever the batch, shard or process.

Sample ``i`` draws its initial noise and any per-step noise from the generator seeded by ``sample_seed(s, i)``, so
a sweep's samples do not depend on how the index range is cut into batches, shards or processes, and row ``i``
means the same initial noise under every sampler.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["sample_seed", "sample_generators", "initial_noise"]


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
