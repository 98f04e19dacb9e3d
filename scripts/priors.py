"""The training data of each bundled prior: how a batch is drawn, and how it is described in ``training.json``.

| prior | images | augmentation |
|---|---|---|
| ``digits`` | sklearn digits, split "train" (1438 images), 16×16 in [-1, 1] | random shifts of up to 1 px |
| ``phantoms`` | random ellipse phantoms, 32×32, [0, 1] mapped to [-1, 1] | random flips |
| ``phantoms-complex`` | (real, imag) of phantom × smooth random phase, 2×32×32 | random flips |

Phantoms are rendered on the fly; rendering costs about as much as a training step, so batches are drawn from a
pool of ``pool`` phantoms of which ``refresh`` are re-rendered every 100 steps (seeded by the step, so a resumed
run continues with the same fresh phantoms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

PRIORS = ("digits", "phantoms", "phantoms-complex")


@dataclass
class PriorData:
    name: str
    sample_size: int
    in_channels: int
    description: str
    batches: Callable[[int], Callable[[int, torch.Generator], torch.Tensor]]  # batch_size -> get_batch


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator, fill: float = -1.0) -> torch.Tensor:
    """Shift each image by its own integer offset in [-max_shift, max_shift]², filling with ``fill``."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=fill)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def random_flips(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip each image horizontally and vertically, each with probability 1/2 (the phantom law is symmetric)."""
    n = x.shape[0]
    flip_h = (torch.rand(n, generator=gen) < 0.5).view(-1, 1, 1, 1)
    flip_v = (torch.rand(n, generator=gen) < 0.5).view(-1, 1, 1, 1)
    x = torch.where(flip_h, x.flip(-1), x)
    return torch.where(flip_v, x.flip(-2), x)


def _digits() -> PriorData:
    from lml_sampler.data.digits import digits_dataset

    data = digits_dataset(16, "train")

    def batches(batch_size: int):
        def get_batch(step: int, gen: torch.Generator) -> torch.Tensor:
            idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen)
            return random_shift(data[idx], 1, gen)

        return get_batch

    return PriorData("digits", 16, 1, f"sklearn load_digits, split 'train' ({data.shape[0]} images), 16x16 "
                     "bilinear, [-1,1], random shifts <= 1 px", batches)


def _phantoms(complex_valued: bool, size: int = 32, pool: int = 4096, refresh: int = 256) -> PriorData:
    from lml_sampler.data.phantoms import random_complex_phantoms, random_ellipse_phantoms

    def render(n: int, gen: torch.Generator) -> torch.Tensor:
        if complex_valued:
            return random_complex_phantoms(n, size, gen)  # |x| <= 1: real and imaginary parts in [-1, 1]
        return random_ellipse_phantoms(n, size, gen) * 2.0 - 1.0

    def batches(batch_size: int):
        state: dict[str, torch.Tensor] = {}

        def get_batch(step: int, gen: torch.Generator) -> torch.Tensor:
            if "pool" not in state:
                state["pool"] = render(pool, torch.Generator().manual_seed(step))
            elif step % 100 == 0:
                g = torch.Generator().manual_seed(step + 1)
                idx = torch.randperm(pool, generator=g)[:refresh]
                state["pool"][idx] = render(refresh, g)
            x = state["pool"][torch.randint(0, pool, (batch_size,), generator=gen)]
            return random_flips(x, gen)

        return get_batch

    what = (f"random_complex_phantoms (real, imag) {size}x{size}" if complex_valued
            else f"random_ellipse_phantoms {size}x{size} mapped [0,1] -> [-1,1]")
    return PriorData("phantoms-complex" if complex_valued else "phantoms", size, 2 if complex_valued else 1,
                     f"{what}, pool {pool} refreshed {refresh}/100 steps, random flips", batches)


def prior_data(name: str, size: int | None = None) -> PriorData:
    """The :class:`PriorData` of bundled prior ``name`` (``size``: the phantoms' side, default 32)."""
    if name == "digits":
        if size not in (None, 16):
            raise ValueError("the digits prior is 16x16 (the sklearn digits are 8x8 upsampled twice)")
        return _digits()
    if name in ("phantoms", "phantoms-complex"):
        return _phantoms(name == "phantoms-complex", size=size or 32)
    raise ValueError(f"unknown prior {name!r}: choose from {PRIORS}")
