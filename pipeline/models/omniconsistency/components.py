"""The modules an OmniConsistency model runs on, from a weights root or random (benchmarks).

Loading goes through the shared FLUX loaders (`flux_loading`), the shared text encoders
(`text_encoders`) and the consistency LoRA reader (`omni_lora`); nothing here knows the
OmniConsistency algorithm.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel

from pipeline.models.architecture import FLUX_DEV_SCHEDULER, architecture
from pipeline.models.base import ModelOptions
from pipeline.models.flux.loading import load_flux_transformer, load_flux_vae
from pipeline.models.flux.text_encoders import FluxTextEncoders
from pipeline.models.omniconsistency.lora import ConsistencyLora
from pipeline.models.runtime import resolve_device, resolve_dtype
from pipeline.models.weight_layout import OmniConsistencyFiles

@dataclass
class OmniComponents:
    transformer: FluxTransformer2DModel
    vae: AutoencoderKL
    consistency_lora: ConsistencyLora
    text_encoders: FluxTextEncoders
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    files: dict[str, Path] = field(default_factory=dict)  # logical name -> file, for provenance
    provenance: str = "files"  # or "random:<size>" (benchmarks only)




def _apply_execution_options(transformer: FluxTransformer2DModel, options: ModelOptions, dtype: torch.dtype) -> None:
    if options.fp8:
        if options.fuse_lora:
            raise ValueError("fp8 and fuse_lora cannot be combined: a LoRA cannot be merged into "
                             "float8 weights without a second rounding")
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)


def load_components(files: OmniConsistencyFiles, options: ModelOptions) -> OmniComponents:
    """Everything from a staged weights root (layout in `pipeline.models.weight_layout`)."""
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    home = torch.device("cpu") if options.offload else device
    flux = files.flux
    transformer = load_flux_transformer(flux.transformer, config=flux.flux_config, dtype=dtype, device=home).eval()
    _apply_execution_options(transformer, options, dtype)
    vae = load_flux_vae(flux.vae, dtype=dtype, device=home).eval()
    lora = ConsistencyLora.from_file(files.consistency_lora, inner_dim=transformer.inner_dim,
                                     n_double=len(transformer.transformer_blocks),
                                     n_single=len(transformer.single_transformer_blocks), device=device)
    text = FluxTextEncoders.load(flux, device, dtype, offload=options.offload)
    scheduler_file = Path(flux.transformer).parent / "scheduler" / "scheduler_config.json"
    scheduler_config = json.loads(scheduler_file.read_text()) if scheduler_file.is_file() \
        else dict(FLUX_DEV_SCHEDULER)
    named = files.named()
    if scheduler_file.is_file():
        named["scheduler_config"] = scheduler_file
    return OmniComponents(transformer, vae, lora, text, scheduler_config, device, dtype, named)


@contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def random_components(options: ModelOptions, size: str = "full", seed: int = 0) -> OmniComponents:
    """Real architectures with random weights, built directly on the device in the target dtype
    (a full FLUX.1-dev is never materialised in fp32). For speed benchmarks only."""
    arch = architecture(size)
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device), _default_dtype(dtype if dtype.is_floating_point else torch.float32):
            transformer = FluxTransformer2DModel(**arch.flux.diffusers_config()).eval()
            vae = AutoencoderKL(**arch.vae.diffusers_config()).eval()
    _apply_execution_options(transformer, options, dtype)
    lora = ConsistencyLora.random(inner_dim=transformer.inner_dim, n_double=len(transformer.transformer_blocks),
                                  n_single=len(transformer.single_transformer_blocks), rank=arch.omniconsistency_lora_rank,
                                  dtype=dtype, device=device, seed=seed)
    text = FluxTextEncoders.random(size, device=device, dtype=dtype, seed=seed)
    return OmniComponents(transformer, vae, lora, text, dict(FLUX_DEV_SCHEDULER), device, dtype,
                          files={}, provenance=f"random:{size} (benchmark only, not a real model)")
