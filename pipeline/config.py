"""The run configuration, its fingerprint, and per-item seeds.

A run is identified on disk by `<out>/<run>/`. Its fingerprint is a hash of everything that
changes output bytes (model, weight sha256s, sampling defaults, run seed, numerics options,
image encoding, captions). A shard committed under one fingerprint is never mixed with another:
`restyle run` refuses to reuse a run folder whose `run.json` carries a different fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pipeline import __version__
from pipeline.models.base import ModelOptions

IMAGE_FORMATS = {"png": "png", "jpeg": "jpg", "jpg": "jpg", "webp": "webp"}


@dataclass(frozen=True)
class SamplingDefaults:
    """Run-wide sampling parameters; a manifest row may override each one. None = the model's."""

    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None


@dataclass(frozen=True)
class OutputOptions:
    """How results are encoded and captioned."""

    image_format: str = "png"  # png | jpeg | webp
    quality: int = 95  # jpeg/webp quality
    caption: str = "prompt"  # "prompt", or "template" (uses caption_template), or "model"
    caption_template: str = ""  # str.format fields: id, prompt, model, style_lora, any extra column
    caption_model: str = ""  # captioning model folder, when caption == "model"
    include_references: bool = False  # also store subject/style images in each sample (triplets)

    @property
    def extension(self) -> str:
        try:
            return IMAGE_FORMATS[self.image_format.lower()]
        except KeyError:
            raise ValueError(f"unknown image format {self.image_format!r}; "
                             f"use one of {sorted(set(IMAGE_FORMATS))}") from None


@dataclass(frozen=True)
class ScoringOptions:
    """Optional quality scores per result, written to records and provenance (see
    `pipeline.processing.scoring`): e.g. "clip_t" (result vs prompt), "style" (result vs style image)."""

    metrics: tuple[str, ...] = ()
    model: str = ""  # a local CLIP-family transformers folder

    @property
    def enabled(self) -> bool:
        return bool(self.metrics)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; `public_dict()` is what goes to run.json (no credentials)."""

    manifest: tuple[str, ...]
    output: str  # output root (local path or s3:// URI)
    run: str  # run name: outputs go to <output>/<run>/
    model: str  # "uso" | "omniconsistency"
    weights: str = "tiny"  # "tiny", "random-full", a local folder, or s3:// mirror
    seed: int = 0  # run seed; item seed = derive_seed(seed, id) unless the row gives one
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    options: ModelOptions = field(default_factory=ModelOptions)
    outputs: OutputOptions = field(default_factory=OutputOptions)
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    actors: int = 0  # 0 = one per GPU in the cluster (or 1 without GPUs)
    prefetch_items: int = 8  # decoded items buffered ahead of the model, per shard
    max_shard_attempts: int = 3  # an actor that dies mid-shard: the shard is retried elsewhere
    only_ids: tuple[str, ...] | None = None  # restrict to these ids (retry-failed, nightly)

    @property
    def run_uri(self) -> str:
        return self.output.rstrip("/") + "/" + self.run

    def public_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["only_ids"] = None if self.only_ids is None else len(self.only_ids)
        return data

    def fingerprint_fields(self, weight_sha256: dict[str, str]) -> dict[str, Any]:
        """Everything that changes output bytes. Paths and cluster shape do not."""
        return {
            "model": self.model,
            "weights": dict(sorted(weight_sha256.items())),
            "seed": self.seed,
            "sampling": dataclasses.asdict(self.sampling),
            "options": self.options.fingerprint_fields(),
            "outputs": dataclasses.asdict(self.outputs),
            "scoring": dataclasses.asdict(self.scoring),
        }

    def fingerprint(self, weight_sha256: dict[str, str]) -> str:
        canonical = json.dumps(self.fingerprint_fields(weight_sha256), sort_keys=True,
                               separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def derive_seed(run_seed: int, item_id: str) -> int:
    """A seed from (run seed, item id) alone, so any item is reproducible on its own."""
    digest = hashlib.sha256(f"{run_seed}\x00{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def code_version() -> str:
    return f"restyle {__version__}"
