"""Timing one model configuration: one warm-up image (compilation, kernel choice, first
allocations; reported as `warmup_s`), then the timed images, each a fresh item, with the
accelerator synchronised around every call and peak memory taken over the lot."""

from __future__ import annotations

import resource
import time

import torch

from check.flops import Transformer, omniconsistency_image, uso_image
from check.report import Measurement
from check.stacks import StackConfig, Stacks
from pipeline.models.architecture import architecture
from pipeline.models.base import GenerationRequest, StylizationModel
from pipeline.models.uso.prepare import subject_grid

STAGES = ("text_s", "prepare_s", "denoise_s", "decode_s")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    """GPU: the allocator's peak since the last reset. CPU: the process's max RSS (never reset)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def image_flops(model: StylizationModel, request: GenerationRequest, size: str) -> float:
    """Analytic FLOPs of `request` on `model` (`check.flops`)."""
    arch = architecture(size)
    side, steps = request.width or 1024, request.steps or 25
    target = (side // 16) ** 2
    encoders = model.text_encoders  # type: ignore[attr-defined]
    text = encoders.max_sequence_length
    parts = model.components  # type: ignore[attr-defined]
    if model.name == "uso":
        t = Transformer.of(parts.transformer.flux.config)
        width, height = subject_grid(request.subject.size, model.settings.content_ref)  # type: ignore[attr-defined,union-attr]
        style = parts.style_encoder.projector.tokens_per_image * len(request.styles)
        return uso_image(
            t, steps, text, style, target, (width // 16) * (height // 16), arch.uso_lora_rank
        )
    t = Transformer.of(parts.transformer.config)
    cond = (model.settings.cond_size // 16) ** 2  # type: ignore[attr-defined]
    style_rank = arch.style_lora_rank if request.style_lora is not None else 0
    return omniconsistency_image(
        t, steps, text, target, cond, parts.consistency_lora.rank, style_rank
    )


def _generate(model: StylizationModel, requests: list[GenerationRequest], device) -> tuple:
    sync(device)
    start = time.perf_counter()
    outcomes = model.generate(requests)
    sync(device)
    seconds = time.perf_counter() - start
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise RuntimeError(f"generation failed: {failed[0].error}")
    return seconds, outcomes


def time_model(
    stacks: Stacks,
    section: str,
    name: str,
    config: StackConfig,
    *,
    batch: int = 1,
    style_lora: bool = True,
    label: str | None = None,
    peak_flops: float | None = None,
) -> Measurement:
    """Warm-up + `timed_images` timed generations of `batch` equal-layout items each."""
    settings = stacks.settings
    device = settings.device
    reset_peak_memory(device)
    model = stacks.get(name, config)
    measurement = Measurement(section, name, label or config.label)
    measurement.extra["build_s"] = round(stacks.build_s or 0.0, 2)
    counter = 1000 * (1 + len(section)) + 100 * batch  # fresh items, none cached
    warm = [stacks.request(name, counter + j, style_lora) for j in range(batch)]
    measurement.warmup_s = round(_generate(model, warm, device)[0], 3)
    seconds, stages = [], {key: 0.0 for key in STAGES}
    for i in range(settings.timed_images):
        requests = [
            stacks.request(name, counter + batch * (i + 1) + j, style_lora) for j in range(batch)
        ]
        elapsed, outcomes = _generate(model, requests, device)
        seconds.append(elapsed / batch)
        for key in STAGES:
            stages[key] += outcomes[0].timings.get(key, 0.0) / settings.timed_images
    flops = image_flops(model, warm[0], settings.size)
    measurement.finish(seconds, flops, peak_flops)
    measurement.peak_memory_gib = peak_memory_gib(device)
    if batch == 1:
        measurement.stages_s = {key: round(value, 4) for key, value in stages.items()}
    else:
        measurement.extra["batch"] = batch
    return measurement
