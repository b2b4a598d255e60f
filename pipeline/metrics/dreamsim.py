"""DreamSim (Fu et al. 2023) through the authors' `dreamsim` package: the ensemble of DINO
ViT-B/16, CLIP ViT-B/16 and OpenCLIP ViT-B/16 (LAION-2B) features with the authors' LoRA,
embeddings mean-centred and L2-normalised, distance = 1 - cosine; images resized to 224x224
(bicubic) in [0, 1], each backbone's own normalisation inside the package.

The folder is the package's `cache_dir` holding the unzipped release (`ensemble_lora/`,
`dino_vitb16_pretrain.pth`, `clip_vitb16_pretrain.pth.tar`, `open_clip_vitb16_pretrain.pth.tar`);
the package finds them there and downloads nothing. It needs torchvision, open_clip and timm
(`pip install 'restyle[paper-metrics]'`); where those cannot be installed (a CPU-only torch
without a matching torchvision) the metric is refused with that message.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from pipeline.metrics.embedding import Embedder

PACKAGE_FILES = ("ensemble_lora", "dino_vitb16_pretrain.pth")


class DreamSimEmbedder(Embedder):
    name = "dreamsim"

    def __init__(self, folder: str | Path, device: str = "cpu"):
        super().__init__(folder, device)
        missing = [f for f in PACKAGE_FILES if not (Path(folder) / f).exists()]
        if missing:
            raise ValueError(f"DreamSim model {folder}: not the unzipped release (no {missing})")
        try:
            from dreamsim import dreamsim
        except Exception as error:  # ImportError, or torchvision failing to load its ops
            raise ValueError(
                "DreamSim needs the `dreamsim` package with torchvision, open_clip and timm "
                f"(pip install 'restyle[paper-metrics]'): {type(error).__name__}: {error}"
            ) from error
        self.model, self.preprocess = dreamsim(
            pretrained=True, device=device, cache_dir=str(folder)
        )

    def _embed(self, images: list[Image.Image]) -> torch.Tensor:
        batch = torch.cat([self.preprocess(i) for i in images]).to(self.device)
        return self.model.embed(batch)


def distances(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """DreamSim's distance, 1 - cosine, of two stacks of unit rows."""
    return [float(1.0 - x) for x in (a * b).sum(dim=-1)]
