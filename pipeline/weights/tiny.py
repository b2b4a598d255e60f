"""A complete tiny random-weight weights root, in the official on-disk formats.

Tests and the demo run the real loaders on small files: `build_tiny_weights(root)` writes every
file of the layout in `pipeline.models.weight_layout` with the real architectures at the "tiny"
size of `pipeline.models.architecture` (tensor names and shapes from `weight_tables`):

    flux1-dev/flux1-dev.safetensors    BFL transformer keys, bf16 (like the release)
    flux1-dev/flux_config.json         BFL FluxParams incl. axes_dim (shapes cannot tell it)
    flux1-dev/ae.safetensors           BFL/LDM VAE keys, fp32, no quant convs (like the release)
    t5/  clip/                         transformers T5EncoderModel / CLIPTextModel + tokenizer
                                       (T5 also keeps its SentencePiece spiece.model)
    siglip/                            SiglipVisionModel (20 layers: USO reads hidden_states[-20])
                                       + preprocessor_config.json (bicubic squash, mean=std=0.5)
    uso/dit_lora.safetensors           XLabs processor keys, rank 4, bf16
    uso/projector.safetensors          feature_embedder.* keys, bf16
    omniconsistency/OmniConsistency.safetensors   q/k/v/proj_loras, rank 4, bf16
    style_loras/<Name>_rank128_bf16.safetensors   kohya-format style LoRAs (rank 4 inside, the
                                       file names are the shipped ones) for `TINY_STYLE_NAMES`
    style_loras/examples/              the same kind of LoRA in diffusers/PEFT and XLabs formats
    tiny_build.json                    completion marker: seed, layout, every file's size + sha256

`flux_layout="diffusers"` writes the FLUX part as a FLUX.1-dev diffusers snapshot instead
(flux1-dev/{transformer,vae,text_encoder,tokenizer,text_encoder_2,tokenizer_2,scheduler},
model_index.json, loadable with `FluxPipeline.from_pretrained`); "both" writes both, like the
real FLUX.1-dev repository. Every layout holds the same tensor values for the same seed.

Values are small-std normals (weights ~N(0, min(0.1, 1/sqrt(fan_in))), norm scales ~1, LoRA
`up` weights non-zero), drawn from one generator per file derived from (seed, file name): the
same seed gives byte-identical files. Kohya style LoRAs carry no single-block `linear1` entries
because diffusers' kohya converter hard-codes FLUX.1-dev's widths for that fused layer (the
parity fixture has the same gap).

The build is idempotent and crash-safe: it writes into a temporary sibling folder and renames it
into place, so `root` either holds a complete build (reused as is) or none; a build whose files
no longer match its marker (a file deleted or truncated) is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import save_file

from pipeline.models.architecture import FLUX_DEV_SCHEDULER, TINY, FluxParams
from pipeline.models.flux import tiny_tokenizers
from pipeline.models.omniconsistency.styles import SHIPPED_STYLES, shipped_file_name
from pipeline.models.weight_layout import STYLE_LORA_DIR
from pipeline.models.weight_tables import (
    TensorTable,
    flux_transformer_tensors,
    flux_vae_tensors,
    omniconsistency_lora_tensors,
    uso_dit_lora_tensors,
    uso_projector_tensors,
)
from pipeline.weights.atomic_build import build_atomically
from pipeline.weights.tiny_marker import MARKER, is_complete_build, marker_header

_ModuleT = TypeVar("_ModuleT", bound=torch.nn.Module)

FLUX_LAYOUTS = ("bfl", "diffusers", "both")

TINY_STYLE_NAMES = SHIPPED_STYLES  # all 22, so every shipped style name works in the demo
# kohya module -> alpha; alpha/rank differs per module (0.25 .. 2) so a lost alpha shows.
KOHYA_DOUBLE_ALPHAS = {
    "img_attn_qkv": 2.0,
    "img_attn_proj": 4.0,
    "img_mlp_0": 8.0,
    "img_mlp_2": 4.0,
    "txt_attn_qkv": 1.0,
    "txt_attn_proj": 4.0,
    "txt_mlp_0": 2.0,
    "txt_mlp_2": 4.0,
}
KOHYA_SINGLE_ALPHAS = {"linear2": 2.0}
# One key only: safetensors writes metadata in hash order, so several keys break byte-identity.
KOHYA_METADATA = {"ss_network_module": "networks.lora_flux"}

# Release dtypes: flux1-dev is bf16, ae fp32; the USO/OmniConsistency/style files are bf16.
FLUX_DTYPE, VAE_DTYPE, ADDON_DTYPE, TEXT_DTYPE = (
    torch.bfloat16,
    torch.float32,
    torch.bfloat16,
    torch.float32,
)

SIGLIP_PREPROCESSOR = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "SiglipImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "SiglipProcessor",
    "resample": 3,  # PIL bicubic
    "rescale_factor": 1 / 255,
    "size": {"height": TINY.siglip["image_size"], "width": TINY.siglip["image_size"]},
}


# ----------------------------------------------------------------------------- random values
def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _is_norm_scale(name: str) -> bool:
    leaf = name.rsplit(".", 2)
    return name.endswith(".scale") or (name.endswith(".weight") and "norm" in leaf[-2])


def _random_value(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    if _is_norm_scale(name):
        return 1.0 + 0.1 * noise
    if name.endswith("bias") or len(shape) < 2:
        return 0.02 * noise
    fan_in = 1
    for size in shape[1:]:
        fan_in *= size
    return noise * min(0.1, max(0.02, fan_in**-0.5))


def random_tensors(
    table: TensorTable, gen: torch.Generator, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """One random tensor per table entry, in table order (deterministic for a generator)."""
    return {name: _random_value(name, shape, gen).to(dtype) for name, shape in table.items()}


def randomize_module(module: _ModuleT, gen: torch.Generator) -> _ModuleT:
    """Overwrite every parameter (not buffers: position ids stay intact) with `_random_value`."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(_random_value(name, tuple(param.shape), gen).to(param.dtype))
    return module


# ----------------------------------------------------------------------------- file writers
def _save(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(path),
        metadata=metadata or {"format": "pt"},
    )


def _text_models(seed: int):
    """(t5 model, t5 tokenizer, clip model, clip tokenizer) with random tiny weights."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    t5_tok, clip_tok = tiny_tokenizers.build_t5_tokenizer(), tiny_tokenizers.build_clip_tokenizer()
    t5 = T5EncoderModel(
        T5Config(
            **TINY.t5,
            vocab_size=len(t5_tok),
            pad_token_id=t5_tok.pad_token_id,
            eos_token_id=t5_tok.eos_token_id,
            decoder_start_token_id=t5_tok.pad_token_id,
        )
    )
    clip = CLIPTextModel(
        CLIPTextConfig(
            **TINY.clip_text,
            vocab_size=len(clip_tok),
            bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id,
        )
    )
    randomize_module(t5, _generator(seed, "t5"))
    randomize_module(clip, _generator(seed, "clip"))
    return t5.to(TEXT_DTYPE).eval(), t5_tok, clip.to(TEXT_DTYPE).eval(), clip_tok


def _save_hf(model, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def write_siglip(folder: Path, seed: int) -> None:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    model = SiglipVisionModel(SiglipVisionConfig(**TINY.siglip))
    randomize_module(model, _generator(seed, "siglip"))
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(SIGLIP_PREPROCESSOR, indent=2) + "\n"
    )


def _kohya_style_lora(
    gen: torch.Generator, params: FluxParams, rank: int
) -> dict[str, torch.Tensor]:
    h, mlp = params.hidden_size, params.mlp_hidden
    shapes = {
        "img_attn_qkv": (h, 3 * h),
        "img_attn_proj": (h, h),
        "img_mlp_0": (h, mlp),
        "img_mlp_2": (mlp, h),
    }
    shapes.update({k.replace("img", "txt"): v for k, v in shapes.items()})
    modules = [
        (f"lora_unet_double_blocks_{i}_{m}", shapes[m], a)
        for i in range(params.depth)
        for m, a in KOHYA_DOUBLE_ALPHAS.items()
    ]
    modules += [
        (f"lora_unet_single_blocks_{i}_linear2", (h + mlp, h), a)
        for i in range(params.depth_single_blocks)
        for a in KOHYA_SINGLE_ALPHAS.values()
    ]
    out: dict[str, torch.Tensor] = {}
    for name, (in_f, out_f), alpha in modules:
        table: TensorTable = {
            f"{name}.lora_down.weight": (rank, in_f),
            f"{name}.lora_up.weight": (out_f, rank),
        }
        out.update(random_tensors(table, gen, ADDON_DTYPE))
        out[f"{name}.alpha"] = torch.tensor(alpha, dtype=ADDON_DTYPE)
    return out


def _diffusers_style_lora(
    gen: torch.Generator, params: FluxParams, rank: int
) -> dict[str, torch.Tensor]:
    """diffusers/PEFT format, as `FluxPipeline.save_lora_weights` writes it (no alphas)."""
    h, mlp = params.hidden_size, params.mlp_hidden
    targets = []
    for i in range(params.depth):
        b = f"transformer.transformer_blocks.{i}"
        targets += [
            (f"{b}.attn.{m}", h, h)
            for m in (
                "to_q",
                "to_k",
                "to_v",
                "to_out.0",
                "add_q_proj",
                "add_k_proj",
                "add_v_proj",
                "to_add_out",
            )
        ]
        targets += [(f"{b}.ff.net.0.proj", h, mlp), (f"{b}.ff.net.2", mlp, h)]
    for i in range(params.depth_single_blocks):
        b = f"transformer.single_transformer_blocks.{i}"
        targets += [(f"{b}.attn.{m}", h, h) for m in ("to_q", "to_k", "to_v")]
        targets += [(f"{b}.proj_mlp", h, mlp), (f"{b}.proj_out", h + mlp, h)]
    table: TensorTable = {}
    for name, in_f, out_f in targets:
        table[f"{name}.lora_A.weight"] = (rank, in_f)
        table[f"{name}.lora_B.weight"] = (out_f, rank)
    return random_tensors(table, gen, ADDON_DTYPE)


def _xlabs_style_lora(
    gen: torch.Generator, params: FluxParams, rank: int
) -> dict[str, torch.Tensor]:
    """XLabs format (x-flux): processor LoRAs on the double blocks only, as XLabs ships them."""
    table = {
        k: v
        for k, v in uso_dit_lora_tensors(params, rank).items()
        if k.startswith("double_blocks.")
    }
    return random_tensors(table, gen, ADDON_DTYPE)


def write_style_loras(folder: Path, seed: int, params: FluxParams = TINY.flux) -> None:
    rank = TINY.style_lora_rank
    for name in TINY_STYLE_NAMES:
        file = shipped_file_name(name)
        _save(
            _kohya_style_lora(_generator(seed, file), params, rank),
            folder / file,
            metadata=KOHYA_METADATA,
        )
    examples = folder / "examples"
    _save(
        _diffusers_style_lora(_generator(seed, "diffusers"), params, rank),
        examples / "Watercolor_diffusers_peft.safetensors",
    )
    _save(
        _xlabs_style_lora(_generator(seed, "xlabs"), params, rank),
        examples / "Sketch_xlabs.safetensors",
    )
    _save(
        _kohya_style_lora(_generator(seed, "kohya"), params, rank),
        examples / "Comic_kohya.safetensors",
        metadata=KOHYA_METADATA,
    )


def _write_flux_diffusers_snapshot(folder: Path, flux: dict, ae: dict, text) -> None:
    """FLUX.1-dev diffusers snapshot (model_index.json + component folders) via FluxPipeline."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from pipeline.weights.tiny_diffusers import build_diffusers_transformer, build_diffusers_vae

    t5, t5_tok, clip, clip_tok = text
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER),
        vae=build_diffusers_vae(ae, TINY.vae, VAE_DTYPE),
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=build_diffusers_transformer(flux, TINY.flux, FLUX_DTYPE),
    )
    pipe.save_pretrained(folder)
    tiny_tokenizers.write_t5_sentencepiece(folder / "tokenizer_2")


def _write_all(root: Path, seed: int, flux_layout: str) -> None:
    flux_dir = root / "flux1-dev"
    flux = random_tensors(
        flux_transformer_tensors(TINY.flux), _generator(seed, "flux1-dev"), FLUX_DTYPE
    )
    ae = random_tensors(flux_vae_tensors(TINY.vae), _generator(seed, "ae"), VAE_DTYPE)
    text = _text_models(seed)
    if flux_layout in ("bfl", "both"):
        _save(flux, flux_dir / "flux1-dev.safetensors")
        _save(ae, flux_dir / "ae.safetensors")
        (flux_dir / "flux_config.json").write_text(json.dumps(TINY.flux.to_dict(), indent=2) + "\n")
    if flux_layout == "bfl":
        t5, t5_tok, clip, clip_tok = text
        _save_hf(t5, t5_tok, root / "t5")
        tiny_tokenizers.write_t5_sentencepiece(root / "t5")
        _save_hf(clip, clip_tok, root / "clip")
    else:  # text encoders live in the snapshot's text_encoder(_2)/tokenizer(_2) folders
        _write_flux_diffusers_snapshot(flux_dir, flux, ae, text)
    write_siglip(root / "siglip", seed)
    arch = TINY
    _save(
        random_tensors(
            uso_dit_lora_tensors(arch.flux, arch.uso_lora_rank),
            _generator(seed, "dit_lora"),
            ADDON_DTYPE,
        ),
        root / "uso" / "dit_lora.safetensors",
    )
    _save(
        random_tensors(
            uso_projector_tensors(arch.uso_projector), _generator(seed, "projector"), ADDON_DTYPE
        ),
        root / "uso" / "projector.safetensors",
    )
    omni_table = omniconsistency_lora_tensors(
        arch.flux.depth,
        arch.flux.depth_single_blocks,
        arch.flux.hidden_size,
        arch.omniconsistency_lora_rank,
    )
    _save(
        random_tensors(omni_table, _generator(seed, "omniconsistency"), ADDON_DTYPE),
        root / "omniconsistency" / "OmniConsistency.safetensors",
    )
    write_style_loras(root / STYLE_LORA_DIR, seed)


# ------------------------------------------------------------------------- build management
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _inventory(root: Path) -> dict[str, dict]:
    return {
        path.relative_to(root).as_posix(): {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MARKER
    }


def build_tiny_weights(root: Path, seed: int = 0, flux_layout: str = "bfl") -> Path:
    """Write (or reuse) a complete tiny weights root at `root`; return `root`.

    Reuses `root` when it already holds a complete build with the same seed and layout.
    Otherwise builds into a temporary sibling folder and renames it into place; an existing
    incomplete or outdated build is replaced. A non-empty `root` that is not a tiny build is
    never touched (ValueError), so a real weights root cannot be clobbered by mistake.
    """
    if flux_layout not in FLUX_LAYOUTS:
        raise ValueError(f"flux_layout must be one of {FLUX_LAYOUTS}, got {flux_layout!r}")

    def write(staging: Path) -> dict:
        _write_all(staging, seed, flux_layout)
        return {**marker_header(seed, flux_layout), "files": _inventory(staging)}

    return build_atomically(
        Path(root), MARKER, lambda f: is_complete_build(f, seed, flux_layout), write, "tiny weights"
    )


if __name__ == "__main__":  # `python -m pipeline.weights.tiny ROOT`: build in a child process
    import sys

    build_tiny_weights(Path(sys.argv[1]))
