"""Train the bundled "digits-features" classifier: a small CNN on the 16x16 sklearn digits (split "train").

    python -m scripts.train_classifier --out lml_sampler/models/weights/digits-features

Its penultimate 64-d activations are the feature space of the domain FID of the digits models
(``lml_sampler.models.bundled.load_classifier("digits-features")``). Fixed recipe, no model selection on the
held-out split: AdamW, cosine learning rate, label smoothing, random shifts of up to one pixel; the held-out accuracy
(split "test", never trained on) is measured once at the end and written to ``training.json``.
Writes ``model.safetensors``, ``config.json`` and ``training.json`` (atomically, file by file).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lml_sampler._io import atomic_folder

from .priors import random_shift


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    model.eval()
    pred = torch.cat([model.logits(x[i : i + batch]).argmax(1) for i in range(0, x.shape[0], batch)])
    return (pred == y).double().mean().item()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("lml_sampler/models/weights/digits-features"))
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)

    from safetensors.torch import save_file

    from lml_sampler.data.digits import digits_dataset
    from lml_sampler.models.bundled import DigitsClassifier

    x_train, y_train = digits_dataset(16, "train", return_labels=True)
    x_test, y_test = digits_dataset(16, "test", return_labels=True)
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(x_train.shape[0] / args.batch_size)
    total = args.epochs * steps_per_epoch
    t0, step = time.monotonic(), 0
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(x_train.shape[0], generator=gen)
        for i in range(0, x_train.shape[0], args.batch_size):
            idx = perm[i : i + args.batch_size]
            xb = random_shift(x_train[idx], 1, gen)
            loss = F.cross_entropy(model.logits(xb), y_train[idx], label_smoothing=0.05)
            for group in opt.param_groups:
                group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        if (epoch + 1) % 10 == 0:
            acc = accuracy(model, x_train, y_train)
            print(f"epoch {epoch + 1} loss {loss.item():.4f} train acc {acc:.4f}", flush=True)
    minutes = (time.monotonic() - t0) / 60
    train_acc, test_acc = accuracy(model, x_train, y_train), accuracy(model, x_test, y_test)
    print(f"held-out (test split, {x_test.shape[0]} images) accuracy {test_acc:.4f}", flush=True)

    info = {
        "name": "digits-features",
        "heldout_accuracy": round(test_acc, 4),
        "heldout_split": f"digits_dataset(16, 'test'): {x_test.shape[0]} images, never used for training or selection",
        "train_accuracy": round(train_acc, 4),
        "steps": step,
        "epochs": args.epochs,
        "train_minutes": round(minutes, 2),
        "seed": args.seed,
        "params": sum(p.numel() for p in model.parameters()),
        "num_features": model.num_features,
        "recipe": f"AdamW lr {args.lr} cosine, wd 1e-4, batch {args.batch_size}, label smoothing 0.05, "
        "dropout 0.3, random shifts <= 1 px",
        "hardware": "CPU, torch.set_num_threads(1)",
    }
    with atomic_folder(args.out) as folder:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(model.config(), indent=2) + "\n")
        (folder / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
