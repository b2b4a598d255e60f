"""CMMD (Jayasumana et al. 2024, "Rethinking FID: Towards a Better Evaluation Metric for Image
Generation"; github google-research/google-research, cmmd/).

As the authors compute it: CLIP ViT-L/14 at 336 px (`openai/clip-vit-large-patch14-336`)
image embeddings, each L2-normalised; images resized to the model's input size with bicubic
interpolation and fed to the CLIP processor without its own resize or crop (embedding.py);
then the unbiased-free MMD estimate with a Gaussian RBF kernel, sigma 10, scaled by 1000
(distance.py):

    k(a, b) = exp(-|a - b|^2 / (2 sigma^2));  CMMD = 1000 (mean k(x, x') + mean k(y, y') - 2 mean k(x, y))

(all pairs, the diagonal included, as their `jnp.mean` over the full kernel matrices). The
authors resize with JAX's bicubic on float pixels, here PIL's bicubic: embeddings can differ
in the third decimal on real photos.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from pipeline.metrics.embedding import Embedder, pooled

SIGMA = 10.0
SCALE = 1000.0


class CmmdEmbedder(Embedder):
    name = "cmmd"

    def __init__(self, folder: str | Path, device: str = "cpu"):
        from transformers import AutoModel, CLIPImageProcessorPil

        super().__init__(folder, device)
        self.processor = CLIPImageProcessorPil.from_pretrained(folder, local_files_only=True)
        self.size = int(self.processor.crop_size["height"])
        model = AutoModel.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, dtype=torch.float32
        )
        self.model = model.to(device).eval()

    def _embed(self, images: list[Image.Image]) -> torch.Tensor:
        square = [i.resize((self.size, self.size), Image.Resampling.BICUBIC) for i in images]
        inputs = self.processor(
            images=square, do_resize=False, do_center_crop=False, return_tensors="pt"
        )
        return pooled(self.model.get_image_features(inputs["pixel_values"].to(self.device)))


def mmd(x: torch.Tensor, y: torch.Tensor, sigma: float = SIGMA, scale: float = SCALE) -> float:
    """The authors' `mmd(x, y)` (distance.py) in float64."""
    x, y = x.double(), y.double()
    gamma = 1.0 / (2.0 * sigma**2)
    x_sq, y_sq = (x * x).sum(dim=1), (y * y).sum(dim=1)

    def kernel_mean(a, a_sq, b, b_sq) -> torch.Tensor:
        return torch.exp(-gamma * (-2.0 * a @ b.T + a_sq[:, None] + b_sq[None, :])).mean()

    k_xx = kernel_mean(x, x_sq, x, x_sq)
    k_yy = kernel_mean(y, y_sq, y, y_sq)
    k_xy = kernel_mean(x, x_sq, y, y_sq)
    return float(scale * (k_xx + k_yy - 2.0 * k_xy))
