"""USO parity: run one case folder through the product's loaders and sampling code, compare.

A case folder holds case.json (parameters and tolerances), inputs.safetensors (raw uint8 images,
the initial noise, T5 states and the pooled CLIP vector) and expected.safetensors (the authors'
outputs); the weight set is the sibling folder `weights/` (official on-disk formats plus
config.json). Works for any case of that format: any size, 0..n styles, with or without a
subject, any pe. Every expected tensor is compared; one we cannot produce is reported missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from pipeline.models.flux.packing import pack_latents
from pipeline.models.uso.components import USOComponents, load_components
from pipeline.models.uso.sampling import (
    DenoiseBatch,
    decode_latents,
    denoise,
    encode_subject,
    image_to_pixels,
    position_ids,
    preprocess_subject,
    to_uint8_images,
    unpack_to_latents,
    uso_sigmas,
)
from pipeline.parity.compare import ParityReport

EXACT = 0.0  # position ids are small integers: they must match exactly
DEFAULT_ATOL = 1e-4  # for an expected tensor the case gives no tolerance for


def load_case_components(weights: Path) -> USOComponents:
    """The case's weight set, loaded through the real loaders in float32 on the CPU."""
    return load_components(
        transformer=weights / "flux1-dev.safetensors",
        vae=weights / "ae.safetensors",
        dit_lora=weights / "dit_lora.safetensors",
        projector=weights / "projector.safetensors",
        siglip=weights / "siglip",
        flux_config=weights / "config.json",
        dtype=torch.float32,
        device=torch.device("cpu"),
        style_cache_size=0,
    )


def _image(array: torch.Tensor) -> Image.Image:
    return Image.fromarray(array.numpy(), mode="RGB")


def produce(
    case: dict, inputs: dict[str, torch.Tensor], parts: USOComponents
) -> dict[str, torch.Tensor]:
    """Every tensor our code computes for the case, under the names of expected.safetensors
    (plus debug_* intermediates that inputs.safetensors also carries)."""
    width, height = case["width"] // 16 * 16, case["height"] // 16 * 16
    steps, pe = case["num_steps"], case.get("pe", "d")
    out: dict[str, torch.Tensor] = {}
    sigmas = uso_sigmas(steps, width, height)
    out["sigmas"] = sigmas
    out["sigmas_f64"] = torch.tensor(sigmas.tolist(), dtype=torch.float64)

    subject_latents = None
    if "subject_image_uint8" in inputs:
        subject = preprocess_subject(
            _image(inputs["subject_image_uint8"]), case.get("content_ref", 512)
        )
        out["debug_subject_preprocessed_uint8"] = torch.from_numpy(
            np.array(subject, dtype=np.uint8)
        )
        pixels = image_to_pixels(subject)
        out["debug_subject_pixels_m1p1"] = pixels
        subject_latents = encode_subject(parts.vae, pixels, mode=case.get("vae_posterior", "mean"))
        out["subject_latent"] = subject_latents
        out["subject_latent_packed_0"] = pack_latents(subject_latents)

    style_images = [
        _image(inputs[f"style_image_{i}_uint8"])
        for i in range(len([k for k in inputs if k.startswith("style_image_")]))
    ]
    for i, image in enumerate(style_images):
        out[f"debug_style{i}_pixel_values"] = parts.style_encoder.pixel_values(image)
    style_tokens = parts.style_encoder.tokens(style_images, use_cache=False)
    if style_tokens is not None:
        out["style_tokens"] = style_tokens

    batch = DenoiseBatch(
        noise=inputs["noise"],
        t5_states=inputs["t5_embeds"],
        pooled=inputs["pooled_clip"],
        guidance=torch.tensor([float(case["guidance"])]),
        sigmas=sigmas.tolist(),
        style_tokens=style_tokens,
        subject_latents=subject_latents,
        pe=pe,
    )
    img_ids, txt_ids = position_ids(batch)
    n_target = (batch.latent_size[0] // 2) * (batch.latent_size[1] // 2)
    out["img_ids"] = img_ids[:n_target].unsqueeze(0)
    if subject_latents is not None:
        out["subject_img_ids_0"] = img_ids[n_target:].unsqueeze(0)
    n_style = 0 if style_tokens is None else style_tokens.shape[1]
    out["txt_ids"] = txt_ids[n_style:].unsqueeze(
        0
    )  # the T5 tokens' ids, as the reference keeps them

    velocities: list[torch.Tensor] = []
    packed = denoise(
        parts.transformer, batch, on_velocity=lambda _, v: velocities.append(v.clone())
    )
    out["velocity_step0"] = velocities[0]
    out["velocities"] = torch.stack(velocities)
    out["final_latent_packed"] = packed
    latents = unpack_to_latents(packed, batch.latent_size)
    out["final_latent"] = latents
    decoded = decode_latents(parts.vae, latents)
    out["decoded_float"] = decoded
    out["image_uint8"] = to_uint8_images(decoded)[0]
    return out


def tolerance_for(name: str, tolerances: dict) -> tuple[float, float, str]:
    """(atol, rtol, note) for an expected tensor, from case.json's "tolerance" table."""
    if name.endswith("_ids") or "_ids_" in name:
        return EXACT, 0.0, ""
    aliases = {
        "sigmas_f64": "sigmas",
        "final_latent_packed": "final_latent",
        "debug_subject_pixels_m1p1": "subject_latent",
    }
    key = aliases.get(name, name)
    if key.startswith("subject_latent"):
        key = "subject_latent"
    if key.startswith("debug_style"):
        key = "style_tokens"
    entry = tolerances.get(key)
    if entry is None:
        return DEFAULT_ATOL, 0.0, "default tolerance"
    if "max_abs_diff" in entry:
        return float(entry["max_abs_diff"]), 0.0, entry.get("note", "")
    return float(entry.get("atol", DEFAULT_ATOL)), float(entry.get("rtol", 0.0)), ""


def run_case(case_dir: Path) -> ParityReport:
    """Load the weight set, run the case from raw inputs, compare every expected tensor."""
    case_dir = Path(case_dir)
    case = json.loads((case_dir / "case.json").read_text())
    inputs = load_file(case_dir / "inputs.safetensors")
    expected = load_file(case_dir / "expected.safetensors")
    parts = load_case_components(case_dir.parent / "weights")
    ours = produce(case, inputs, parts)
    report = ParityReport(case=case.get("case", case_dir.name), model="uso")
    tolerances = case.get("tolerance", {})
    for name in sorted(expected):
        if name not in ours:
            report.missing.append(name)
            continue
        atol, rtol, note = tolerance_for(name, tolerances)
        report.compare(name, ours[name], expected[name], atol, rtol, note)
    # debug intermediates carried by inputs.safetensors: checked too, they localise a failure
    for name in sorted(k for k in inputs if k.startswith("debug_")):
        if name in ours:
            atol, rtol, _ = tolerance_for(name, tolerances)
            if name.endswith("uint8"):
                atol = 0.0
            report.compare(name, ours[name], inputs[name], atol, rtol, "intermediate")
    return report
