"""The parts of a USO model and how to get them: from the official files, or random for benchmarks.

`USOComponents` is what a denoising run needs (transformer with LoRA and the style-token hook,
VAE, style encoder). `load_uso_components` reads the official files through the strict loaders
(`flux_loading`, `uso_lora`, `uso_projector`); the parity runner and `USOModel.load` both call
it, so parity exercises the product's loading path. `random_uso_components` builds the same
architecture with random weights directly on the device, for speed benchmarks only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

from pipeline.errors import WeightFileError
from pipeline.models.flux.loading import load_flux_transformer, load_flux_vae
from pipeline.models.uso.lora import apply_uso_lora, attach_lora, uso_lora_shapes
from pipeline.models.uso.projector import (
    ImageTensorCache,
    StyleEncoder,
    USOStyleProjector,
    load_siglip,
    load_uso_projector,
)
from pipeline.models.uso.transformer import USOTransformer


@dataclass
class USOComponents:
    transformer: USOTransformer
    vae: AutoencoderKL
    style_encoder: StyleEncoder


def load_uso_components(*, transformer: Path, vae: Path, dit_lora: Path, projector: Path,
                        siglip: Path, flux_config: Path | Mapping | None, dtype: torch.dtype,
                        device: torch.device, siglip_dtype: torch.dtype = torch.float32,
                        vae_dtype: torch.dtype = torch.float32, merge_lora: bool = False,
                        style_cache_size: int = 256) -> USOComponents:
    """Load every USO part from the official files (all strict: `WeightFileError` on mismatch).

    Defaults follow the reference: transformer/LoRA/projector in `dtype` (bf16 on GPU), VAE and
    SigLIP in fp32, LoRA unmerged.
    """
    flux = load_flux_transformer(transformer, config=flux_config, dtype=dtype, device=device)
    apply_uso_lora(flux, dit_lora, dtype=dtype, merge=merge_lora)
    projector_module = load_uso_projector(projector, dtype=dtype, device=device)
    siglip_model, processor = load_siglip(siglip, dtype=siglip_dtype, device=device)
    hidden = flux.config.num_attention_heads * flux.config.attention_head_dim
    if projector_module.high_projection.out_features != hidden:
        raise WeightFileError(projector, f"projector emits {projector_module.high_projection.out_features}"
                              f"-wide tokens, the transformer is {hidden} wide")
    if projector_module.high_layer_norm.normalized_shape[0] != siglip_model.config.hidden_size:
        raise WeightFileError(projector, "projector input width does not match SigLIP's hidden size "
                              f"{siglip_model.config.hidden_size}")
    return USOComponents(
        transformer=USOTransformer(flux),
        vae=load_flux_vae(vae, dtype=vae_dtype, device=device),
        style_encoder=StyleEncoder(siglip_model, processor, projector_module,
                                   ImageTensorCache(style_cache_size)),
    )


# ------------------------------------------------------------------------------ random weights

# diffusers kwargs of the transformer, SigLIP vision config, projector and LoRA sizes, VAE widths
RANDOM_PRESETS: dict[str, dict] = {
    "full": dict(  # FLUX.1-dev + USO v1.0 + SigLIP so400m-patch14-384
        flux=dict(num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                  joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                  axes_dims_rope=(16, 56, 56)),
        siglip=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                    num_attention_heads=16, image_size=384, patch_size=14),
        style_tokens=64, lora_rank=128, vae_widths=(128, 256, 512, 512), vae_layers=2,
        text="full"),
    "mid": dict(  # a CPU-benchmarkable shape: real head size and RoPE, fewer/narrower blocks
        flux=dict(num_layers=2, num_single_layers=4, attention_head_dim=128, num_attention_heads=4,
                  joint_attention_dim=48, pooled_projection_dim=32, guidance_embeds=True,
                  axes_dims_rope=(16, 56, 56)),
        siglip=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=20,
                    num_attention_heads=4, image_size=56, patch_size=14),
        style_tokens=16, lora_rank=16, vae_widths=(32, 32, 64, 64), vae_layers=1, text="tiny"),
    "tiny": dict(
        flux=dict(num_layers=1, num_single_layers=1, attention_head_dim=32, num_attention_heads=2,
                  joint_attention_dim=48, pooled_projection_dim=32, guidance_embeds=True,
                  axes_dims_rope=(8, 12, 12)),
        siglip=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=20,
                    num_attention_heads=4, image_size=56, patch_size=14),
        style_tokens=4, lora_rank=4, vae_widths=(32, 32, 32, 32), vae_layers=1, text="tiny"),
}


@contextmanager
def _building_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on `device` in `dtype` (no fp32 CPU copy of 12B weights)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _random_lora_pairs(flux: FluxTransformer2DModel, rank: int
                       ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random, non-zero LoRA pairs in the USO layout, created on the transformer's device."""
    weight = flux.x_embedder.weight
    return {prefix: tuple(torch.randn(shape, device=weight.device, dtype=weight.dtype) * 0.01
                          for shape in shapes)
            for prefix, shapes in uso_lora_shapes(flux, rank).items()}


def random_uso_components(preset: str, *, dtype: torch.dtype, device: torch.device,
                          siglip_dtype: torch.dtype = torch.float32,
                          vae_dtype: torch.dtype = torch.float32, seed: int = 0,
                          style_cache_size: int = 256) -> USOComponents:
    """The USO architecture at `preset` size ("full", "mid", "tiny") with random weights."""
    if preset not in RANDOM_PRESETS:
        raise ValueError(f"preset must be one of {sorted(RANDOM_PRESETS)}, got {preset!r}")
    p = RANDOM_PRESETS[preset]
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with _building_on(device, dtype):
            flux = FluxTransformer2DModel(**p["flux"]).eval().requires_grad_(False)
            hidden = flux.inner_dim
            siglip_cfg = SiglipVisionConfig(**p["siglip"])
            projector = USOStyleProjector((siglip_cfg.image_size // siglip_cfg.patch_size) ** 2,
                                          p["style_tokens"], siglip_cfg.hidden_size, hidden)
        attach_lora(flux, _random_lora_pairs(flux, p["lora_rank"]))
        with _building_on(device, siglip_dtype):
            siglip = SiglipVisionModel(siglip_cfg).eval().requires_grad_(False)
        with _building_on(device, vae_dtype):
            levels = len(p["vae_widths"])
            vae = AutoencoderKL(in_channels=3, out_channels=3,
                                down_block_types=("DownEncoderBlock2D",) * levels,
                                up_block_types=("UpDecoderBlock2D",) * levels,
                                block_out_channels=p["vae_widths"], layers_per_block=p["vae_layers"],
                                latent_channels=16, norm_num_groups=32, scaling_factor=0.3611,
                                shift_factor=0.1159, use_quant_conv=False,
                                use_post_quant_conv=False).eval().requires_grad_(False)
    size = siglip_cfg.image_size
    processor = SiglipImageProcessorPil(size={"height": size, "width": size}, resample=3,
                                        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                                        image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return USOComponents(USOTransformer(flux), vae,
                         StyleEncoder(siglip, processor, projector.eval().requires_grad_(False),
                                      ImageTensorCache(style_cache_size)))
