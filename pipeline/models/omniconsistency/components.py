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

from pipeline.models.base import ModelOptions
from pipeline.models.flux.loading import load_flux_transformer, load_flux_vae
from pipeline.models.flux.text_encoders import FluxTextEncoders
from pipeline.models.omniconsistency.lora import ConsistencyLora
from pipeline.models.omniconsistency.sampling import FLUX_DEV_SCHEDULER_CONFIG
from pipeline.models.runtime import resolve_device, resolve_dtype
from pipeline.models.weight_layout import OmniConsistencyFiles

# Random architectures for `load_random`: diffusers FluxTransformer2DModel / AutoencoderKL kwargs.
FLUX_DEV_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                            attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                            pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
FLUX_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, latent_channels=16, norm_num_groups=32, scaling_factor=0.3611,
                shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
RANDOM_SIZES = {
    # name: (transformer kwargs, vae kwargs, text encoder preset, consistency LoRA rank)
    "full": (FLUX_DEV_TRANSFORMER, FLUX_VAE, "full", 128),
    # CPU benchmarks: FLUX's shape (head_dim 128, mlp x4, 1:2 double/single) scaled down.
    "small": (dict(FLUX_DEV_TRANSFORMER, num_layers=2, num_single_layers=4, num_attention_heads=4,
                   joint_attention_dim=48, pooled_projection_dim=32),
              dict(FLUX_VAE, block_out_channels=(32, 32, 64, 64), layers_per_block=1), "tiny", 16),
    "tiny": (dict(FLUX_DEV_TRANSFORMER, num_layers=2, num_single_layers=2, attention_head_dim=32,
                  num_attention_heads=2, joint_attention_dim=48, pooled_projection_dim=32,
                  axes_dims_rope=(8, 12, 12)),
             dict(FLUX_VAE, block_out_channels=(32, 32, 64, 64), layers_per_block=1), "tiny", 4),
}


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
        else dict(FLUX_DEV_SCHEDULER_CONFIG)
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
    if size not in RANDOM_SIZES:
        raise ValueError(f"size must be one of {sorted(RANDOM_SIZES)}, got {size!r}")
    transformer_kwargs, vae_kwargs, text_size, rank = RANDOM_SIZES[size]
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device), _default_dtype(dtype if dtype.is_floating_point else torch.float32):
            transformer = FluxTransformer2DModel(**transformer_kwargs).eval()
            vae = AutoencoderKL(**vae_kwargs).eval()
    _apply_execution_options(transformer, options, dtype)
    lora = ConsistencyLora.random(inner_dim=transformer.inner_dim, n_double=len(transformer.transformer_blocks),
                                  n_single=len(transformer.single_transformer_blocks), rank=rank,
                                  dtype=dtype, device=device, seed=seed)
    text = FluxTextEncoders.random(text_size, device=device, dtype=dtype, seed=seed)
    return OmniComponents(transformer, vae, lora, text, dict(FLUX_DEV_SCHEDULER_CONFIG), device, dtype,
                          files={}, provenance=f"random:{size} (benchmark only, not a real model)")
