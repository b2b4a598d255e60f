"""Write the tiny BFL FLUX checkpoints again as diffusers folders (same values, other layout).

The tiny weights root is generated in the official BFL layout (the architecture tables are the
source of truth). To let tests prove that the BFL and diffusers layouts load to the same model,
the same tensors are also written as a FLUX.1-dev-style diffusers snapshot. The transformer
mapping below is written here from the two module trees, independently of the production loader
(`pipeline.models.flux.loading`), so a test comparing both layouts cross-checks two codes.
The VAE uses diffusers' own `convert_ldm_vae_checkpoint`.
"""

from __future__ import annotations

import torch

from pipeline.models.architecture import AutoEncoderParams, FluxParams


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """BFL's final adaLN emits (shift, scale); diffusers' AdaLayerNormContinuous (scale, shift)."""
    shift, scale = weight.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def bfl_to_diffusers_transformer(
    bfl: dict[str, torch.Tensor], params: FluxParams
) -> dict[str, torch.Tensor]:
    """BFL flux1-dev state dict -> `FluxTransformer2DModel` state dict (any width)."""
    src = dict(bfl)
    out: dict[str, torch.Tensor] = {}
    h = params.hidden_size

    def move(dst: str, name: str) -> None:
        for suffix in ("weight", "bias"):
            if f"{name}.{suffix}" in src:
                out[f"{dst}.{suffix}"] = src.pop(f"{name}.{suffix}")

    def split(dst: list[str], name: str, sizes: list[int]) -> None:
        for suffix in ("weight", "bias"):
            if f"{name}.{suffix}" in src:
                parts = torch.split(src.pop(f"{name}.{suffix}"), sizes, dim=0)
                for target, part in zip(dst, parts, strict=True):
                    out[f"{target}.{suffix}"] = part.contiguous()

    def norm(dst: str, name: str) -> None:
        out[f"{dst}.weight"] = src.pop(f"{name}.scale")

    move("x_embedder", "img_in")
    move("context_embedder", "txt_in")
    for dst, name in (
        ("timestep_embedder", "time_in"),
        ("text_embedder", "vector_in"),
        ("guidance_embedder", "guidance_in"),
    ):
        move(f"time_text_embed.{dst}.linear_1", f"{name}.in_layer")
        move(f"time_text_embed.{dst}.linear_2", f"{name}.out_layer")
    for i in range(params.depth):
        b, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        move(f"{d}.norm1.linear", f"{b}.img_mod.lin")
        move(f"{d}.norm1_context.linear", f"{b}.txt_mod.lin")
        split([f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"], f"{b}.img_attn.qkv", [h] * 3)
        split(
            [f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"],
            f"{b}.txt_attn.qkv",
            [h] * 3,
        )
        norm(f"{d}.attn.norm_q", f"{b}.img_attn.norm.query_norm")
        norm(f"{d}.attn.norm_k", f"{b}.img_attn.norm.key_norm")
        norm(f"{d}.attn.norm_added_q", f"{b}.txt_attn.norm.query_norm")
        norm(f"{d}.attn.norm_added_k", f"{b}.txt_attn.norm.key_norm")
        move(f"{d}.attn.to_out.0", f"{b}.img_attn.proj")
        move(f"{d}.attn.to_add_out", f"{b}.txt_attn.proj")
        move(f"{d}.ff.net.0.proj", f"{b}.img_mlp.0")
        move(f"{d}.ff.net.2", f"{b}.img_mlp.2")
        move(f"{d}.ff_context.net.0.proj", f"{b}.txt_mlp.0")
        move(f"{d}.ff_context.net.2", f"{b}.txt_mlp.2")
    for i in range(params.depth_single_blocks):
        b, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        move(f"{d}.norm.linear", f"{b}.modulation.lin")
        split(
            [f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp"],
            f"{b}.linear1",
            [h, h, h, params.mlp_hidden],
        )
        norm(f"{d}.attn.norm_q", f"{b}.norm.query_norm")
        norm(f"{d}.attn.norm_k", f"{b}.norm.key_norm")
        move(f"{d}.proj_out", f"{b}.linear2")
    move("proj_out", "final_layer.linear")
    out["norm_out.linear.weight"] = _swap_halves(src.pop("final_layer.adaLN_modulation.1.weight"))
    out["norm_out.linear.bias"] = _swap_halves(src.pop("final_layer.adaLN_modulation.1.bias"))
    if src:
        raise ValueError(f"BFL tensors left unmapped: {sorted(src)}")
    return out


def build_diffusers_transformer(
    bfl: dict[str, torch.Tensor], params: FluxParams, dtype: torch.dtype
):
    """A `FluxTransformer2DModel` holding exactly the BFL tensors (strict load)."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(**params.diffusers_config())
    converted = {k: v.to(dtype) for k, v in bfl_to_diffusers_transformer(bfl, params).items()}
    model.load_state_dict(converted, strict=True, assign=True)  # takes the tensors as they are
    return model


def build_diffusers_vae(ae: dict[str, torch.Tensor], params: AutoEncoderParams, dtype: torch.dtype):
    """An `AutoencoderKL` holding exactly the BFL ae tensors, via diffusers' LDM converter."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = params.diffusers_config()
    with torch.device("meta"):
        model = AutoencoderKL(**config)
    converted = {k: v.to(dtype) for k, v in convert_ldm_vae_checkpoint(dict(ae), config).items()}
    model.load_state_dict(converted, strict=True, assign=True)
    return model
