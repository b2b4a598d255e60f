"""DINO embeddings (USO's DINO subject score, following UNO and DreamBench).

A transformers ViT folder (DreamBench: `facebook/dino-vits16`); the embedding is the CLS token
of the last hidden state (after the final layer norm), compared by cosine; the image processor
is the folder's own (resize to 224, ImageNet normalisation) on the PIL backend.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from pipeline.metrics.embedding import Embedder


class DinoEmbedder(Embedder):
    name = "dino"

    def __init__(self, folder: str | Path, device: str = "cpu"):
        from transformers import AutoImageProcessor, AutoModel

        super().__init__(folder, device)
        self.processor = AutoImageProcessor.from_pretrained(
            folder, backend="pil", local_files_only=True
        )
        model = AutoModel.from_pretrained(
            folder,
            local_files_only=True,
            use_safetensors=True,
            dtype=torch.float32,
            add_pooling_layer=False,
        )
        self.model = model.to(device).eval()

    def _embed(self, images: list[Image.Image]) -> torch.Tensor:
        inputs = self.processor(images=images, return_tensors="pt")
        out = self.model(pixel_values=inputs["pixel_values"].to(self.device))
        return out.last_hidden_state[:, 0]
