"""The backbones one eval needs, loaded once per actor, and the per-item metrics of a batch.

`MetricSuite` resolves each backbone folder through the weights machinery (local, s3:// or
hf:// staged once per node, or tiny; sha256 per folder, and the Hub commit of an hf:// one, for
provenance), loads only the embedders the chosen metrics need, and scores batches of samples:
per-item cosines/distances against the subject, the style reference and the prompt, plus the
per-item features FID and CMMD aggregate later.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from pipeline.config import EvalSettings
from pipeline.metrics.definitions import ALL_METRICS, ITEM_METRICS, Against, Backbone
from pipeline.metrics.embedding import cosines
from pipeline.storage import Storage
from pipeline.weights.aux_hub import hub_commit
from pipeline.weights.aux_models import folder_sha256, model_folder


@dataclass
class Sample:
    """One scored item: its result and what it is compared with (None when it has none)."""

    id: str
    key: str
    result: Image.Image
    subject: Image.Image | None = None
    style: Image.Image | None = None
    prompt: str = ""
    missing: list[str] = field(default_factory=list)  # why a reference is absent


def _embedder(backbone: Backbone, folder, device: str):
    from pipeline.metrics.clip import ClipEmbedder
    from pipeline.metrics.cmmd import CmmdEmbedder
    from pipeline.metrics.csd import CsdEmbedder
    from pipeline.metrics.dino import DinoEmbedder
    from pipeline.metrics.dreamsim import DreamSimEmbedder
    from pipeline.metrics.fid import fid_backbone

    return {
        Backbone.CLIP: ClipEmbedder,
        Backbone.DINO: DinoEmbedder,
        Backbone.CSD: CsdEmbedder,
        Backbone.DREAMSIM: DreamSimEmbedder,
        Backbone.CMMD: CmmdEmbedder,
        Backbone.FID: fid_backbone,
    }[backbone](folder, device)


class MetricSuite:
    def __init__(self, settings: EvalSettings, storage: Storage, device: str = "cpu"):
        self.settings = settings
        self.metrics = settings.chosen
        self.device = device
        specs = settings.models.given()
        needed = sorted({ALL_METRICS[m].backbone for m in self.metrics})
        self.folders = {b: model_folder(specs[b.value], b.value, storage) for b in needed}
        self.sha256 = {b.value: folder_sha256(f) for b, f in self.folders.items()}
        # The commit each hf:// backbone's revision resolved to (the sha256 alone names the
        # files; the commit says where on the Hub they were).
        self.hub_commits = {
            b.value: commit for b, f in self.folders.items() if (commit := hub_commit(f))
        }
        self.embedders: dict[Backbone, Any] = {
            b: _embedder(b, f, device) for b, f in self.folders.items()
        }

    @property
    def fingerprint(self) -> str:
        """What a score file depends on: the metrics and the exact backbone weights."""
        canonical = json.dumps(
            {"metrics": list(self.metrics), "models": self.sha256}, sort_keys=True
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def info(self) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "metrics": list(self.metrics),
            "models": {b.value: str(self.settings.models.given()[b.value]) for b in self.folders},
            "sha256": self.sha256,
            "hub_commits": self.hub_commits,
        }

    # ------------------------------------------------------------------ per item
    def score(self, samples: list[Sample]) -> list[dict[str, float | None]]:
        """Per-item metric values of a batch (None where the item lacks what it needs)."""
        rows: list[dict[str, float | None]] = [dict.fromkeys(ITEM_METRICS) for _ in samples]
        item_metrics = [m for m in self.metrics if m in ITEM_METRICS]
        results: dict[Backbone, torch.Tensor] = {}
        for metric in item_metrics:
            definition = ITEM_METRICS[metric]
            backbone = definition.backbone
            embedder = self.embedders[backbone]
            if backbone not in results:
                results[backbone] = embedder.embed_images([s.result for s in samples])
            values = self._against(definition.against, embedder, samples, results[backbone])
            for row, value in zip(rows, values, strict=True):
                row[metric] = value
        for row in rows:  # DreamSim is a distance: 1 - cosine of its embeddings
            for name in ("dreamsim", "dreamsim_style"):
                value = row[name]
                if value is not None:
                    row[name] = 1.0 - value
        return rows

    def _against(self, against: Against, embedder, samples: list[Sample], results) -> list:
        if against == Against.PROMPT:
            index = [i for i, s in enumerate(samples) if s.prompt.strip()]
            others = embedder.embed_texts([samples[i].prompt for i in index]) if index else None
        else:
            attr = "subject" if against == Against.SUBJECT else "style"
            index = [i for i, s in enumerate(samples) if getattr(s, attr) is not None]
            images = [getattr(samples[i], attr) for i in index]
            others = embedder.embed_images(images) if index else None
        values: list[float | None] = [None] * len(samples)
        if others is not None:
            for i, value in zip(index, cosines(results[index], others), strict=True):
                values[i] = value
        return values

    # ------------------------------------------------------------------ set features
    def set_features(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Per-image features of the set metrics ("fid", "cmmd": [n, d] float32)."""
        from pipeline.metrics.fid import as_uint8_batch

        features: dict[str, torch.Tensor] = {}
        if "fid" in self.metrics:
            backbone = self.embedders[Backbone.FID]
            size = 299 if not hasattr(backbone, "processor") else None
            features["fid"] = backbone(as_uint8_batch(images, size or _common_size(images))).float()
        if "cmmd" in self.metrics:
            features["cmmd"] = self.embedders[Backbone.CMMD].embed_images(images).float()
        return features


def _common_size(images: list[Image.Image]) -> int | None:
    """One square size for a batch of differently sized images (None when they all agree)."""
    sizes = {i.size for i in images}
    if len(sizes) == 1 and next(iter(sizes))[0] == next(iter(sizes))[1]:
        return None
    return max(max(i.size) for i in images)
