"""Train the bundled "digits" DDPM: a ~1.1 M-parameter diffusers UNet2DModel on sklearn's digits at 16x16.

One command (resumable, CPU, one thread)::

    python scripts/train_digits.py --out lml_sampler/models/weights/digits --minutes 15
    python scripts/train_digits.py --out lml_sampler/models/weights/digits --minutes 30 --resume  # continue

``--minutes`` is the *total* training wall-time budget (it includes the time of earlier runs when resuming).
Recipe: epsilon-prediction DDPM, linear betas (1e-4..0.02), 1000 training steps, AdamW with linear warm-up,
EMA of weights (the EMA weights are what is exported), random shifts of up to one pixel (no flips: digits are not
flip-symmetric). Checkpoints (model + EMA + optimizer + step + RNG) are written atomically every few minutes to
``--ckpt`` (outside the package). The exported folder is a ``DDPMPipeline.save_pretrained`` folder (safetensors)
with ``training.json`` beside it.

The generic loop (``train_ddpm``) is shared with ``scripts/train_phantoms.py``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in the checkpoint and in training.json."""

    name: str
    sample_size: int
    in_channels: int = 1
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    attention: tuple[bool, ...] = (False, False, True)  # one small attention block at the coarsest level
    layers_per_block: int = 1
    batch_size: int = 64
    lr: float = 5e-4
    warmup_steps: int = 200
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    minutes: float = 15.0
    max_steps: int | None = None
    ckpt_every_min: float = 3.0
    export_every_min: float | None = None  # periodic export of the EMA weights (phantoms); None: only at the end
    num_train_timesteps: int = 1000
    data: str = ""
    extra: dict = field(default_factory=dict)


def build_unet(cfg: TrainConfig):
    """The UNet2DModel of ``cfg`` (no attention except where ``cfg.attention`` says)."""
    from diffusers import UNet2DModel

    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=8,  # 32 channels / 8 groups: the default 32 groups would make GroupNorm per-channel
        attention_head_dim=32,
    )


def build_scheduler(cfg: TrainConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="epsilon",
        clip_sample=True,
        clip_sample_range=1.0,
    )


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def export_pipeline(ema_unet, cfg: TrainConfig, out: Path, info: dict) -> None:
    """Write ``DDPMPipeline(ema_unet, scheduler).save_pretrained(out)`` plus ``training.json``.

    The folder is assembled beside ``out`` and swapped in with two renames, so a reader sees either the old or the
    new complete folder (never a half-written safetensors file).
    """
    from diffusers import DDPMPipeline

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new."))
    pipe = DDPMPipeline(unet=ema_unet, scheduler=build_scheduler(cfg))
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    # mkdtemp/safetensors create owner-only modes; package data must be world-readable
    for path in [tmp, *tmp.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old.{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@torch.no_grad()
def preview_grid(unet, cfg: TrainConfig, path: Path, n: int = 64, steps: int = 50, seed: int = 0) -> None:
    """Quick DDIM-``steps`` sample grid of ``unet`` (monitoring only; channel 0, or magnitude for 2 channels)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(build_scheduler(cfg).config)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    unet.eval()
    for t in sched.timesteps:
        x = sched.step(unet(x, t).sample, t, x).prev_sample
    save_grid(x.clamp(-1, 1), path)


def save_grid(
    x: torch.Tensor, path: Path, nrow: int | None = None, value_range=(-1.0, 1.0), scale: int = 4
) -> None:
    """Save ``(N, C, H, W)`` images as a grey PNG grid (magnitude if C == 2) without torchvision.

    ``scale`` enlarges pixels (nearest neighbour) so that 16x16 images stay visible in a README.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = x.detach().float().cpu()
    if x.shape[1] == 2:
        # complex images stored as (real, imag) in [-1, 1]; show magnitude rescaled to [-1, 1]
        x = (x.pow(2).sum(1, keepdim=True).sqrt() * 2 - 1).clamp(-1, 1)
    x = x[:, 0]
    lo, hi = value_range
    x = ((x - lo) / (hi - lo)).clamp(0, 1)
    n, h, w = x.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    pad = 1
    canvas = torch.ones(ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, nrow)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = x[i]
    if scale > 1:
        canvas = canvas.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, canvas.numpy(), cmap="gray", vmin=0.0, vmax=1.0)


def train_ddpm(
    cfg: TrainConfig,
    get_batch: Callable[[int, torch.Generator], torch.Tensor],
    out: Path,
    ckpt: Path,
    resume: bool,
    preview: Path | None = None,
) -> dict:
    """Generic resumable epsilon-prediction DDPM training loop; returns the training.json dict it exported.

    ``get_batch(step, generator)`` returns a training batch ``(B, C, H, W)`` in [-1, 1] (augmented).
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    unet = build_unet(cfg)
    ema = copy.deepcopy(unet).requires_grad_(False)
    sched = build_scheduler(cfg)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, elapsed, loss_ema, history = 0, 0.0, None, []
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed, loss_ema = state["step"], state["elapsed_s"], state["loss_ema"]
        history = state.get("history", [])
        gen.set_state(state["gen_state"])
        torch.set_rng_state(state["torch_rng"])
        print(f"[{cfg.name}] resumed from {ckpt} at step {step} ({elapsed / 60:.1f} min)", flush=True)
    elif resume:
        print(f"[{cfg.name}] --resume: no checkpoint at {ckpt}, starting fresh", flush=True)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"[{cfg.name}] {n_params / 1e6:.3f} M parameters, budget {cfg.minutes} min", flush=True)
    alphas_cumprod = sched.alphas_cumprod.to(torch.float32)
    ema_params, params = list(ema.parameters()), list(unet.parameters())

    def info(final: bool) -> dict:
        return {
            "name": cfg.name,
            "status": "final" if final else "in progress (periodic export)",
            "steps": step,
            "train_minutes": round(elapsed / 60, 2),
            "final_loss_ema": None if loss_ema is None else round(loss_ema, 5),
            "loss_ema_note": "exponential moving average (decay 0.99) of the per-step epsilon-MSE training loss",
            "seed": cfg.seed,
            "data": cfg.data,
            "params": n_params,
            "samples_seen": step * cfg.batch_size,
            "hardware": "CPU, torch.set_num_threads(1), shared 2-core machine",
            "torch": torch.__version__,
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("extra",)},
            "loss_history": history[-200:],
        } | cfg.extra

    def save_ckpt() -> None:
        atomic_torch_save(
            {
                "model": unet.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "elapsed_s": elapsed,
                "loss_ema": loss_ema,
                "history": history,
                "gen_state": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "config": asdict(cfg),
            },
            ckpt,
        )

    last_ckpt = last_export = time.monotonic()
    t_start, elapsed0 = time.monotonic(), elapsed
    unet.train()
    while elapsed < cfg.minutes * 60 and (cfg.max_steps is None or step < cfg.max_steps):
        x0 = get_batch(step, gen)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), generator=gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(xt, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
        opt.step()
        step += 1
        # EMA warm-up (as in diffusers' EMAModel): early weights are not averaged with the random init for long.
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        li = loss.item()
        loss_ema = li if loss_ema is None else 0.99 * loss_ema + 0.01 * li
        now = time.monotonic()
        elapsed = elapsed0 + (now - t_start)
        if step % 100 == 0:
            history.append([step, round(elapsed / 60, 2), round(loss_ema, 5)])
            print(f"[{cfg.name}] step {step} {elapsed / 60:.1f} min loss_ema {loss_ema:.4f}", flush=True)
        if now - last_ckpt > cfg.ckpt_every_min * 60:
            save_ckpt()
            last_ckpt = now
        if cfg.export_every_min is not None and now - last_export > cfg.export_every_min * 60:
            export_pipeline(ema, cfg, out, info(final=False))
            if preview is not None:
                preview_grid(ema, cfg, preview)
            print(f"[{cfg.name}] exported EMA weights at step {step} to {out}", flush=True)
            last_export = time.monotonic()
            t_start, elapsed0 = time.monotonic(), elapsed  # exporting/previewing is not training time
            unet.train()
    save_ckpt()
    final = info(final=True)
    export_pipeline(ema, cfg, out, final)
    if preview is not None:
        preview_grid(ema, cfg, preview)
    print(f"[{cfg.name}] done: {step} steps, {elapsed / 60:.1f} min, loss_ema {loss_ema:.4f} -> {out}", flush=True)
    return final


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator, fill: float = -1.0) -> torch.Tensor:
    """Shift each image by an independent integer offset in [-max_shift, max_shift]^2, filling with ``fill``."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=fill)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):  # n <= 128 tiny crops: negligible next to the UNet step
        out[i] = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "lml_sampler/models/weights/digits")
    p.add_argument("--ckpt", type=Path, default=Path.home() / ".cache/lml_sampler/train_digits.pt")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--minutes", type=float, default=15.0, help="total training wall-time budget (incl. resumed)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--preview", type=Path, default=None, help="PNG for a DDIM-50 sample grid at each export")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from lml_sampler.data.digits import digits_dataset

    data = digits_dataset(16, "train")
    cfg = TrainConfig(
        name="digits",
        sample_size=16,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        minutes=args.minutes,
        max_steps=args.max_steps,
        data=f"sklearn load_digits, split 'train' ({data.shape[0]} images), 16x16 bilinear, [-1,1], "
        "random shifts <= 1 px",
    )

    def get_batch(step: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, data.shape[0], (cfg.batch_size,), generator=gen)
        return random_shift(data[idx], 1, gen)

    train_ddpm(cfg, get_batch, args.out, args.ckpt, args.resume, args.preview)


if __name__ == "__main__":
    main()
