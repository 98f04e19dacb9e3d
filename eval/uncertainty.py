"""Standard errors of sample metrics: the delete-a-group jackknife over the generated samples.

The generated samples ``0..N-1`` are cut into ``G`` contiguous groups of (nearly) equal size; the metric is
recomputed with each group left out, and

    SE² = (G − 1)/G · Σ_g (θ₋g − θ̄)²,        θ̄ = mean of the G leave-one-group-out values.

The reference set is held fixed, so the SE is the spread of a cell's number over fresh draws of its generated
samples: the uncertainty that matters when two samplers are compared against the same reference
(docs/metrics.md §4). Per-index seeds make the samples i.i.d. across indices, so contiguous groups are random
groups.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_SE_GROUPS", "jackknife_groups", "jackknife_se"]

#: Jackknife groups per cell: 19 degrees of freedom, i.e. the SE itself is known to about ±16 %.
DEFAULT_SE_GROUPS = 20


def jackknife_groups(num_samples: int, groups: int = DEFAULT_SE_GROUPS) -> list[slice]:
    """``min(groups, num_samples)`` contiguous index blocks covering ``range(num_samples)``, sizes differing by ≤ 1."""
    if not isinstance(groups, int) or groups < 2:
        raise ValueError(f"groups must be an int >= 2 (jackknife groups; --se-groups), got {groups!r}")
    if num_samples < 3:
        raise ValueError(f"a jackknife standard error needs at least 3 samples, got {num_samples}")
    g = min(groups, num_samples)
    edges = [num_samples * k // g for k in range(g + 1)]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def jackknife_se(leave_out_values) -> float:
    """Delete-a-group jackknife standard error from the ``G`` leave-one-group-out values of a statistic."""
    v = np.asarray(leave_out_values, dtype=np.float64).reshape(-1)
    if v.size < 2:
        raise ValueError(f"need at least 2 leave-out values, got {v.size}")
    g = v.size
    return float(np.sqrt((g - 1) / g * np.sum((v - v.mean()) ** 2)))
