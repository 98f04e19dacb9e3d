"""A small, resumable DDPM training loop for the bundled priors, and for users' own priors at small sizes.

The loop trains a diffusers ``UNet2DModel`` with ε-prediction on the DDPM forward process and exports the EMA
weights as a ``DDPMPipeline.save_pretrained`` folder, which every sampler and pipeline of this package loads.
What can be chosen (``TrainConfig``; ``docs/training.md`` explains each choice and gives the measurements):

- loss weighting: uniform ε-MSE (Ho et al. 2020) or min-SNR-γ (Hang et al. 2023), which weights step t by
  min(SNR_t, γ)/SNR_t and stops the nearly-clean steps from dominating the gradient;
- learning rate: constant after a linear warm-up, or warm-up then cosine decay to zero at ``total_steps``;
- EMA of the weights with the usual warm-up ``min(decay, (1 + n)/(10 + n))``;
- the UNet's widths, depth and attention levels.

Checkpoints: ``<ckpt_dir>/full.pt`` (weights, EMA, optimizer, RNG: an exact resume) every few minutes, and the
portable ``<ckpt_dir>/model.safetensors`` + ``state.json`` (raw weights and counters, small enough to keep in a
repository) so that a run can continue on another machine; resuming from the portable state rebuilds the
optimizer moments during a short re-warm-up, which is recorded in the history.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .._io import atomic_folder, atomic_open, atomic_write_json

__all__ = ["TrainConfig", "RECIPES", "build_unet", "build_scheduler", "train_ddpm", "export_pipeline"]


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in the checkpoints and in ``training.json``."""

    name: str
    sample_size: int
    in_channels: int = 1
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    attention: tuple[bool, ...] = (False, False, True)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    batch_size: int = 64
    lr: float = 5e-4
    warmup_steps: int = 200
    lr_schedule: str = "constant"  # "constant" | "cosine"
    total_steps: int | None = None  # the length of the cosine schedule, and the step budget
    loss_weighting: str = "uniform"  # "uniform" | "min-snr"
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    num_train_timesteps: int = 1000
    ckpt_every_min: float = 3.0
    data: str = ""
    init_from: str | None = None
    notes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(self.block_out_channels)
        self.attention = tuple(self.attention)
        if len(self.attention) != len(self.block_out_channels):
            raise ValueError("attention needs one flag per entry of block_out_channels")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.lr_schedule == "cosine" and not self.total_steps:
            raise ValueError("lr_schedule='cosine' needs total_steps (the step at which the rate reaches 0)")
        if self.loss_weighting not in ("uniform", "min-snr"):
            raise ValueError(f"loss_weighting must be 'uniform' or 'min-snr', got {self.loss_weighting!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


#: Named recipes (overrides of :class:`TrainConfig`). ``wave1`` is the recipe of the first bundled weights;
#: ``min-snr-cosine`` is the better-conditioned one compared against it in ``docs/training.md`` §3.
RECIPES: dict[str, dict[str, Any]] = {
    "wave1": {},
    "min-snr-cosine": {"lr": 1e-3, "lr_schedule": "cosine", "loss_weighting": "min-snr", "batch_size": 64},
    "wide-shallow": {"lr": 1e-3, "lr_schedule": "cosine", "loss_weighting": "min-snr",
                     "block_out_channels": (64, 128), "attention": (False, True)},
}


def build_unet(cfg: TrainConfig):
    """The ``UNet2DModel`` of ``cfg`` (attention only at the levels ``cfg.attention`` marks)."""
    from diffusers import UNet2DModel

    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=cfg.norm_num_groups,  # diffusers' default 32 groups would make GroupNorm per-channel here
        attention_head_dim=min(32, cfg.block_out_channels[-1]),
    )


def build_scheduler(cfg: TrainConfig):
    """The DDPM schedule the model is trained on and exported with: linear β from 1e-4 to 0.02."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule="linear", beta_start=1e-4,
                         beta_end=0.02, prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The rate of optimizer step ``step`` (0-based): linear warm-up, then constant or cosine decay to 0."""
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    if cfg.lr_schedule == "constant":
        return cfg.lr * warm
    progress = min(1.0, step / cfg.total_steps)
    return cfg.lr * warm * 0.5 * (1.0 + math.cos(math.pi * progress))


def loss_weights(cfg: TrainConfig, alphas_cumprod_t: torch.Tensor) -> torch.Tensor:
    """Per-sample weights of the ε-MSE: 1, or min(SNR, γ)/SNR with SNR = ᾱ/(1 − ᾱ) (min-SNR-γ)."""
    if cfg.loss_weighting == "uniform":
        return torch.ones_like(alphas_cumprod_t)
    snr = alphas_cumprod_t / (1 - alphas_cumprod_t)
    return snr.clamp(max=cfg.min_snr_gamma) / snr


def run_lineage(info: dict) -> list[dict]:
    """The chain of runs behind a ``training.json`` dict, oldest first: each warm start's steps, minutes and recipe.

    A run records the chain of the weights it started from when it starts (``init_lineage``): the folder it was
    initialised from may be overwritten later (a prior re-shipped while a run warm-started from it trains), so its
    ``training.json`` at ship time would describe other weights. Runs without the record read it from the folder.
    """
    own = {"steps": info["steps"], "train_minutes": info["train_minutes"],
           "recipe": info["config"].get("notes", {}).get("recipe"), "init_from": info["config"].get("init_from")}
    if info.get("init_lineage") is not None:
        before, parent_config = list(info["init_lineage"]), info.get("init_config")
    else:
        before, parent_config = _parent_record(info["config"].get("init_from"))
        if before is None:
            return [own]
    if parent_config == info["config"]:
        # the init weights are an earlier snapshot of this very run (shipped mid-run): not a warm start
        before = before[:-1]
    return before + [own]


def _parent_record(init_from: str | None) -> tuple[list[dict] | None, dict | None]:
    """``(lineage, config)`` of the weights a run starts from, read now (None where they carry no training.json)."""
    path = Path(init_from) / "training.json" if init_from else None
    if path is None or not path.is_file():
        return None, None
    parent = json.loads(path.read_text())
    return parent.get("lineage") or run_lineage(parent), parent.get("config")


def export_pipeline(unet, cfg: TrainConfig, out: str | Path, info: dict) -> None:
    """Write ``DDPMPipeline(unet, scheduler).save_pretrained(out)`` and ``training.json``, as one folder swap."""
    from diffusers import DDPMPipeline

    with atomic_folder(out) as tmp:
        cpu_copy = copy.deepcopy(unet).to("cpu")
        DDPMPipeline(unet=cpu_copy, scheduler=build_scheduler(cfg)).save_pretrained(tmp, safe_serialization=True)
        (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")


def _load_unet_weights(unet, folder: str | Path) -> None:
    """Load UNet weights from an exported pipeline (``unet/``) or a checkpoint folder (``model.safetensors``).

    A source with another number of image channels (a 1-channel magnitude prior starting a 2-channel complex
    one) is adapted: the input convolution is tiled over the new channels and scaled so that the activations keep
    their size, the output convolution is tiled; every other tensor must match exactly.
    """
    from safetensors.torch import load_file

    path = Path(folder) / "unet" / "diffusion_pytorch_model.safetensors"
    if not path.is_file():
        path = Path(folder) / "model.safetensors"
    source, target = load_file(path), unet.state_dict()
    for key, value in source.items():
        want = target[key].shape
        if value.shape == want:
            continue
        if key == "conv_in.weight" and value.shape[0] == want[0]:
            reps = -(-want[1] // value.shape[1])
            source[key] = value.repeat(1, reps, 1, 1)[:, : want[1]] * (value.shape[1] / want[1])
        elif key in ("conv_out.weight", "conv_out.bias"):
            reps = -(-want[0] // value.shape[0])
            source[key] = value.repeat(reps, *([1] * (value.ndim - 1)))[: want[0]]
        else:
            raise ValueError(f"init_from={folder}: {key} has shape {tuple(value.shape)}, this model needs {tuple(want)}")
    unet.load_state_dict(source)


def train_ddpm(
    cfg: TrainConfig,
    get_batch: Callable[[int, torch.Generator], torch.Tensor],
    out: str | Path,
    ckpt_dir: str | Path,
    minutes: float | None = None,
    resume: bool = True,
    export_every_min: float | None = None,
    log: Callable[[str], None] = print,
    device: str | torch.device = "cpu",
) -> dict:
    """Train until ``cfg.total_steps`` or ``minutes`` of training time (both counted over resumed runs).

    Args:
        cfg: the run's configuration.
        get_batch: ``(step, generator) -> (B, C, H, W)`` training images in [-1, 1], augmented.
        out: the exported pipeline folder (EMA weights), written at the end and every ``export_every_min``.
        ckpt_dir: folder of the checkpoints (see the module docstring).
        minutes: training-time budget; ``None`` runs to ``cfg.total_steps``.
        resume: continue from ``ckpt_dir`` when it holds a run of the same configuration.
        device: where the model trains (``"cuda"`` on a GPU). Batches, noise and timesteps are drawn on the CPU
            from the run's generator and moved, so a run's data stream does not depend on the device.

    Returns the ``training.json`` dict of the final export.
    """
    if minutes is None and not cfg.total_steps:
        raise ValueError("give a budget: minutes= or cfg.total_steps")
    ckpt_dir = Path(ckpt_dir)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    unet = build_unet(cfg)
    if cfg.init_from:
        _load_unet_weights(unet, cfg.init_from)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    init_lineage, init_config = _parent_record(cfg.init_from)  # replaced by the saved record on a resume
    state = {"step": 0, "elapsed_s": 0.0, "loss_ema": None, "history": [], "rewarm_from": None,
             "init_lineage": init_lineage, "init_config": init_config}
    comparable = {k: v for k, v in asdict(cfg).items() if k not in ("ckpt_every_min", "notes")}

    def same_run(saved: dict) -> bool:
        saved = {k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items()}
        return all(saved.get(k) == (tuple(v) if isinstance(v, list) else v) for k, v in comparable.items())

    full = ckpt_dir / "full.pt"
    portable = ckpt_dir / "state.json"
    if resume and full.is_file():
        saved = torch.load(full, map_location="cpu", weights_only=False)
        if not same_run(saved["config"]):
            raise ValueError(f"{full} holds a run with another configuration; use another --ckpt or resume=False")
        unet.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        opt.load_state_dict(saved["optimizer"])
        state.update(init_lineage=None, init_config=None)  # runs older than the record: unknown
        state.update(saved["state"])
        gen.set_state(saved["gen_state"])
        torch.set_rng_state(saved["torch_rng"])
        log(f"[{cfg.name}] resumed exactly from {full} at step {state['step']}")
    elif resume and portable.is_file():
        saved = json.loads(portable.read_text())
        if not same_run(saved["config"]):
            raise ValueError(f"{portable} holds a run with another configuration; use another --ckpt")
        _load_unet_weights(unet, ckpt_dir)
        _load_unet_weights(ema, out)
        state.update(init_lineage=None, init_config=None)  # runs older than the record: unknown
        state.update(saved["state"], rewarm_from=saved["state"]["step"])
        gen.manual_seed(cfg.seed + 1 + state["step"])
        log(f"[{cfg.name}] resumed from the portable state at step {state['step']} (optimizer re-warmed)")

    unet.to(device)
    ema.to(device)
    if resume and full.is_file():  # optimizer moments were loaded on the CPU
        for moments in opt.state.values():
            for k, v in moments.items():
                if isinstance(v, torch.Tensor) and k != "step":
                    moments[k] = v.to(device)
    n_params = sum(p.numel() for p in unet.parameters())
    sched = build_scheduler(cfg)
    alphas_cumprod = sched.alphas_cumprod.to(torch.float32)
    params, ema_params = list(unet.parameters()), list(ema.parameters())

    def info(final: bool) -> dict:
        return {
            "name": cfg.name,
            "status": "final" if final else "in progress (periodic export)",
            "steps": state["step"],
            "train_minutes": round(state["elapsed_s"] / 60, 2),
            "final_loss_ema": None if state["loss_ema"] is None else round(state["loss_ema"], 5),
            "loss_ema_note": "exponential moving average (decay 0.99) of the per-step weighted training loss",
            "params": n_params,
            "samples_seen": state["step"] * cfg.batch_size,
            "hardware": (f"CPU, {torch.get_num_threads()} thread(s)" if torch.device(device).type == "cpu"
                         else torch.cuda.get_device_name(torch.device(device))),
            "torch": torch.__version__,
            "config": asdict(cfg),
            "loss_history": state["history"][-200:],
            # the chain of the init weights when this run started (run_lineage); None for runs older than the record
            "init_lineage": state.get("init_lineage"),
            "init_config": state.get("init_config"),
        }

    def save_checkpoints() -> None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        payload = {"model": {k: v.cpu() for k, v in unet.state_dict().items()},
                   "ema": {k: v.cpu() for k, v in ema.state_dict().items()}, "optimizer": opt.state_dict(),
                   "state": state, "gen_state": gen.get_state(), "torch_rng": torch.get_rng_state(),
                   "config": asdict(cfg)}
        with atomic_open(full) as fh:
            torch.save(payload, fh)
        from safetensors.torch import save as safetensors_bytes

        with atomic_open(ckpt_dir / "model.safetensors") as fh:
            fh.write(safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()}))
        atomic_write_json(portable, {"config": asdict(cfg), "state": state})

    budget_s = None if minutes is None else minutes * 60
    log(f"[{cfg.name}] {n_params / 1e6:.3f} M parameters, to step {cfg.total_steps} / {minutes} min")
    last_ckpt = last_export = time.monotonic()
    t0, elapsed0 = time.monotonic(), state["elapsed_s"]
    unet.train()
    while (budget_s is None or state["elapsed_s"] < budget_s) and (not cfg.total_steps or state["step"] < cfg.total_steps):
        step = state["step"]
        x0 = get_batch(step, gen)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), generator=gen)
        a = alphas_cumprod[t]
        xt = a.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a).sqrt().view(-1, 1, 1, 1) * noise
        xt, t, noise = xt.to(device), t.to(device), noise.to(device)
        per_sample = (unet(xt, t).sample - noise).pow(2).flatten(1).mean(1)
        loss = (loss_weights(cfg, a).to(device) * per_sample).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        lr = learning_rate(cfg, step)
        if state["rewarm_from"] is not None:  # fresh Adam moments after a portable resume: warm up again
            lr *= min(1.0, (step - state["rewarm_from"] + 1) / max(cfg.warmup_steps, 1))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        state["step"] = step + 1
        decay = min(cfg.ema_decay, (1 + state["step"]) / (10 + state["step"]))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        value = loss.item()
        state["loss_ema"] = value if state["loss_ema"] is None else 0.99 * state["loss_ema"] + 0.01 * value
        now = time.monotonic()
        state["elapsed_s"] = elapsed0 + (now - t0)
        if state["step"] % 100 == 0:
            state["history"].append([state["step"], round(state["elapsed_s"] / 60, 2), round(state["loss_ema"], 5)])
            log(f"[{cfg.name}] step {state['step']} {state['elapsed_s'] / 60:.1f} min loss {state['loss_ema']:.4f}")
        if now - last_ckpt > cfg.ckpt_every_min * 60:
            save_checkpoints()
            last_ckpt = now
        if export_every_min is not None and now - last_export > export_every_min * 60:
            export_pipeline(ema, cfg, out, info(final=False))
            last_export = time.monotonic()
            t0, elapsed0 = time.monotonic(), state["elapsed_s"]  # exporting is not training time
    save_checkpoints()
    final = info(final=True)
    export_pipeline(ema, cfg, out, final)
    log(f"[{cfg.name}] done: {state['step']} steps, {state['elapsed_s'] / 60:.1f} min -> {out}")
    return final

