"""OmniConsistency parity: run one case folder through the product's loaders and sampler.

Case layout (shared/parity/omniconsistency/README.md): `<set>/weights/` (diffusers transformer
and vae folders, scheduler config, consistency LoRA, style LoRA) and `<set>/<case>/` with
case.json, inputs.safetensors, expected.safetensors. Two routes are checked:

1. raw inputs: source_image (uint8) -> our preprocessing -> our VAE encode (posterior mean, as
   the vectors were made) -> warm-up -> steps -> decode; every expected tensor is compared;
2. the stored cond_latent injected: the cache, velocities, latents and image again, which
   isolates the transformer path from preprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from pipeline.models.flux.packing import unpack_latents
from pipeline.models.flux.style_lora import StyleLoraSlot
from pipeline.models.omniconsistency.components import load_components
from pipeline.models.omniconsistency.sampling import (
    OmniConsistencySampler,
    condition_pixels,
    to_uint8,
)
from pipeline.models.runtime import DTYPES
from pipeline.parity.compare import ParityReport

CACHE_NAMES = ("k", "v")


def load_case_sampler(weights: Path, case: dict, dtype: torch.dtype) -> OmniConsistencySampler:
    """The case's weight set through the product's loaders (diffusers folders, official LoRA
    files), on the CPU, with the case's style LoRA mounted when it names one."""
    scheduler = weights / "scheduler" / "scheduler_config.json"
    parts = load_components(
        transformer=weights / "transformer",
        vae=weights / "vae",
        consistency_lora=weights / "omniconsistency_lora.safetensors",
        flux_config=None,
        scheduler_config=scheduler if scheduler.exists() else None,
        dtype=dtype,
        device=torch.device("cpu"),
    )
    sampler = OmniConsistencySampler(
        parts.transformer,
        parts.vae,
        parts.consistency_lora,
        parts.scheduler_config,
        dtype=dtype,
        device=torch.device("cpu"),
        consistency_weight=float(case.get("consistency_lora_weight", 1.0)),
    )
    if case.get("style_lora"):
        StyleLoraSlot(parts.transformer).activate(
            weights.parent / case["style_lora"], float(case.get("style_lora_scale", 1.0))
        )
    return sampler


def _tolerance(tol: dict, *names: str, default: float) -> float:
    for name in names:
        if name in tol:
            return float(tol[name])
    return default


def _compare_generation(
    report: ParityReport,
    sampler: OmniConsistencySampler,
    case: dict,
    inputs: dict,
    expected: dict,
    cond_latent: torch.Tensor,
    label: str,
) -> None:
    tol = case.get("tolerance_atol", {})
    layout = sampler.layout(int(case["width"]), int(case["height"]), int(case["cond_size"]))
    guidance = [float(case["guidance"])]
    prompt, pooled = inputs["prompt_embeds"], inputs["pooled_prompt_embeds"]
    velocities, latents = [], []

    def observe(step: int, velocity: torch.Tensor, after: torch.Tensor) -> None:
        velocities.append(unpack_latents(velocity.float(), *layout.latent_hw))
        latents.append(unpack_latents(after.float(), *layout.latent_hw))

    with torch.inference_mode():
        final, cache = sampler.generate_latent(
            cond_latent,
            inputs["noise_latent"],
            prompt,
            pooled,
            guidance,
            layout,
            int(case["num_steps"]),
            on_step=observe,
        )
        decoded = sampler.decode(final)
    kv_tol = _tolerance(tol, "bank_kv", default=1e-4)
    for block, (key, value) in cache.entries.items():
        for part, tensor in zip(CACHE_NAMES, (key, value), strict=True):
            name = f"{block}_cond_{part}"
            if name in expected:
                report.compare(f"{label}{name}", tensor, expected[name], kv_tol)
    missing_blocks = {n.rsplit("_cond_", 1)[0] for n in expected if "_cond_" in n} - set(
        cache.entries
    )
    report.missing += [f"{label}{b}_cond_k/v" for b in sorted(missing_blocks)]
    vel_tol, lat_tol = (
        _tolerance(tol, "velocity", default=1e-4),
        _tolerance(tol, "latents", default=1e-4),
    )
    report.compare(f"{label}velocity_step0", velocities[0], expected["velocity_step0"], vel_tol)
    report.compare(f"{label}velocities", torch.cat(velocities), expected["velocities"], vel_tol)
    report.compare(
        f"{label}latents_after_step", torch.cat(latents), expected["latents_after_step"], lat_tol
    )
    report.compare(f"{label}final_latent", final, expected["final_latent"], lat_tol)
    report.compare(
        f"{label}decoded", decoded, expected["decoded"], _tolerance(tol, "decoded", default=2e-4)
    )
    image = torch.from_numpy(to_uint8(decoded)[0].astype(np.int16))
    report.compare(
        f"{label}image",
        image,
        expected["image"].to(torch.int16),
        _tolerance(tol, "image_uint8_max_abs", default=1),
    )


def run_case(case_dir: Path) -> ParityReport:
    """Run one case; the report holds every comparison (see module docstring)."""
    case_dir = Path(case_dir)
    case = json.loads((case_dir / "case.json").read_text())
    inputs = load_file(str(case_dir / "inputs.safetensors"))
    expected = load_file(str(case_dir / "expected.safetensors"))
    dtype = DTYPES[case.get("dtype", "float32")]
    tol = case.get("tolerance_atol", {})
    report = ParityReport(case=case_dir.name, model="omniconsistency")
    sampler = load_case_sampler(case_dir.parent / "weights", case, dtype)

    layout = sampler.layout(int(case["width"]), int(case["height"]), int(case["cond_size"]))
    schedule = sampler.schedule(int(case["num_steps"]), layout)
    report.compare(
        "sigmas", schedule.sigmas, expected["sigmas"], _tolerance(tol, "sigmas", default=1e-6)
    )
    report.compare(
        "timesteps",
        schedule.timesteps,
        expected["timesteps"],
        _tolerance(tol, "timesteps", default=1e-4),
    )
    img_ids = torch.cat([layout.noise_ids(dtype), layout.cond_ids(dtype)])
    report.compare(
        "img_ids", img_ids, expected["img_ids"], _tolerance(tol, "img_ids", default=1e-5)
    )

    # Route 1: from the raw source image, our own preprocessing and VAE encode (posterior mean).
    source = Image.fromarray(inputs["source_image"].numpy(), mode="RGB")
    pixels = condition_pixels(source, int(case["cond_size"]), sampler.latent_factor)
    report.compare(
        "in:debug_cond_pixels",
        pixels,
        inputs["debug_cond_pixels"],
        _tolerance(tol, "debug_cond_pixels", default=1e-6),
    )
    with torch.inference_mode():
        cond_latent = sampler.encode_condition(pixels.to(dtype), None, posterior="mean")
    report.compare(
        "in:cond_latent",
        cond_latent,
        inputs["cond_latent"],
        _tolerance(tol, "cond_latent", default=1e-5),
    )
    _compare_generation(report, sampler, case, inputs, expected, cond_latent, label="")
    # Route 2: the reference's own condition latent injected.
    _compare_generation(
        report, sampler, case, inputs, expected, inputs["cond_latent"].to(dtype), label="injected:"
    )
    return report
