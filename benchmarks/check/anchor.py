"""Section 6, the anchor: diffusers' own `FluxPipeline` on the very modules OmniConsistency runs
on (its random FLUX transformer, VAE, T5 and CLIP, bf16), same size and steps, so that every
restyle figure is also a ratio to plain FLUX measured in the same run; and OmniConsistency
without a style LoRA, for its own overhead over plain FLUX (the authors report +5.3% time and
+4.6% memory at 1024^2, 24 steps, with the condition K/V cache).

The transformer's OmniConsistency processors compute diffusers' stock FLUX attention when no
OmniConsistency context is passed (`omniconsistency.attention`), which is what FluxPipeline
calls; the style LoRA is unloaded first. On a compiled stack the same compiled blocks serve
the pipeline (its warm-up compiles the plain-FLUX graphs).
"""

from __future__ import annotations

import time

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

from check.flops import Transformer, flux_image
from check.model_runs import peak_memory_gib, reset_peak_memory, sync, time_model
from check.report import Measurement
from check.stacks import StackConfig, Stacks

FLUX_MODEL = "flux (diffusers FluxPipeline)"


def flux_pipeline(stacks: Stacks, config: StackConfig) -> FluxPipeline:
    model = stacks.get("omniconsistency", config)
    model.style_slot.unload()  # type: ignore[attr-defined]
    parts, encoders = model.components, model.text_encoders  # type: ignore[attr-defined]
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(parts.scheduler_config),
        vae=parts.vae,
        text_encoder=encoders._clip,
        tokenizer=encoders.clip_tokenizer,
        text_encoder_2=encoders._t5,
        tokenizer_2=encoders.t5_tokenizer,
        transformer=parts.transformer,
    )


def time_flux(
    stacks: Stacks, section: str, config: StackConfig, peak_flops: float | None
) -> Measurement:
    settings = stacks.settings
    device, preset = settings.device, settings.preset
    reset_peak_memory(device)
    pipe = flux_pipeline(stacks, config)
    encoders = stacks.model.text_encoders  # type: ignore[union-attr]

    def image(index: int) -> float:
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            pipe(
                f"a photograph of a house by a lake, variant {index}",
                height=preset.resolution,
                width=preset.resolution,
                num_inference_steps=preset.steps,
                guidance_scale=3.5,
                max_sequence_length=encoders.max_sequence_length,
                generator=torch.Generator("cpu").manual_seed(index),
                output_type="np",
            )
        sync(device)
        return time.perf_counter() - start

    measurement = Measurement(section, FLUX_MODEL, config.label)
    measurement.warmup_s = round(image(60_000), 3)
    seconds = [image(60_001 + i) for i in range(settings.timed_images)]
    t = Transformer.of(pipe.transformer.config)
    tokens = (preset.resolution // 16) ** 2
    flops = flux_image(t, preset.steps, encoders.max_sequence_length, tokens)
    measurement.finish(seconds, flops, peak_flops)
    measurement.peak_memory_gib = peak_memory_gib(device)
    return measurement


def anchor(
    stacks: Stacks, section: str, config: StackConfig, peak_flops: float | None
) -> list[Measurement]:
    """FluxPipeline, then OmniConsistency without a style LoRA, on one stack."""
    flux = time_flux(stacks, section, config, peak_flops)
    plain = time_model(
        stacks,
        section,
        "omniconsistency",
        config,
        style_lora=False,
        label=f"{config.label}, no style LoRA",
        peak_flops=peak_flops,
    )
    if flux.s_per_image and plain.s_per_image:
        plain.extra["time_over_flux"] = round(plain.s_per_image / flux.s_per_image - 1, 4)
    if flux.peak_memory_gib and plain.peak_memory_gib:
        plain.extra["memory_over_flux"] = round(plain.peak_memory_gib / flux.peak_memory_gib - 1, 4)
    return [flux, plain]
