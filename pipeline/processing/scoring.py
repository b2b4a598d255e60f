"""Quality scores per result from a CLIP-family model, for filtering synthetic data.

    options = ScoringOptions(metrics=("clip_t", "style"), model="/models/clip-l")
    scorer = make_scorer(options, "cuda")
    scorer.score(fields, request, image)   # -> {"clip_t": 0.29, "style": 0.71}

Metrics (each a cosine similarity in [-1, 1] of L2-normalised embeddings, not rescaled):
- "clip_t": result image vs. the item's prompt text ("does the picture show what was asked").
  CLIPScore (Hessel et al. 2021) is 2.5 * max(clip_t, 0) with ViT-B/32; we keep the raw cosine
  so thresholds carry over between checkpoints of one family. Items with an empty prompt get
  no clip_t (an empty text scores nothing meaningful).
- "style": result image vs. the item's first style reference image (USO's style images; for
  OmniConsistency triplets, the style catalog's reference picture). Items without a style
  image get no style score.
A score that does not apply is absent from the item's dict, never a made-up number.

The model is any transformers checkpoint with `get_image_features` / `get_text_features`
(CLIP, SigLIP, ...), loaded from a local folder or s3:// mirror (`pipeline.weights.aux_models`), in
fp32, with the PIL image processor (the same pixels on every host, torchvision or not).
Scores go to the item's record (`scores` column) and its provenance json; the runner calls
`score` from several I/O threads, so model calls are serialised by a lock.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.config import SCORE_METRICS, ScoringOptions, check_metrics
from pipeline.metrics.clip import load_clip_family
from pipeline.models.base import GenerationRequest
from pipeline.weights.aux_models import SCORER, model_folder

METRICS = SCORE_METRICS  # names and meanings live in the config, which must not import torch
CACHE_ENTRIES = 256  # prompts and style images repeat across a catalog: embed each once
SIGMOID_TEXT_MODELS = ("siglip", "siglip2")  # trained on max-length padded text


class _Lru(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def remember(self, key, value):
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
        return value


class ClipScorer:
    """Embeds results, prompts and style images with one CLIP-family model."""

    def __init__(self, folder: Path, metrics: Iterable[str], device: str = "cpu"):
        from transformers import AutoConfig

        self.metrics = check_metrics(metrics)
        self.device = device
        self.folder = Path(folder)
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        self.model_type = config.model_type
        self.processor, self.model = load_clip_family(folder, device, "scoring model")
        self._lock = threading.Lock()
        self._texts = _Lru(CACHE_ENTRIES)
        self._styles = _Lru(CACHE_ENTRIES)

    def score(
        self, fields: dict, request: GenerationRequest, image: np.ndarray
    ) -> dict[str, float]:
        scores: dict[str, float] = {}
        wanted_t = "clip_t" in self.metrics and bool((request.prompt or "").strip())
        wanted_style = "style" in self.metrics and bool(request.styles)
        if not (wanted_t or wanted_style):
            return scores
        result = self.image_embedding(Image.fromarray(image))
        if wanted_t:
            scores["clip_t"] = float(result @ self.text_embedding(request.prompt))
        if wanted_style:
            scores["style"] = float(result @ self.style_embedding(request.styles[0]))
        return scores

    # ------------------------------------------------------------------ embeddings
    def image_embedding(self, image: Image.Image) -> torch.Tensor:
        inputs = self.processor(images=[image.convert("RGB")], return_tensors="pt")
        with self._lock, torch.inference_mode():
            out = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
        return _normalised(out)

    def text_embedding(self, text: str) -> torch.Tensor:
        cached = self._texts.get(text)
        if cached is not None:
            return cached
        padding = "max_length" if self.model_type in SIGMOID_TEXT_MODELS else True
        inputs = self.processor(text=[text], return_tensors="pt", padding=padding, truncation=True)
        inputs = {
            k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")
        }
        with self._lock, torch.inference_mode():
            out = self.model.get_text_features(**inputs)
        return self._texts.remember(text, _normalised(out))

    def style_embedding(self, image: Image.Image) -> torch.Tensor:
        rgb = image.convert("RGB")
        key = hashlib.sha1(rgb.tobytes() + repr(rgb.size).encode()).hexdigest()
        cached = self._styles.get(key)
        if cached is not None:
            return cached
        return self._styles.remember(key, self.image_embedding(rgb))


def _normalised(out) -> torch.Tensor:
    """The projected embedding of a one-item batch, L2-normalised, fp32 on the CPU."""
    embedding = out.pooler_output if hasattr(out, "pooler_output") else out
    embedding = embedding[0].float().cpu()
    return embedding / embedding.norm().clamp_min(1e-12)


def make_scorer(options: ScoringOptions, device: str = "cpu") -> ClipScorer:
    """The scorer a run's `ScoringOptions` ask for (called once per actor)."""
    check_metrics(options.metrics)
    return ClipScorer(model_folder(options.model, SCORER), options.metrics, device)
