"""What every embedder shares: fp32 on one device, inference mode, L2-normalised rows."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image


def l2_normalised(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length, fp32 on the CPU (cosines are then plain dot products)."""
    features = features.float().cpu()
    return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def pooled(out) -> torch.Tensor:
    """transformers' `get_*_features` returns a tensor or an output with `pooler_output`."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


def rgb(images: Sequence[Image.Image]) -> list[Image.Image]:
    return [image.convert("RGB") for image in images]


class Embedder(ABC):
    """A backbone loaded once; `embed_images` may be called from several threads."""

    name = "embedder"

    def __init__(self, folder: str | Path, device: str = "cpu"):
        self.folder = Path(folder)
        self.device = device
        self._lock = threading.Lock()

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[len(images), d] unit rows."""
        if not images:
            return torch.zeros(0, 0)
        with self._lock, torch.inference_mode():
            return l2_normalised(self._embed(rgb(images)))

    @abstractmethod
    def _embed(self, images: list[Image.Image]) -> torch.Tensor:
        """The backbone's image features, [len(images), d], any scale (normalised above)."""


def cosines(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Row-wise cosine of two stacks of unit rows."""
    return [float(x) for x in (a * b).sum(dim=-1)]
