"""Kernel Inception Distance (Bińkowski et al. 2018): the unbiased polynomial-kernel MMD² between feature sets.

The standard protocol (torch-fidelity and torchmetrics defaults): ``S = 100`` subsets of ``m = 1000`` samples drawn
without replacement from each side; on each, the unbiased estimate

    MMD²ᵤ = Σ_{i≠j} k(xᵢ,xⱼ)/(m(m−1)) + Σ_{i≠j} k(yᵢ,yⱼ)/(m(m−1)) − 2 Σ_{i,j} k(xᵢ,yⱼ)/m²,
    k(x, y) = (γ xᵀy + c)ᵖ,  p = 3, γ = 1/d, c = 1   (torchmetrics' ``poly_kernel``, here evaluated in place),

and KID is the mean of the S values, reported with their standard deviation. Averaged over all possible subsets,
the subset mean equals the unbiased MMD² of *all* samples, so its standard error over fresh generated samples is

    SE² = SE²_jackknife(MMD²ᵤ of all samples) + Var(subset values)/S

(law of total variance: sampling error of the full statistic plus the Monte-Carlo error of the subsets).

One chunked pass over the kernel matrices gives every subset value, the full statistic and the jackknife
(docs/metrics.md §2): memory is bounded by ``max_chunk_bytes`` whatever N is; the work is O((N + R)² d) instead of
the protocol's O(S m² d), which at 50k samples is still a small fraction of the Inception feature pass.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .features import as_features, check_same_dim
from .uncertainty import DEFAULT_SE_GROUPS, jackknife_groups, jackknife_se

__all__ = ["KIDResult", "KIDReference", "kid_subset_size", "draw_subsets", "kernel_inception_distance",
           "poly_kernel", "DEFAULT_KID_SUBSETS", "DEFAULT_KID_SUBSET_SIZE"]

DEFAULT_KID_SUBSETS = 100
DEFAULT_KID_SUBSET_SIZE = 1000
#: Memory of one block of kernel rows (the kernel is built in place: the pass holds one block at a time).
DEFAULT_CHUNK_BYTES = 128 * 2**20


def poly_kernel(a: torch.Tensor, b: torch.Tensor, degree: int, gamma: float, coef: float) -> torch.Tensor:
    """``(γ a bᵀ + c)ᵖ`` as torchmetrics' ``poly_kernel``, in the one (len(a), len(b)) block the product allocates."""
    return (a @ b.T).mul_(gamma).add_(coef).pow_(degree)


class KIDResult(NamedTuple):
    """KID of a generated feature set against a reference.

    ``mean`` ± ``std``: the protocol's subset mean and (population) standard deviation over subsets, as torchmetrics
    and torch-fidelity report them; ``se``: the standard error of ``mean`` over redraws of the generated samples
    (reference fixed); ``full``: the unbiased MMD² of all samples; ``values``: the S subset values;
    ``leave_out``: the jackknife's leave-one-group-out values of ``full``.
    """

    mean: float
    std: float
    se: float
    full: float
    subsets: int
    subset_size: int
    values: np.ndarray
    leave_out: np.ndarray


def kid_subset_size(num_generated: int, num_reference: int, subset_size: int | None = None) -> int:
    """The subset size to use: ``subset_size`` if both sets have that many samples (else a ValueError that says
    what to change); ``None`` gives the protocol's 1000, capped by the smaller set."""
    small = min(int(num_generated), int(num_reference))
    if subset_size is None:
        size = min(DEFAULT_KID_SUBSET_SIZE, small)
    else:
        if not isinstance(subset_size, (int, np.integer)) or subset_size < 2:
            raise ValueError(f"KID subset size must be an int >= 2, got {subset_size!r}")
        size = int(subset_size)
    if size < 2 or size > small:
        raise ValueError(f"KID subset size {size} needs at least {size} samples on each side, but there are "
                         f"{num_generated} generated and {num_reference} reference samples: pass a subset size <= "
                         f"{small} (--kid-subset-size) or use more samples")
    return size


def _indicator(n: int, index_sets: list[np.ndarray]) -> torch.Tensor:
    """(n, len(index_sets)) float64 0/1 matrix; column s marks the members of set s."""
    a = torch.zeros(n, len(index_sets), dtype=torch.float64)
    for s, idx in enumerate(index_sets):
        a[torch.from_numpy(idx), s] = 1.0
    return a


def draw_subsets(n: int, size: int, count: int, seed: int, side: int) -> list[np.ndarray]:
    """``count`` subsets of ``size`` of ``range(n)`` without replacement; the real (side 0) and generated (side 1)
    draws are separate streams, so the generated subsets are the same in every cell of a sweep."""
    rng = np.random.default_rng([int(seed), side])
    return [rng.choice(n, size, replace=False) for _ in range(count)]


def _row_chunks(rows: int, cols: int, max_bytes: int) -> list[slice]:
    c = max(1, min(rows, int(max_bytes) // (8 * max(cols, 1))))
    return [slice(a, min(a + c, rows)) for a in range(0, rows, c)]


class KIDReference:
    """The reference side of KID, computed once and reused for every generated set (every cell of a sweep).

    Holds the reference features, the real subsets and their within-reference kernel sums, and the unbiased
    within-reference mean over all pairs.
    """

    def __init__(self, real, subsets: int = DEFAULT_KID_SUBSETS, subset_size: int = DEFAULT_KID_SUBSET_SIZE,
                 degree: int = 3, gamma: float | None = None, coef: float = 1.0, seed: int = 0,
                 max_chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        x = as_features(real, "reference features", min_samples=2)
        if not isinstance(subsets, (int, np.integer)) or subsets < 1:
            raise ValueError(f"KID subsets must be an int >= 1 (--kid-subsets), got {subsets!r}")
        if not isinstance(degree, (int, np.integer)) or degree < 1:
            raise ValueError(f"KID kernel degree must be an int >= 1, got {degree!r}")
        if gamma is not None and not gamma > 0:
            raise ValueError(f"KID kernel gamma must be > 0 or None (1/d), got {gamma!r}")
        if not coef > 0:
            raise ValueError(f"KID kernel coef must be > 0, got {coef!r}")
        self.subset_size = kid_subset_size(x.shape[0], x.shape[0], subset_size)
        self.x, self.subsets, self.seed, self.max_chunk_bytes = x, int(subsets), int(seed), int(max_chunk_bytes)
        self.kernel = dict(degree=int(degree), gamma=1.0 / x.shape[1] if gamma is None else float(gamma),
                           coef=float(coef))
        r, m = x.shape[0], self.subset_size
        self.indicator = _indicator(r, draw_subsets(r, m, self.subsets, seed, side=0))
        within = torch.zeros(self.subsets, dtype=torch.float64)
        total = torch.zeros((), dtype=torch.float64)
        diag = torch.empty(r, dtype=torch.float64)
        for rows in _row_chunks(r, r, max_chunk_bytes):
            k = poly_kernel(x[rows], x, **self.kernel)
            within += ((k @ self.indicator) * self.indicator[rows]).sum(0)
            total += k.sum()
            diag[rows] = torch.diagonal(k[:, rows])
        # the unbiased sums leave out i = j: subtract exactly the diagonal entries the matmul produced
        self.subset_terms = (within - self.indicator.T @ diag) / (m * (m - 1))
        self.full_term = float((total - diag.sum()) / (r * (r - 1)))

    def settings(self) -> dict:
        return {"subsets": self.subsets, "subset_size": self.subset_size, "seed": self.seed, **self.kernel}


def kernel_inception_distance(fake, real, subsets: int = DEFAULT_KID_SUBSETS, subset_size: int | None = None,
                              degree: int = 3, gamma: float | None = None, coef: float = 1.0, seed: int = 0,
                              groups: int = DEFAULT_SE_GROUPS,
                              max_chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> KIDResult:
    """KID of generated features ``fake`` (N, d) against ``real`` (R, d) features or a :class:`KIDReference`.

    ``subset_size=None`` takes the protocol's 1000 capped by the smaller set; an explicit size larger than either
    set is a ValueError. With a :class:`KIDReference`, its settings are used and the others are ignored.
    """
    if isinstance(real, KIDReference):
        ref = real
        y = as_features(fake, "generated features", min_samples=2)
        kid_subset_size(y.shape[0], ref.x.shape[0], ref.subset_size)
    else:
        y = as_features(fake, "generated features", min_samples=2)
        x = as_features(real, "reference features", min_samples=2)
        check_same_dim(y.shape[1], x.shape[1], "the generated and reference features")
        size = kid_subset_size(y.shape[0], x.shape[0], subset_size)
        ref = KIDReference(x, subsets, size, degree, gamma, coef, seed, max_chunk_bytes)
    x = ref.x
    check_same_dim(y.shape[1], x.shape[1], "the generated and reference features")
    n, r, m, s = y.shape[0], x.shape[0], ref.subset_size, ref.subsets
    fake_ind = _indicator(n, draw_subsets(n, m, s, ref.seed, side=1))
    blocks = jackknife_groups(n, groups)
    group_ind = torch.zeros(n, len(blocks), dtype=torch.float64)
    for g, b in enumerate(blocks):
        group_ind[b, g] = 1.0

    within = torch.zeros(s, dtype=torch.float64)  # Σ_{i,j ∈ subset} k(yᵢ, yⱼ), diagonal included
    cross = torch.zeros(s, dtype=torch.float64)  # Σ_{i ∈ real subset, j ∈ fake subset} k(xᵢ, yⱼ)
    block_ff = torch.zeros(len(blocks), len(blocks), dtype=torch.float64)  # Σ over group pairs of k(yᵢ, yⱼ)
    block_fr = torch.zeros(len(blocks), dtype=torch.float64)  # Σ over a group and all of real of k(x, y)
    diag = torch.empty(n, dtype=torch.float64)
    for rows in _row_chunks(n, n + r, ref.max_chunk_bytes):  # k_ff and k_fr together: one block
        k_ff = poly_kernel(y[rows], y, **ref.kernel)
        k_fr = poly_kernel(y[rows], x, **ref.kernel)
        within += ((k_ff @ fake_ind) * fake_ind[rows]).sum(0)
        cross += ((k_fr @ ref.indicator) * fake_ind[rows]).sum(0)
        block_ff += group_ind[rows].T @ (k_ff @ group_ind)
        block_fr += group_ind[rows].T @ k_fr.sum(1)
        diag[rows] = torch.diagonal(k_ff[:, rows])

    values = ref.subset_terms + (within - fake_ind.T @ diag) / (m * (m - 1)) - 2.0 * cross / (m * m)

    group_diag = group_ind.T @ diag
    total_ff, total_fr, total_diag = block_ff.sum(), block_fr.sum(), diag.sum()
    full = ref.full_term + float((total_ff - total_diag) / (n * (n - 1)) - 2.0 * total_fr / (n * r))
    leave_out = []
    for g, b in enumerate(blocks):
        k = n - (b.stop - b.start)
        ff = total_ff - block_ff[g].sum() - block_ff[:, g].sum() + block_ff[g, g] - (total_diag - group_diag[g])
        leave_out.append(ref.full_term + float(ff / (k * (k - 1)) - 2.0 * (total_fr - block_fr[g]) / (k * r)))
    leave_out = np.asarray(leave_out)
    v = values.numpy()
    mc_var = float(np.var(v, ddof=1)) / s if s > 1 else 0.0
    se = float(np.sqrt(jackknife_se(leave_out) ** 2 + mc_var))
    return KIDResult(float(v.mean()), float(v.std()), se, full, s, m, v, leave_out)
