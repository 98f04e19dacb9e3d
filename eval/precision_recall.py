"""Precision and recall of a generated feature set by k-NN manifolds (Kynkäänniemi et al. 2019), with density and
coverage (Naeem et al. 2020) from the same distances.

Each set's manifold is the union of balls around its samples whose radius is the distance to the sample's k-th
nearest neighbour in the same set (k = 3; the sample itself excluded). Then, for generated ``Y`` (N) and reference
``X`` (R):

* precision = fraction of ``Y`` inside the manifold of ``X`` (fidelity: generated samples look real);
* recall = fraction of ``X`` inside the manifold of ``Y`` (diversity: the real data is covered);
* density = (1/(kN)) Σ_y #{x : ‖y − x‖ ≤ r_x} (precision that counts how many real balls hold each sample);
* coverage = fraction of ``X`` whose own ball holds at least one generated sample.

"Inside" is ``≤`` as in the reference implementation of Kynkäänniemi et al. Distances are float64,
``‖a‖² + ‖b‖² − 2aᵀb`` clamped at 0, computed in row blocks of at most ``max_chunk_bytes``: memory is O(chunk · max(N,
R)), never N × R, so 50k against 50k runs in a few hundred MiB (docs/metrics.md §3).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .features import as_features, check_same_dim

__all__ = ["PrecisionRecall", "check_k", "knn_radii", "precision_recall", "DEFAULT_K"]

DEFAULT_K = 3
DEFAULT_CHUNK_BYTES = 128 * 2**20


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float
    density: float
    coverage: float
    k: int
    num_generated: int
    num_reference: int


def check_k(k: int, num_generated: int, num_reference: int) -> int:
    """``k`` if every set has more than k samples (a k-th neighbour other than the sample itself)."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1 (--pr-k), got {k!r}")
    small = min(num_generated, num_reference)
    if k >= small:
        raise ValueError(f"k = {k} needs more than {k} samples in each set, but there are {num_generated} generated "
                         f"and {num_reference} reference samples: pass k <= {small - 1} (--pr-k) or use more samples")
    return k


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum(1)


def _sq_dist(a: torch.Tensor, a2: torch.Tensor, b: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """Squared distances, built in place in the one (len(a), len(b)) float64 block."""
    d = a @ b.T
    return d.mul_(-2.0).add_(a2[:, None]).add_(b2[None, :]).clamp_min_(0.0)


def _row_chunks(rows: int, cols: int, max_bytes: int) -> list[slice]:
    # the float64 distance block and its two boolean masks: 10 bytes per entry
    c = max(1, min(rows, int(max_bytes) // (10 * max(cols, 1))))
    return [slice(a, min(a + c, rows)) for a in range(0, rows, c)]


def knn_radii(features, k: int = DEFAULT_K, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Squared distance of each sample to its k-th nearest neighbour in the same set (itself excluded)."""
    x = as_features(features)
    check_k(k, x.shape[0], x.shape[0])
    x2 = _sq_norms(x)
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for rows in _row_chunks(x.shape[0], x.shape[0], max_chunk_bytes):
        d = _sq_dist(x[rows], x2[rows], x, x2)
        # the k+1 smallest include the sample itself (distance 0): the last of them is the k-th neighbour
        out[rows] = torch.topk(d, k + 1, dim=1, largest=False).values[:, k]
    return out


def precision_recall(fake, real, k: int = DEFAULT_K, real_radii: torch.Tensor | None = None,
                     max_chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> PrecisionRecall:
    """Precision, recall, density and coverage of generated ``fake`` (N, d) against reference ``real`` (R, d).

    ``real_radii`` (from :func:`knn_radii` with the same k) skips recomputing the reference manifold, e.g. across
    the cells of a sweep.
    """
    y = as_features(fake, "generated features")
    x = as_features(real, "reference features")
    check_same_dim(y.shape[1], x.shape[1], "the generated and reference features")
    n, r = y.shape[0], x.shape[0]
    check_k(k, n, r)
    rx = knn_radii(x, k, max_chunk_bytes) if real_radii is None else torch.as_tensor(real_radii, dtype=torch.float64)
    if rx.shape != (r,):
        raise ValueError(f"real_radii must have shape ({r},), got {tuple(rx.shape)}")
    ry = knn_radii(y, k, max_chunk_bytes)
    x2, y2 = _sq_norms(x), _sq_norms(y)
    precise = 0
    density = 0
    covered = torch.zeros(r, dtype=torch.bool)
    recalled = torch.zeros(r, dtype=torch.bool)
    for rows in _row_chunks(n, r, max_chunk_bytes):
        d = _sq_dist(y[rows], y2[rows], x, x2)  # (chunk of generated, all reference)
        in_real = d <= rx[None, :]
        precise += int(in_real.any(1).sum())
        density += int(in_real.sum())
        covered |= in_real.any(0)
        recalled |= (d <= ry[rows, None]).any(0)
    return PrecisionRecall(precise / n, int(recalled.sum()) / r, density / (k * n), int(covered.sum()) / r, k, n, r)
