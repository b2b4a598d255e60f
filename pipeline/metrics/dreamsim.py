"""DreamSim (Fu et al. 2023) through the authors' `dreamsim` package: the ensemble of DINO
ViT-B/16, CLIP ViT-B/16 and OpenCLIP ViT-B/16 (LAION-2B) features with the authors' LoRA,
embeddings mean-centred and L2-normalised, distance = 1 - cosine; images resized to 224x224
(bicubic) in [0, 1], each backbone's own normalisation inside the package.

The folder is the package's `cache_dir` as `dreamsim(cache_dir=FOLDER)` leaves it after its
first call on a machine with network (copy it, or mirror it to S3):
    ensemble_lora/  dino_vitb16_pretrain.pth  clip_vitb16_pretrain.pth.tar
    open_clip_vitb16_pretrain.pth.tar  (the unzipped release)
    facebookresearch_dino_main/  checkpoints/dino_vitbase16_pretrain.pth  (torch.hub's copy
    of the DINO repository and its weights: the package points torch.hub at this folder)
With all of them present the package downloads nothing. It needs torchvision, open_clip and
timm (`pip install 'restyle[paper-metrics]'`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image

from pipeline.metrics.embedding import Embedder

PACKAGE_FILES = (
    "ensemble_lora/adapter_config.json",
    "dino_vitb16_pretrain.pth",
    "clip_vitb16_pretrain.pth.tar",
    "open_clip_vitb16_pretrain.pth.tar",
    "facebookresearch_dino_main/hubconf.py",
    "checkpoints/dino_vitbase16_pretrain.pth",
)


@contextmanager
def torch_hub_dir_kept() -> Iterator[None]:
    """The package points torch.hub at its folder for the rest of the process (its
    `torch.hub.set_dir(cache_dir)`); this puts the previous folder back."""
    hub = torch.hub.get_dir()
    try:
        yield
    finally:
        torch.hub.set_dir(hub)


class DreamSimEmbedder(Embedder):
    name = "dreamsim"

    def __init__(self, folder: str | Path, device: str = "cpu"):
        super().__init__(folder, device)
        missing = [f for f in PACKAGE_FILES if not (Path(folder) / f).exists()]
        if missing:  # the package would try to download them
            raise ValueError(
                f"DreamSim model {folder}: not the unzipped release with torch.hub's DINO "
                f"(no {', '.join(missing)}); fill a folder with `dreamsim(cache_dir=...)` on a "
                "machine with network and copy it"
            )
        try:
            from dreamsim import dreamsim
        except Exception as error:  # ImportError, or torchvision failing to load its ops
            raise ValueError(
                "DreamSim needs the `dreamsim` package with torchvision, open_clip and timm "
                f"(pip install 'restyle[paper-metrics]'): {type(error).__name__}: {error}"
            ) from error
        with torch_hub_dir_kept():
            self.model, self.preprocess = dreamsim(
                pretrained=True, device=device, cache_dir=str(folder)
            )

    def _embed(self, images: list[Image.Image]) -> torch.Tensor:
        batch = torch.cat([self.preprocess(i) for i in images]).to(self.device)
        return self.model.embed(batch)


def distances(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """DreamSim's distance, 1 - cosine, of two stacks of unit rows."""
    return [float(1.0 - x) for x in (a * b).sum(dim=-1)]
