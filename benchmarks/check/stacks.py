"""The models the check times: built once per configuration with random full-size weights on
the device (speed does not depend on weight values; every outcome says `random_weights`), and
the requests they run (USO: subject + 1 style image; OmniConsistency: condition image + one
style LoRA, written once as a random kohya file of the architecture's style-LoRA rank).

One stack is alive at a time: building the next one frees the previous one first, so a peak
memory figure is one configuration's alone.
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch._dynamo
from PIL import Image
from safetensors.torch import save_file

from pipeline.models.architecture import architecture
from pipeline.models.base import GenerationRequest, ModelOptions, StyleLora, StylizationModel
from pipeline.models.registry import model_class
from pipeline.weights.tiny import KOHYA_METADATA, _kohya_style_lora


@dataclass(frozen=True)
class Preset:
    """Image size and steps of one `--size`."""

    resolution: int
    steps: int
    content_ref: int  # USO subject long side
    cond_size: int  # OmniConsistency condition side


PRESETS = {
    "full": Preset(1024, 25, 512, 512),  # the authors' defaults
    "small": Preset(64, 1, 64, 32),  # CPU mode: every step of the check (one denoising step)
    "tiny": Preset(64, 2, 64, 32),
}


@dataclass(frozen=True)
class StackConfig:
    """One configuration of one model; `label` names it in the report."""

    fp8: bool = False
    compile: bool = False
    offload: bool = False

    @property
    def label(self) -> str:
        parts = ["fp8" if self.fp8 else "bf16"]
        if self.compile:
            parts.append("compiled")
        if self.offload:
            parts.append("offload")
        return " ".join(parts)


@dataclass
class CheckSettings:
    device: torch.device
    size: str
    preset: Preset
    work: Path  # scratch folder (style LoRA file, shard run)
    compile_backend: str
    timed_images: int


def picture(seed: int, side: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


class Stacks:
    """Builds (and keeps one of) the models the measurements ask for."""

    def __init__(self, settings: CheckSettings):
        self.settings = settings
        self.current: tuple[str, StackConfig] | None = None
        self.model: StylizationModel | None = None
        self.build_s: float | None = None
        self._style_lora: Path | None = None

    def options(self, name: str, config: StackConfig) -> ModelOptions:
        s = self.settings
        extra: dict = {"compile_backend": s.compile_backend}
        if name == "uso":
            extra["content_ref"] = s.preset.content_ref
        else:
            extra["cond_size"] = s.preset.cond_size
            extra["style_lora_max_rank"] = architecture(s.size).style_lora_rank
        return ModelOptions(
            device=str(s.device),
            fp8=config.fp8,
            compile=config.compile,
            offload=config.offload,
            max_batch_size=2,  # single requests run alone; section 5 sends two at once
            extra=extra,
        )

    def get(self, name: str, config: StackConfig) -> StylizationModel:
        if self.current == (name, config) and self.model is not None:
            return self.model
        self.release()
        if self.settings.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.settings.device)
        start = time.perf_counter()
        self.model = model_class(name).load_random(self.options(name, config), self.settings.size)
        if self.settings.device.type == "cuda":
            torch.cuda.synchronize(self.settings.device)
        self.build_s = time.perf_counter() - start
        self.current = (name, config)
        return self.model

    def release(self) -> None:
        """Drop the current stack. Its references are dropped rather than `close()`d: closing an
        OmniConsistency model copies its 24 GB transformer back to the host first."""
        self.model, self.current = None, None
        torch._dynamo.reset()  # compiled graphs hold the modules; the next stack needs none
        gc.collect()
        device = self.settings.device
        if device.type == "cuda":
            torch.cuda.empty_cache()
            left = torch.cuda.memory_allocated(device) / 2**30
            if left > 1.0:
                print(f"gpu_check: {left:.1f} GiB still allocated after a stack", file=sys.stderr)

    def style_lora(self) -> Path:
        """A random kohya style LoRA for this size (written once per check)."""
        if self._style_lora is None:
            arch = architecture(self.settings.size)
            path = self.settings.work / f"style_lora_{self.settings.size}.safetensors"
            tensors = _kohya_style_lora(
                torch.Generator().manual_seed(7), arch.flux, arch.style_lora_rank
            )
            save_file(tensors, str(path), metadata=KOHYA_METADATA)
            self._style_lora = path
        return self._style_lora

    def request(self, name: str, index: int, style_lora: bool = True) -> GenerationRequest:
        """A fresh item (new subject, style image and prompt: no cache helps it)."""
        side = self.settings.preset.resolution
        request = GenerationRequest(
            f"{name}-{index}",
            f"a photograph of a house by a lake, variant {index}",
            seed=index,
            subject=picture(index, side),
            width=side,
            height=side,
            steps=self.settings.preset.steps,
        )
        if name == "uso":
            return replace(request, styles=[picture(10_000 + index, 384)])
        if style_lora:
            return replace(request, style_lora=StyleLora(self.style_lora(), 1.0, "random"))
        return request
