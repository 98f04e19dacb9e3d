"""Coil sensitivities from the fully sampled k-space centre: ESPIRiT (Uecker et al. 2014), in torch.

ESPIRiT in four steps (docs/dds.md §8):

1. every ``k×k`` patch of the calibration region (all coils) is a row of the calibration matrix; its dominant right
   singular vectors (singular values above ``threshold·σ_max``) span the signal subspace of k-space patches;
2. projecting every patch onto that subspace and averaging the overlapping patches is a k-space convolution that
   multi-coil data satisfy exactly; in image space it is a ``C×C`` Hermitian matrix ``W(r)`` per pixel with
   ``W(r)·s(r) = s(r)`` for the vector of sensitivities ``s(r)``;
3. ``W(r)`` is a trigonometric polynomial of degree ``k−1``: its ``(2k−1)²`` Fourier coefficients are the kernels'
   cross-correlations (one small FFT), and it is evaluated on the image grid one strip of rows at a time, so memory
   stays at ``C²·strip·W`` however large the image;
4. the sensitivities are the eigenvectors of eigenvalue ≈ 1 (unit norm, so ``Σ_c |S_c|² = 1`` and the SENSE operator
   keeps ``‖A‖ <= 1``), set to 0 where the eigenvalue is below ``crop`` (no signal), with the phase of a smooth
   virtual coil removed so that the image keeps a smooth phase.
"""

from __future__ import annotations

import math

import torch

__all__ = ["acs_region", "calibration_region", "espirit_maps", "map_error"]

#: Pixels per strip while evaluating ``W(r)`` and its eigenvectors (bounds memory to ~C²·strip·8 bytes).
_STRIP_PIXELS = 1 << 14


def acs_region(mask: torch.Tensor) -> tuple[slice, slice]:
    """The largest fully sampled rectangle around the k-space centre ``(H//2, W//2)`` of a ``(H, W)`` 0/1 mask,
    as ``(rows, cols)`` slices; grown one row or column at a time while the new edge is fully sampled."""
    m = torch.as_tensor(mask).to(torch.bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {tuple(m.shape)}")
    H, W = m.shape
    if not m[H // 2, W // 2]:
        raise ValueError("the k-space centre is not sampled: coil maps need a fully sampled centre (ACS); sample "
                         "the central columns (center_fraction > 0) or pass the sensitivities")
    r0, r1, c0, c1 = H // 2, H // 2 + 1, W // 2, W // 2 + 1
    grown = True
    while grown:
        grown = False
        if c0 > 0 and m[r0:r1, c0 - 1].all():
            c0, grown = c0 - 1, True
        if c1 < W and m[r0:r1, c1].all():
            c1, grown = c1 + 1, True
        if r0 > 0 and m[r0 - 1, c0:c1].all():
            r0, grown = r0 - 1, True
        if r1 < H and m[r1, c0:c1].all():
            r1, grown = r1 + 1, True
    return slice(r0, r1), slice(c0, c1)


def _centred(region: slice, size: int | None) -> slice:
    """The central ``size`` entries of ``region`` (all of it if ``size`` is None or larger)."""
    n = region.stop - region.start
    if size is None or size >= n:
        return region
    start = region.start + (n - size) // 2
    return slice(start, start + size)


def calibration_region(mask: torch.Tensor, calib: int | tuple[int, int] | None = 24,
                       kernel: int = 6) -> tuple[slice, slice, int]:
    """The calibration region of :func:`espirit_maps` and the kernel width it supports: the central ``calib``
    (rows, columns) of the fully sampled centre (:func:`acs_region`; ``None``: all of it), and ``kernel`` shrunk to
    ``⌈side/2⌉`` for a narrow region (side = its shorter side): the subspace needs several patch positions across
    the region (measured: a 6-wide kernel on a 7-column ACS loses 70 % of the maps, a 3-wide one is within 2 %).
    ValueError if not even a 2-wide kernel fits."""
    rows, cols = acs_region(mask)
    ch, cw = (calib, calib) if calib is None or isinstance(calib, int) else calib
    rows, cols = _centred(rows, ch), _centred(cols, cw)
    side = min(rows.stop - rows.start, cols.stop - cols.start)
    k = min(kernel, (side + 1) // 2)
    if k < 2:
        raise ValueError(f"the fully sampled centre is {rows.stop - rows.start}×{cols.stop - cols.start}: ESPIRiT "
                         "needs at least 3 fully sampled central lines; sample more (a larger ACS) or pass the "
                         "sensitivities")
    return rows, cols, k


def _signal_kernels(calib: torch.Tensor, kernel: int, threshold: float) -> torch.Tensor:
    """Rows of the calibration matrix's signal subspace, as kernels ``(r, C, k, k)`` (complex128)."""
    C = calib.shape[0]
    patches = calib.unfold(1, kernel, 1).unfold(2, kernel, 1)  # (C, h', w', k, k)
    rows = patches.permute(1, 2, 0, 3, 4).reshape(-1, C * kernel * kernel)
    _, sv, vh = torch.linalg.svd(rows, full_matrices=False)
    keep = sv > threshold * sv[0]
    return vh[keep].reshape(-1, C, kernel, kernel)


def _kernel_correlations(kernels: torch.Tensor) -> torch.Tensor:
    """Fourier coefficients ``Ŵ_cd[e] = Σ_j Σ_a v_j[c, a+e]·conj(v_j[d, a])`` of ``W(r)·k²`` at offsets
    ``e ∈ (−k, k)²``, as ``(C, C, 2k−1, 2k−1)`` (offset −(k−1) first), by one FFT on a ``2k×2k`` grid."""
    r, C, k, _ = kernels.shape
    L = 2 * k
    spec = torch.fft.fft2(kernels, s=(L, L))  # (r, C, L, L)
    gram = torch.einsum("jcyx,jdyx->cdyx", spec, spec.conj())
    corr = torch.fft.ifft2(gram)  # index e mod L
    idx = torch.arange(-(k - 1), k) % L
    return corr[:, :, idx][:, :, :, idx]


def _strip_exponentials(n: int, k: int, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``exp(2πi·e·(index − n//2)/n)`` for offsets ``e ∈ (−k, k)``: ``(2k−1, len(index))``. Pixel ``i`` of a
    centred image (``ifft2c``) sits at coordinate ``i − n//2``."""
    e = torch.arange(-(k - 1), k, dtype=torch.float64)
    phase = 2 * math.pi * e[:, None] * (index.to(torch.float64)[None, :] - n // 2) / n
    return torch.polar(torch.ones_like(phase), phase).to(dtype)


def espirit_maps(
    kspace: torch.Tensor,
    mask: torch.Tensor | None = None,
    calib: int | tuple[int, int] | None = 24,
    kernel: int = 6,
    threshold: float = 0.02,
    crop: float = 0.95,
) -> torch.Tensor:
    """ESPIRiT coil sensitivities ``(C, H, W)`` complex64 from one slice of centred multi-coil k-space.

    Args:
        kspace: ``(C, H, W)`` complex, the fastMRI convention (centred orthonormal FFT), zero where not sampled.
        mask: ``(H, W)`` 0/1 sampling pattern (default: the non-zero entries of ``kspace``); the calibration data are
            taken from its fully sampled centre (:func:`acs_region`).
        calib: side(s) of the calibration region, cut from the centre of the fully sampled region (``None``: all
            of it). The default 24 is BART's and sigpy's.
        kernel: k-space kernel width ``k`` (6, as in BART and sigpy; narrower for a narrow calibration region,
            :func:`calibration_region`).
        threshold: singular values above ``threshold·σ_max`` span the signal subspace.
        crop: sensitivities are 0 where the top eigenvalue of ``W(r)`` is below this (no signal there).

    Returns:
        Unit-norm sensitivities (``Σ_c |S_c|² = 1``) where the eigenvalue reaches ``crop``, 0 elsewhere.
    """
    k = torch.as_tensor(kspace)
    if not k.is_complex() or k.ndim != 3:
        raise TypeError(f"kspace must be complex (C, H, W), got {k.dtype} {tuple(k.shape)}")
    C, H, W = k.shape
    m = (k.abs().sum(0) > 0) if mask is None else torch.as_tensor(mask).to(torch.bool)
    if tuple(m.shape) != (H, W):
        raise ValueError(f"mask {tuple(m.shape)} does not match kspace (H, W) = {(H, W)}")
    if not (isinstance(kernel, int) and kernel >= 1) or not 0 < threshold < 1 or not 0 <= crop < 1:
        raise ValueError(f"need kernel >= 1, 0 < threshold < 1, 0 <= crop < 1; got {kernel}, {threshold}, {crop}")
    rows, cols, kernel = calibration_region(m, calib, kernel)
    data = k[:, rows, cols].to(torch.complex128)
    kernels = _signal_kernels(data, kernel, threshold)
    coeffs = _kernel_correlations(kernels) / kernel**2  # (C, C, 2k−1, 2k−1)
    ex = _strip_exponentials(W, kernel, torch.arange(W), torch.complex128)
    along_x = torch.einsum("cdyx,xw->cdyw", coeffs, ex).to(torch.complex64)  # (C, C, 2k−1, W)
    # A virtual coil: the dominant coil combination of the calibration data, whose phase is removed below.
    flat = data.reshape(C, -1)
    virtual = torch.linalg.eigh(flat @ flat.mH)[1][:, -1].to(torch.complex64)
    maps = torch.zeros(H, W, C, dtype=torch.complex64)
    step = max(1, _STRIP_PIXELS // W)
    for r0 in range(0, H, step):
        idx = torch.arange(r0, min(r0 + step, H))
        ey = _strip_exponentials(H, kernel, idx, torch.complex64)
        w = torch.einsum("cdew,ey->ywcd", along_x, ey)  # (strip, W, C, C), Hermitian per pixel
        vals, vecs = torch.linalg.eigh(w)
        s = vecs[..., -1]
        ref = (virtual.conj() * s).sum(-1, keepdim=True)
        s = s * torch.where(ref.abs() > 0, ref.conj() / ref.abs().clamp_min(1e-30), torch.ones_like(ref))
        maps[idx] = torch.where(vals[..., -1:] >= crop, s, torch.zeros_like(s))
    return maps.permute(2, 0, 1).contiguous()


def map_error(estimate: torch.Tensor, truth: torch.Tensor, support: torch.Tensor | None = None) -> float:
    """Relative error ``‖S_true − e^{iφ}·S_est‖ / ‖S_true‖`` over ``support`` (default: everywhere), with the
    per-pixel phase ``φ(r)`` that aligns the two (SENSE determines maps only up to a per-pixel phase, which the image
    absorbs). Maps ``(C, H, W)``; float64 sums."""
    est, tru = torch.as_tensor(estimate).to(torch.complex128), torch.as_tensor(truth).to(torch.complex128)
    if est.shape != tru.shape:
        raise ValueError(f"estimate {tuple(est.shape)} and truth {tuple(tru.shape)} differ in shape")
    inner = (est.conj() * tru).sum(0)
    aligned = est * torch.where(inner.abs() > 0, inner / inner.abs().clamp_min(1e-300), torch.ones_like(inner))
    sel = torch.ones(est.shape[1:], dtype=torch.bool) if support is None else torch.as_tensor(support).to(torch.bool)
    num = (tru - aligned)[:, sel].abs().pow(2).sum()
    den = tru[:, sel].abs().pow(2).sum().clamp_min(1e-300)
    return float((num / den).sqrt())
