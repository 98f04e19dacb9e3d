"""Feature extractors for FID: standard Inception-v3 (torch-fidelity weights) and domain extractors.

Every extractor here takes **uint8 images** ``(N, C, H, W)`` — exactly what would be saved to disk — and returns
float features ``(N, d)``. Domain extractors (any ``nn.Module``) are wrapped by :class:`DomainFeatures`, which maps
the uint8 images back to the module's input range.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from lml_sampler._optional import import_optional

from .fid import resize_bilinear_tf1

__all__ = [
    "INCEPTION_WEIGHTS_FILE",
    "find_inception_weights",
    "InceptionV3Features",
    "DomainFeatures",
    "RandomConvFeatures",
    "load_feature_extractor",
    "extract_features",
]

#: File name torch-fidelity (and torchmetrics) download into ``$TORCH_HOME/hub/checkpoints``.
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE
)


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """Locate the TF-Inception weights offline: explicit ``path``, else ``$LML_INCEPTION_WEIGHTS``, else the
    torch-fidelity cache ``$TORCH_HOME/hub/checkpoints/`` (default ``~/.cache/torch/hub/checkpoints``).

    Never downloads. Raises ``FileNotFoundError`` explaining how to place the file.
    """
    if path is None:
        path = os.environ.get("LML_INCEPTION_WEIGHTS") or None
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"inception_weights={str(p)!r} does not exist")
        return p
    cache = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    if cache.is_file():
        return cache
    raise FileNotFoundError(
        "Inception FID weights not found. This package never downloads them. Either\n"
        f"  (a) on a machine with internet: curl -L -o {cache} {INCEPTION_WEIGHTS_URL}\n"
        f"      (the torch-fidelity cache, $TORCH_HOME/hub/checkpoints; copy it over for offline use), or\n"
        "  (b) pass inception_weights=PATH / --inception-weights PATH, or set LML_INCEPTION_WEIGHTS=PATH.\n"
        "Also install the optional extra: pip install 'lml-sampler[inception]' (torch-fidelity)."
    )


class InceptionV3Features(nn.Module):
    """Standard FID features: 2048-d pool3 of the TF Inception-v3 (torch-fidelity's port, FID weights).

    Preprocessing is the TTUR / torch-fidelity one (torchmetrics ``antialias=False``): uint8 input, grey images
    repeated to RGB, TF1-compatible bilinear resize to 299×299 in float32 (no re-quantisation), ``(x − 128)/128``.
    """

    INPUT_SIZE = 299
    num_features = 2048

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        FeatureExtractorInceptionV3 = import_optional(
            "torch_fidelity.feature_extractor_inceptionv3",
            "standard Inception FID (--extractor inception; the domain extractors, e.g. --extractor digits-features, "
            "need neither torch-fidelity nor torchvision)",
            "pip install 'lml-sampler[inception]' (torch-fidelity, which pulls torchvision)",
        ).FeatureExtractorInceptionV3
        weights = find_inception_weights(weights_path)  # before construction: torch-fidelity would download
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
        self.net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "InceptionV3Features":
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = _check_uint8(images).float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.INPUT_SIZE, self.INPUT_SIZE):
            x = resize_bilinear_tf1(x, (self.INPUT_SIZE, self.INPUT_SIZE))
        x = (x - 128.0) / 128.0
        n = self.net
        for layer in (
            n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.MaxPool_1, n.Conv2d_3b_1x1, n.Conv2d_4a_3x3,
            n.MaxPool_2, n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c, n.Mixed_6d,
            n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c, n.AvgPool,
        ):
            x = layer(x)
        return torch.flatten(x, 1)


class DomainFeatures(nn.Module):
    """Wrap any feature ``nn.Module`` so it takes uint8 images and returns ``(N, d)`` features.

    The uint8 images are mapped linearly to ``input_range`` (the range the module was trained on; the digits
    models use ``[-1, 1]``) and the module output is flattened per sample.
    """

    def __init__(self, module: nn.Module, input_range: tuple[float, float] = (-1.0, 1.0), name: str = "custom") -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        self.module = module.eval().requires_grad_(False)
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.name = name

    def train(self, mode: bool = True) -> "DomainFeatures":
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        lo, hi = self.input_range
        param = next(self.module.parameters(), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        x = _check_uint8(images).to(dtype) * ((hi - lo) / 255.0) + lo
        out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.flatten(1)


class RandomConvFeatures(nn.Module):
    """Deterministic random-weight conv net (fixed seed): a stand-in domain extractor for tests and for models
    without a trained one. Rankings with it are only indicative; it never needs weights or a download."""

    def __init__(self, in_channels: int = 1, num_features: int = 64, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.num_features = num_features
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, num_features, 3, stride=2, padding=1)
        for conv in (self.conv1, self.conv2):
            fan_in = conv.weight[0].numel()
            conv.weight.data = torch.randn(conv.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5
            conv.bias.data.zero_()
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        return h.mean(dim=(2, 3))


def load_feature_extractor(
    name: str, inception_weights: str | os.PathLike | None = None, in_channels: int = 1
) -> nn.Module:
    """Extractor by name: ``"inception"`` (standard FID), ``"digits-features"`` (bundled digits classifier),
    ``"random-conv"`` (stand-in). Returned modules take uint8 images and return ``(N, d)``."""
    if name == "inception":
        return InceptionV3Features(inception_weights)
    if name == "random-conv":
        return DomainFeatures(RandomConvFeatures(in_channels=in_channels), name="random-conv")
    if name == "digits-features":
        from lml_sampler.models.bundled import load_classifier

        return DomainFeatures(load_classifier("digits-features"), input_range=(-1.0, 1.0), name="digits-features")
    raise ValueError(f"unknown extractor {name!r}: choose 'inception', 'digits-features' or 'random-conv'")


@torch.no_grad()
def extract_features(extractor: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Features ``(N, d)`` (float64, CPU) of uint8 images ``(N, C, H, W)``, in batches of ``batch_size``."""
    images = _check_uint8(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next((p.device for p in extractor.parameters()), torch.device("cpu"))
    out = [
        extractor(images[i : i + batch_size].to(device)).double().cpu() for i in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, 0, dtype=torch.float64)


def _check_uint8(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        desc = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(
            f"images must be a uint8 tensor (N, C, H, W), got {desc}; quantise with eval.quantize_uint8"
        )
    return images
