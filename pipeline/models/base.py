"""The one small interface between the batch runner and a stylization model.

The runner never reaches inside a model: it builds `GenerationRequest`s from manifest rows,
calls `StylizationModel.generate`, and gets back one `GenerationOutcome` per request, in order.
A model never raises for a single bad item: it returns an outcome carrying an `ItemError`, so
one corrupt style image or one out-of-memory item cannot take its neighbours down with it.
Models are pure torch: they read local weight files, but know nothing of Ray, S3 or manifests.
"""

from __future__ import annotations

import dataclasses
import re
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from pipeline.errors import ItemError

# ModelOptions.dtype names -> torch dtype attribute ("auto" aside); `runtime` maps them to dtypes.
DTYPE_ALIASES = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float64": "float64",
}
_DEVICE = re.compile(r"^(auto|cpu|mps|(cuda|xpu)(:\d+)?)$")

# GenerationOutcome.timings keys, the same in every model (seconds):
#   text_s     prompt encoding (T5 + CLIP; near zero when the prompt was cached)
#   prepare_s  conditioning the item before the denoising loop: noise, VAE encode of the
#              subject/source image, USO's style tokens, OmniConsistency's warm-up pass that
#              fills its condition K/V cache
#   denoise_s  the denoising loop
#   decode_s   VAE decode and conversion to uint8
#   model_s    this item's share of all of the above (a batch's stages are shared by its items)
# A stage run for a whole batch reports the batch's time to each of its items.
TIMING_KEYS = ("text_s", "prepare_s", "denoise_s", "decode_s", "model_s")

# GenerationOutcome.parameters keys both models report, with the same meaning. Others (USO's
# "pe", OmniConsistency's "cond_size", ...) are model-specific.
SHARED_PARAMETER_KEYS = (
    "model",
    "prompt",
    "seed",
    "width",
    "height",
    "requested_width",
    "requested_height",
    "steps",
    "guidance",
    "mu",
    "noise",
    "batch_size",
    # execution choices (`runtime.Runtime.parameters`)
    "dtype",
    "fp8",
    "fp8_matmul",
    "compile",
    "fuse_lora",
    "random_weights",
)


@dataclass(frozen=True)
class StyleLora:
    """A community style LoRA resolved to a local file, plus its strength."""

    path: Path
    scale: float = 1.0
    name: str = ""  # human name (e.g. "Ghibli" or the manifest URI), used in provenance only


@dataclass
class GenerationRequest:
    """Everything one output image depends on; decoded images, never URIs.

    `width`/`height`/`steps`/`guidance` of None mean "the model's own default" (the authors'
    defaults: USO 1024x1024, 25 steps, guidance 4.0; OmniConsistency 1024x1024, 25 steps, 3.5).
    """

    item_id: str
    prompt: str
    seed: int
    subject: Image.Image | None = None
    styles: list[Image.Image] = field(default_factory=list)
    style_lora: StyleLora | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None


@dataclass
class GenerationOutcome:
    """The result of one request: an HWC uint8 RGB image, or the error that stopped it."""

    item_id: str
    image: np.ndarray | None = None
    error: ItemError | None = None
    parameters: dict = field(default_factory=dict)  # resolved, SHARED_PARAMETER_KEYS and more
    timings: dict[str, float] = field(default_factory=dict)  # seconds, by stage (TIMING_KEYS)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ModelOptions:
    """Execution options. Everything that changes numerics is off by default.

    - dtype: "auto" = bf16 on CUDA (the authors' dtype), fp32 on CPU.
    - compile: torch.compile the transformer (same math, different kernels: tiny drift).
    - fp8: store linear weights in float8 (changes numerics).
    - offload: keep weights on the CPU and move each component to the GPU when used.
    - max_batch_size: items of identical token layout run together in one forward.
    - fuse_lora: merge LoRA deltas into base weights (changes bf16 rounding).
    - extra: model-specific switches, documented by each model (e.g. OmniConsistency's
      `apply_proj_loras`); a key the model does not know is an error.

    `device`, `dtype` and `max_batch_size` are checked here (ValueError); what depends on a
    model (extra keys, fp8 with fuse_lora) is checked when the model loads.
    """

    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    fp8: bool = False
    offload: bool = False
    max_batch_size: int = 1
    fuse_lora: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise ValueError(
                f"device must be auto, cpu, mps, cuda[:N] or xpu[:N], got {self.device!r}"
            )
        if self.dtype != "auto" and self.dtype not in DTYPE_ALIASES:
            raise ValueError(
                f"unknown dtype {self.dtype!r}; use auto or one of {sorted(DTYPE_ALIASES)}"
            )
        if (
            isinstance(self.max_batch_size, bool)
            or not isinstance(self.max_batch_size, int)
            or self.max_batch_size < 1
        ):
            raise ValueError(f"max_batch_size must be an integer >= 1, got {self.max_batch_size!r}")

    def fingerprint_fields(self) -> dict:
        """The options that change outputs, for the run's config fingerprint."""
        data = dataclasses.asdict(self)
        data.pop("device")
        data.pop("offload")  # moving weights around does not change the math
        data.pop("max_batch_size")
        return data


class StylizationModel(ABC):
    """A loaded model. One instance per actor; `generate` may be called many times."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def load(cls, weights_root: Path, options: ModelOptions) -> StylizationModel:
        """Load from a staged weights root (layout in `pipeline.models.weight_layout`).

        A missing, truncated or mis-shaped file raises `WeightFileError`/`WeightLayoutError`
        naming the file and the keys; nothing is silently ignored.
        """

    @classmethod
    @abstractmethod
    def load_random(cls, options: ModelOptions, size: str = "full") -> StylizationModel:
        """The model's architecture at `size` ("full" | "small" | "tiny", see
        `pipeline.models.architecture`) with random weights built on the device.

        For speed benchmarks and tests only: outcomes say `random_weights` True and
        `weight_files()` is empty.
        """

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationOutcome]:
        """Run every request; return one outcome per request, in the same order.

        Must not raise for a per-item problem (bad image, impossible size, OOM on one item):
        such problems come back as `GenerationOutcome.error`. The model stays usable after.
        """

    @abstractmethod
    def weight_files(self) -> dict[str, Path]:
        """Logical name -> local file actually loaded (for sha256 provenance)."""

    def batch_key(self, request: GenerationRequest) -> Hashable:
        """Requests with equal keys may share a forward pass (and a loaded style LoRA)."""
        return id(request)

    def close(self) -> None:  # noqa: B027 - optional hook, models without accelerator memory skip it
        """Release accelerator memory held by this model."""


def to_uint8_image(image: Image.Image | np.ndarray) -> np.ndarray:
    """HWC uint8 RGB array from a PIL image or array (helper for callers and tests)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.asarray(image, dtype=np.uint8)
