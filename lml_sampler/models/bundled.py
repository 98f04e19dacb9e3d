"""Bundled pretrained models that run offline, and one loader for those, local folders and Hub ids.

Bundled (shipped as package data under ``lml_sampler/models/weights/<name>/``, trained by ``scripts/train_prior.py``
and ``scripts/train_classifier.py``):

- ``"digits"``: ``DDPMPipeline``, ~1.1 M-parameter UNet2DModel, 1x16x16 sklearn digits in [-1, 1].
- ``"phantoms"``: ``DDPMPipeline``, ~1.1 M-parameter UNet2DModel, 1x32x32 random ellipse (CT-like) phantoms.
- ``"digits-features"``: :class:`DigitsClassifier`, a small CNN digit classifier whose penultimate layer is the
  feature space of the domain FID (``load_classifier``; ``lml_sampler.eval.load_feature_extractor("digits-features")``
  wraps it for FID).

``load_pipeline`` also accepts any local ``save_pretrained`` folder and any Hub id (``DiffusionPipeline
.from_pretrained``; the tests never download).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: Bundled diffusion pipelines (folder names under ``weights/``).
BUNDLED_PIPELINES = ("digits", "phantoms", "phantoms-complex")
#: Bundled feature extractors (folder names under ``weights/``).
BUNDLED_FEATURE_EXTRACTORS = ("digits-features",)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def bundled_path(name: str) -> Path:
    """Folder of bundled model ``name``; FileNotFoundError (with the command that trains it) if it is missing."""
    if name not in BUNDLED_PIPELINES + BUNDLED_FEATURE_EXTRACTORS:
        raise ValueError(
            f"unknown bundled model {name!r}: expected one of {BUNDLED_PIPELINES + BUNDLED_FEATURE_EXTRACTORS}"
        )
    path = WEIGHTS_DIR / name
    if not (path / ("config.json" if name in BUNDLED_FEATURE_EXTRACTORS else "model_index.json")).is_file():
        command = ("python -m scripts.train_classifier" if name in BUNDLED_FEATURE_EXTRACTORS
                   else f"python -m scripts.train_prior {name} --steps 20000")
        raise FileNotFoundError(f"bundled model {name!r} has no weights at {path}; train them from a checkout of "
                                f"the repository with `{command} --out {path}`")
    return path


def available_models() -> dict[str, list[str]]:
    """Names of the bundled models whose weights are present: ``{"pipelines": [...], "feature_extractors": [...]}``."""
    return {
        "pipelines": [n for n in BUNDLED_PIPELINES if (WEIGHTS_DIR / n / "model_index.json").is_file()],
        "feature_extractors": [n for n in BUNDLED_FEATURE_EXTRACTORS if (WEIGHTS_DIR / n / "config.json").is_file()],
    }


def _resolve(name_or_path: str | os.PathLike, bundled: tuple[str, ...], what: str) -> tuple[str | Path, bool]:
    """Map a bundled name / local folder / Hub id to (location, is_local); ValueError/TypeError otherwise."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a str or os.PathLike, got {type(name_or_path).__name__}")
    s = os.fspath(name_or_path)
    if s in bundled:
        return bundled_path(s), True
    path = Path(s).expanduser()
    if path.is_dir():
        return path, True
    looks_like_path = isinstance(name_or_path, os.PathLike) or s.startswith(("/", ".", "~")) or os.sep in s.strip("/")
    if _HUB_ID.match(s) and not path.exists():
        return s, False
    if looks_like_path:
        raise ValueError(f"{what} folder {s!r} does not exist")
    raise ValueError(
        f"unknown {what} {s!r}: expected a bundled name {bundled}, a local save_pretrained folder, "
        "or a Hugging Face Hub id 'owner/name'"
    )


def load_pipeline(name_or_path: str | os.PathLike = "digits", **kwargs):
    """A diffusers pipeline: bundled ``"digits"`` / ``"phantoms"``, a local folder, or a Hub id.

    Keyword arguments go to ``DiffusionPipeline.from_pretrained`` (e.g. ``torch_dtype``, ``scheduler``). Bundled
    names and local folders are loaded with ``local_files_only=True`` (never touch the network).
    """
    from diffusers import DiffusionPipeline

    location, local = _resolve(name_or_path, BUNDLED_PIPELINES, "pipeline")
    if local:
        if not (Path(location) / "model_index.json").is_file():
            raise ValueError(f"{location} is not a diffusers pipeline folder (no model_index.json)")
        kwargs.setdefault("local_files_only", True)
    return DiffusionPipeline.from_pretrained(location, **kwargs)


class DigitsClassifier(nn.Module):
    """Small CNN digit classifier whose penultimate activations are an FID feature space.

    Input ``(N, 1, H, W)`` in [-1, 1] (resized bilinearly to ``image_size`` if needed); ``forward``/``features``
    return ``(N, num_features)`` penultimate (post-ReLU) features, ``logits`` the ``(N, num_classes)`` class scores.
    """

    def __init__(
        self, channels: tuple[int, int] = (32, 64), num_features: int = 64, num_classes: int = 10, image_size: int = 16
    ):
        super().__init__()
        c1, c2 = channels
        self.image_size, self.num_features, self.num_classes = image_size, num_features, num_classes
        self.channels = (c1, c2)
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.Conv2d(c2, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.MaxPool2d(2),
        )  # fmt: skip
        self.dropout = nn.Dropout(0.3)
        self.fc = nn.Linear(c2 * (image_size // 4) ** 2, num_features)
        self.head = nn.Linear(num_features, num_classes)

    def config(self) -> dict:
        return {
            "architecture": "DigitsClassifier",
            "channels": list(self.channels),
            "num_features": self.num_features,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "input_range": [-1.0, 1.0],
        }

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(N, num_features)`` of images ``(N, 1, H, W)`` in [-1, 1]."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"x must have shape (N, 1, H, W), got {tuple(x.shape)}")
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        h = self.body(x.to(self.fc.weight.dtype)).flatten(1)
        return F.relu(self.fc(self.dropout(h)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores ``(N, num_classes)``."""
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def load_classifier(name_or_path: str | os.PathLike = "digits-features", device=None) -> DigitsClassifier:
    """The bundled digit classifier (eval mode, parameters frozen) or one saved in a local folder.

    The folder holds ``config.json`` and ``model.safetensors`` (written by ``python -m scripts.train_classifier``).
    """
    from safetensors.torch import load_file

    location, local = _resolve(name_or_path, BUNDLED_FEATURE_EXTRACTORS, "feature extractor")
    if not local:
        raise ValueError(f"feature extractors are loaded from bundled names or local folders only, got {location!r}")
    folder = Path(location)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise ValueError(f"{folder} is not a feature-extractor folder (needs config.json and model.safetensors)")
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("architecture") != "DigitsClassifier":
        raise ValueError(f"{folder}/config.json: unsupported architecture {cfg.get('architecture')!r}")
    model = DigitsClassifier(
        channels=tuple(cfg["channels"]),
        num_features=cfg["num_features"],
        num_classes=cfg["num_classes"],
        image_size=cfg["image_size"],
    )
    model.load_state_dict(load_file(folder / "model.safetensors"))
    model.eval().requires_grad_(False)
    return model.to(device) if device is not None else model
