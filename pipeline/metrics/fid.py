"""FID: the Frechet distance between Gaussians fitted to backbone features of two image sets.

The distance itself is torchmetrics' `FrechetInceptionDistance` (its running sums, its
covariance and its eigenvalue square root): features computed per shard by the eval actors
are fed to one torchmetrics object through an identity "backbone", so a sharded, resumed eval
gives the number torchmetrics gives on all images at once.

The backbone, by folder content:
- `pt_inception-2015-12-05-*.pth` in the folder: the standard FID Inception-v3 (torchmetrics'
  `NoTrainInceptionV3`, torch-fidelity's port of the TF graph, 2048-d pool3 features, images
  resized to 299 inside it). Needs torch-fidelity (and so torchvision): `restyle[paper-metrics]`.
- a transformers vision folder (CLIP, DINO, ...): its pooled image features (FID_CLIP-style;
  and the tiny test backbone).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

INCEPTION_GLOB = "pt_inception-2015-12-05-*.pth"


class TransformersFeatures(nn.Module):
    """uint8 images [N, 3, H, W] -> pooled image features of a transformers vision folder."""

    def __init__(self, folder: str | Path, device: str = "cpu"):
        from transformers import AutoImageProcessor, AutoModel

        super().__init__()
        self.processor = AutoImageProcessor.from_pretrained(
            folder, backend="pil", local_files_only=True
        )
        self.model = AutoModel.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, dtype=torch.float32
        )
        self.model.to(device).eval()
        self.device = device
        self.num_features = int(
            self._features(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).shape[-1]
        )

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        pil = [Image.fromarray(i.permute(1, 2, 0).cpu().numpy()) for i in images]
        pixels = self.processor(images=pil, return_tensors="pt")["pixel_values"].to(self.device)
        if hasattr(self.model, "get_image_features"):
            out = self.model.get_image_features(pixel_values=pixels)
            return (out.pooler_output if hasattr(out, "pooler_output") else out).float()
        return self.model(pixel_values=pixels).pooler_output.float()

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._features(images).cpu()


def fid_backbone(folder: str | Path, device: str = "cpu") -> nn.Module:
    """The FID feature module a folder holds (see the module doc)."""
    weights = sorted(Path(folder).glob(INCEPTION_GLOB))
    if weights:
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as error:  # pragma: no cover - depends on the install
            raise ValueError(
                f"FID model {folder}: the Inception backbone needs torch-fidelity and "
                f"torchvision (pip install 'restyle[paper-metrics]'): {error}"
            ) from error
        module = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["2048"],
            feature_extractor_weights_path=str(weights[0]),
        )
        return module.to(device).eval()
    if (Path(folder) / "config.json").is_file():
        return TransformersFeatures(folder, device)
    raise ValueError(
        f"FID model {folder}: neither an Inception weights file ({INCEPTION_GLOB}) nor a "
        "transformers vision folder (config.json)"
    )


def as_uint8_batch(images: Iterable[Image.Image], size: int | None = None) -> torch.Tensor:
    """PIL images as a uint8 [N, 3, H, W] batch (all resized to `size` square when given, as
    FID backbones need one size per batch)."""
    arrays = []
    for image in images:
        rgb = image.convert("RGB")
        if size is not None:
            rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(rgb))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class _Identity(nn.Module):
    """Hands features through torchmetrics' FID unchanged (they were computed in the actors)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(
    results: Iterable[torch.Tensor], reference: Iterable[torch.Tensor], num_features: int
) -> float:
    """torchmetrics' FID over feature batches ([n, d] each) of the results and the reference."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Identity(num_features))
    for batch in reference:
        metric.update(batch.double(), real=True)
    for batch in results:
        metric.update(batch.double(), real=False)
    return float(metric.compute())
