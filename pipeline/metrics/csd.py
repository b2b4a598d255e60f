"""CSD style descriptors (Somepalli et al. 2024, "Measuring Style Similarity in Diffusion
Models"; USO's CSD score, following CSGO).

The authors' `CSD_CLIP` (github learn2phoenix/CSD, model.py) is OpenAI CLIP ViT-L/14's visual
tower without its projection (`feature` = ln_post of the CLS token, 1024-d) followed by two
learned 1024x768 heads; the style descriptor is `normalize(feature @ last_layer_style)`, and
style similarity is the cosine of two descriptors. Their preprocessing: resize 224 (bicubic),
centre crop 224, OpenAI CLIP normalisation.

Here the tower is a transformers `CLIPVisionModel` folder (its `pooler_output` is exactly
ln_post of the CLS token) plus `csd_heads.safetensors` holding `style` and `content` [1024, 768]
(the checkpoint's `last_layer_style` / `last_layer_content`); the folder's CLIP image processor
does the authors' preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from pipeline.metrics.embedding import Embedder

HEADS_FILE = "csd_heads.safetensors"


class CsdEmbedder(Embedder):
    name = "csd"

    def __init__(self, folder: str | Path, device: str = "cpu"):
        from safetensors.torch import load_file
        from transformers import CLIPImageProcessorPil, CLIPVisionModel

        super().__init__(folder, device)
        heads = Path(folder) / HEADS_FILE
        if not heads.is_file():
            raise ValueError(f"CSD model {folder}: no {HEADS_FILE} (the style/content heads)")
        self.style_head = load_file(str(heads))["style"].float().to(device)
        self.processor = CLIPImageProcessorPil.from_pretrained(folder, local_files_only=True)
        model = CLIPVisionModel.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, dtype=torch.float32
        )
        self.model = model.to(device).eval()
        width = self.model.config.hidden_size
        if self.style_head.shape[0] != width:
            raise ValueError(
                f"CSD model {folder}: style head is {tuple(self.style_head.shape)}, the tower's "
                f"width is {width}"
            )

    def _embed(self, images: list[Image.Image]) -> torch.Tensor:
        inputs = self.processor(images=images, return_tensors="pt")
        feature = self.model(pixel_values=inputs["pixel_values"].to(self.device)).pooler_output
        return feature @ self.style_head
