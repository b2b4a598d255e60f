"""CLIP image and text embeddings (CLIP-I, CLIP-T, CLIP image similarity).

Any transformers CLIP-family folder with `get_image_features` / `get_text_features`, in fp32,
with its own image processor on the PIL backend (resize shortest edge, centre crop, CLIP
normalisation) and tokenizer (padded per batch, truncated at the model's text length): the
same inputs torchmetrics' `CLIPScore` builds, so `clip_t` equals CLIPScore / 100 before its
max(., 0) clamp. The papers do not name their CLIP; USO follows UNO/DreamBench (ViT-B/32),
torchmetrics defaults to ViT-L/14.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pipeline.metrics.embedding import Embedder, l2_normalised, pooled


def load_clip_family(folder: str | Path, device: str, role: str) -> tuple[Any, Any]:
    """(processor, model in eval mode, fp32) of a local CLIP-family folder (CLIP, SigLIP...):
    anything with image and text features; `role` names it in the refusal of another kind."""
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, backend="pil", local_files_only=True)
    model = AutoModel.from_pretrained(
        folder, local_files_only=True, use_safetensors=True, dtype=torch.float32
    )
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise ValueError(
            f"{role} {folder}: {type(model).__name__} is not a CLIP-family model "
            "(needs get_image_features and get_text_features)"
        )
    return processor, model.to(device).eval()


class ClipEmbedder(Embedder):
    name = "clip"

    def __init__(self, folder: str | Path, device: str = "cpu"):
        super().__init__(folder, device)
        self.processor, self.model = load_clip_family(folder, device, "CLIP model")

    def _embed(self, images: list[Image.Image]) -> torch.Tensor:
        inputs = self.processor(images=images, return_tensors="pt")
        return pooled(self.model.get_image_features(inputs["pixel_values"].to(self.device)))

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        inputs = self.processor(
            text=list(texts), return_tensors="pt", padding=True, truncation=True
        )
        with self._lock, torch.inference_mode():
            out = self.model.get_text_features(
                inputs["input_ids"].to(self.device), inputs["attention_mask"].to(self.device)
            )
        return l2_normalised(pooled(out))
