"""CLIP score of text-to-image samples: ``100 · max(cos(E_image, E_text), 0)`` per sample, averaged (torchmetrics'
``CLIPScore`` convention; Hessel et al. 2021 with w = 100).

The model is a transformers ``CLIPModel`` with its ``CLIPProcessor``, from a local folder or a Hub id already in the
local cache (``HF_HUB_OFFLINE=1``: never downloaded). torchmetrics' ``CLIPScore`` is not used: it takes a fixed list
of Hub ids or a callable returning ``(model, processor)``, and with transformers ≥ 5 its ``update`` fails
(``get_image_features`` returns a ``BaseModelOutputWithPooling``, which it divides by its ``.norm``; torchmetrics
1.9.0, transformers 5.24). It needs no torchvision (only its Jina wrapper does). The embeddings here are
``visual_projection(vision_model(...).pooler_output)`` and ``text_projection(text_model(...).pooler_output)``, the
same in transformers 4 and 5.

Image embeddings are the per-sample "CLIP features" a sweep stores in its shards (L2-normalised, float32); text
embeddings are recomputed from the prompts when the score is computed, so the score never needs the images again.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["CLIPEmbedder", "clip_score"]


@contextlib.contextmanager
def _quiet_transformers():
    """transformers warns that its CLIP image processor falls back from torchvision to PIL (torchvision is not
    installed here): expected, not actionable."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


class CLIPEmbedder:
    """A CLIP model and processor; embeds uint8 images ``(N, C, H, W)`` and prompts, L2-normalised.

    ``model`` is a local folder (``CLIPModel.save_pretrained`` + ``CLIPProcessor.save_pretrained``) or a Hub id
    present in the local Hugging Face cache.
    """

    def __init__(self, model: str | os.PathLike, device: str | torch.device = "cpu", batch_size: int = 64) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.name = str(model)
        local = Path(model).is_dir()
        if not local and Path(model).exists():
            raise ValueError(f"CLIP model {self.name!r} is a file, not a folder or a Hub id (--clip-model)")
        kwargs = {"local_files_only": True} if local else {}
        with _quiet_transformers():
            try:
                self.processor = CLIPProcessor.from_pretrained(model, **kwargs)
            except (OSError, ValueError, TypeError) as exc:
                where = f"the folder {self.name}" if local else f"the Hub id {self.name!r} (in the local cache)"
                raise ValueError(
                    f"{where} has no usable CLIP processor ({type(exc).__name__}): save one beside the weights with "
                    "CLIPProcessor.from_pretrained(<hub id>).save_pretrained(<folder>), or pass a complete CLIP folder "
                    "as --clip-model") from None
            try:
                self.model = CLIPModel.from_pretrained(model, **kwargs).eval().requires_grad_(False).to(device)
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot load CLIP weights from {self.name!r} ({type(exc).__name__}): pass a folder "
                                 "with config.json and the weights, or a cached Hub id, as --clip-model") from None
        self.device, self.batch_size = torch.device(device), int(batch_size)
        text_cfg = self.model.config.text_config
        self.max_length = int(getattr(text_cfg, "max_position_embeddings", 77))

    @torch.no_grad()
    def images(self, images) -> np.ndarray:
        """Embeddings ``(N, p)`` float32 of uint8 images ``(N, 1|3, H, W)`` (grey repeated to RGB)."""
        x = np.asarray(images)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise TypeError(f"images must be uint8 (N, 1|3, H, W), got {x.dtype} {x.shape}")
        if x.shape[1] == 1:
            x = np.repeat(x, 3, axis=1)
        out = []
        for a in range(0, x.shape[0], self.batch_size):
            batch = list(x[a : a + self.batch_size].transpose(0, 2, 3, 1))  # HWC, what the processor expects
            with _quiet_transformers():
                pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            pooled = self.model.vision_model(pixel_values=pixels.to(self.device, self.model.dtype)).pooler_output
            out.append(self._normalise(self.model.visual_projection(pooled)))
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim), np.float32)

    @torch.no_grad()
    def texts(self, prompts: list[str]) -> np.ndarray:
        """Embeddings ``(P, p)`` float32 of prompts (truncated to the text model's context length)."""
        out = []
        for a in range(0, len(prompts), self.batch_size):
            tok = self.processor.tokenizer(list(prompts[a : a + self.batch_size]), padding=True, truncation=True,
                                           max_length=self.max_length, return_tensors="pt")
            pooled = self.model.text_model(input_ids=tok["input_ids"].to(self.device),
                                           attention_mask=tok["attention_mask"].to(self.device)).pooler_output
            out.append(self._normalise(self.model.text_projection(pooled)))
        return np.concatenate(out)

    @staticmethod
    def _normalise(e: torch.Tensor) -> np.ndarray:
        e = e.double()
        return (e / e.norm(dim=-1, keepdim=True)).float().cpu().numpy()


def clip_score(image_embeddings, text_embeddings) -> tuple[float, float, np.ndarray]:
    """``(mean, standard error, per-sample scores)`` of ``100 · max(cos, 0)`` between row-paired embeddings.

    The standard error is ``std(scores)/√N``: the per-sample scores are independent (each sample has its own seed).
    """
    a = np.asarray(image_embeddings, dtype=np.float64)
    b = np.asarray(text_embeddings, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"image and text embeddings must be paired (N, p) arrays, got {a.shape} and {b.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"a CLIP score with a standard error needs at least 2 samples, got {a.shape[0]}")
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    scores = 100.0 * np.maximum(cos, 0.0)
    return float(scores.mean()), float(scores.std(ddof=1) / np.sqrt(scores.shape[0])), scores
