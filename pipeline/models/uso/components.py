"""The parts of a USO model and how to get them: from the official files, or random for benchmarks.

`USOComponents` is what a denoising run needs (transformer with LoRA and the style-token hook,
VAE, style encoder). `load_components` reads the official files through the strict loaders
(`flux.loading`, `uso.lora`, `uso.projector`); the parity runner and `USOModel.load` both call
it, so parity exercises the product's loading path. `random_components` builds the same
architecture at a size of `pipeline.models.architecture` with random weights directly on the
device, for speed benchmarks and tests only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

from pipeline.errors import WeightFileError
from pipeline.models.architecture import architecture
from pipeline.models.flux.loading import load_flux_transformer, load_flux_vae
from pipeline.models.runtime import building_on, random_init
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


def load_components(
    *,
    transformer: Path,
    vae: Path,
    dit_lora: Path,
    projector: Path,
    siglip: Path,
    flux_config: Path | Mapping | None,
    dtype: torch.dtype,
    device: torch.device,
    siglip_dtype: torch.dtype = torch.float32,
    vae_dtype: torch.dtype = torch.float32,
    merge_lora: bool = False,
    style_cache_size: int = 256,
) -> USOComponents:
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
        raise WeightFileError(
            projector,
            "projector emits "
            f"{projector_module.high_projection.out_features}-wide tokens, the "
            f"transformer is {hidden} wide",
        )
    if projector_module.high_layer_norm.normalized_shape[0] != siglip_model.config.hidden_size:
        raise WeightFileError(
            projector,
            "projector input width does not match SigLIP's hidden "
            f"size {siglip_model.config.hidden_size}",
        )
    return USOComponents(
        transformer=USOTransformer(flux),
        vae=load_flux_vae(vae, dtype=vae_dtype, device=device),
        style_encoder=StyleEncoder(
            siglip_model, processor, projector_module, ImageTensorCache(style_cache_size)
        ),
    )


# ------------------------------------------------------------------------------ random weights
def _random_lora_pairs(
    flux: FluxTransformer2DModel, rank: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random, non-zero LoRA pairs in the USO layout, created on the transformer's device."""
    weight = flux.x_embedder.weight

    def draw(shape: tuple[int, int]) -> torch.Tensor:
        return torch.randn(shape, device=weight.device, dtype=weight.dtype) * 0.01

    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for prefix, (down_shape, up_shape) in uso_lora_shapes(flux, rank).items():
        pairs[prefix] = (draw(down_shape), draw(up_shape))  # down first, as before
    return pairs


def random_components(
    size: str,
    *,
    dtype: torch.dtype,
    device: torch.device,
    siglip_dtype: torch.dtype = torch.float32,
    vae_dtype: torch.dtype = torch.float32,
    seed: int = 0,
    style_cache_size: int = 256,
) -> USOComponents:
    """The USO architecture at `size` ("full", "small", "tiny") with random weights."""
    arch = architecture(size)
    device = torch.device(device)
    siglip_config = SiglipVisionConfig(**arch.siglip)
    p = arch.uso_projector
    with random_init(device, seed, dtype):
        flux = FluxTransformer2DModel(**arch.flux.diffusers_config()).eval().requires_grad_(False)
        projector = USOStyleProjector(p.siglip_tokens, p.style_tokens, p.siglip_dim, p.hidden_size)
        attach_lora(flux, _random_lora_pairs(flux, arch.uso_lora_rank))
        with building_on(device, siglip_dtype):
            siglip = SiglipVisionModel(siglip_config).eval().requires_grad_(False)
        with building_on(device, vae_dtype):
            vae = AutoencoderKL(**arch.vae.diffusers_config()).eval().requires_grad_(False)
    side = siglip_config.image_size
    processor = SiglipImageProcessorPil(
        size={"height": side, "width": side},
        resample=3,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    return USOComponents(
        USOTransformer(flux),
        vae,
        StyleEncoder(
            siglip,
            processor,
            projector.eval().requires_grad_(False),
            ImageTensorCache(style_cache_size),
        ),
    )
