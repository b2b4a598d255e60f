"""Header-only checks of weight files against the models' architectures (for `weights verify`).

Nothing here reads tensor data: safetensors headers give names and shapes, and they are held
against
- the tables of `pipeline.models.weight_tables` for the single official files (BFL transformer
  and VAE, USO dit_lora and projector, OmniConsistency LoRA), with the hyper-parameters of the
  preset (release, or tiny for a tiny build) and LoRA ranks read from the file itself (ranks
  are a free choice, not a corruption);
- a model built on the meta device from the folder's own config.json for transformers and
  diffusers folders (T5, CLIP, SigLIP; FLUX snapshot transformer/vae): every parameter must be
  in the files with its shape (tied copies excepted); extra tensors are allowed, as the loaders
  allow them (a full SigLIP checkpoint also holds its text tower).
Each check returns a list of problems (empty = fine); none raises for a bad file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import WeightFileError
from pipeline.models.architecture import (
    FLUX_AE,
    FLUX_DEV,
    TINY,
    AutoEncoderParams,
    FluxParams,
    USOProjectorParams,
)
from pipeline.models.flux.tensor_files import TensorFiles
from pipeline.models.weight_tables import (
    TensorTable,
    compare_tables,
    flux_transformer_tensors,
    flux_vae_tensors,
    omniconsistency_lora_tensors,
    read_safetensors_shapes,
    uso_dit_lora_tensors,
    uso_projector_tensors,
)

MAX_LISTED = 8


@dataclass(frozen=True)
class ArchitecturePreset:
    """The hyper-parameters single files are checked against; `ae` None = read from the file."""

    name: str  # release | tiny | custom (a flux_config.json but no tiny marker: staged tiny)
    flux: FluxParams
    ae: AutoEncoderParams | None


def preset_for(root: Path, tiny_marker: str) -> tuple[ArchitecturePreset, str | None]:
    """(preset, problem). Release weights have no flux1-dev/flux_config.json (the BFL file's
    shapes plus FLUX.1-dev's known RoPE axes say it all); a tiny build has its marker; a folder
    with only the config (tiny weights staged from a mirror) is checked against the config,
    its VAE against the parameters its own shapes imply. An unreadable config is the problem."""
    config = root / "flux1-dev" / "flux_config.json"
    if (root / tiny_marker).is_file():
        name, flux, ae = "tiny", TINY.flux, TINY.vae
    elif config.is_file():
        name, flux, ae = "custom", FLUX_DEV, None
    else:
        return ArchitecturePreset("release", FLUX_DEV, FLUX_AE), None
    problem = None
    if config.is_file():
        try:
            flux = FluxParams.from_dict(json.loads(config.read_text()))
        except (ValueError, TypeError) as error:
            problem = f"not a FluxParams json ({error})"
    return ArchitecturePreset(name, flux, ae), problem


def infer_ae_params(found: TensorTable) -> AutoEncoderParams | None:
    """The BFL VAE parameters a file's shapes imply (None when its key entry points are absent);
    checking the file against the table of these parameters catches renamed keys and any shape
    inconsistent with the rest of the network."""
    try:
        out_ch, in_ch = found["encoder.conv_in.weight"][:2]
        levels = 1 + max(int(k.split(".")[2]) for k in found if k.startswith("encoder.down."))
        blocks = 1 + max(
            int(k.split(".")[4]) for k in found if k.startswith("encoder.down.0.block.")
        )
        widths = [found[f"encoder.down.{i}.block.0.conv1.weight"][0] for i in range(levels)]
        z_channels = found["decoder.conv_in.weight"][1]
        image_out = found["decoder.conv_out.weight"][0]
        return AutoEncoderParams(
            in_channels=in_ch,
            ch=out_ch,
            out_ch=image_out,
            ch_mult=tuple(w // out_ch for w in widths),
            num_res_blocks=blocks,
            z_channels=z_channels,
        )
    except (KeyError, ValueError, IndexError, ZeroDivisionError):
        return None


# ------------------------------------------------------------------------ single files
def _rank(found: TensorTable, suffix: str) -> int | None:
    return next((shape[0] for key, shape in sorted(found.items()) if key.endswith(suffix)), None)


def _siglip_dims(root: Path, found: TensorTable) -> tuple[int, int]:
    """(patch tokens, width) of the SigLIP the projector reads: its config, else the file."""
    config = root / "siglip" / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        vision = data.get("vision_config", data)
        if {"image_size", "patch_size", "hidden_size"} <= set(vision):
            return (vision["image_size"] // vision["patch_size"]) ** 2, vision["hidden_size"]
    shape = found.get("feature_embedder.high_embedding_linear.0.weight", (0, 0))
    width = found.get("feature_embedder.high_layer_norm.weight", (0,))
    return shape[1], width[0]


def expected_table(
    component: str, found: TensorTable, preset: ArchitecturePreset, root: Path
) -> TensorTable | None:
    """The tensors a single file of `component` must hold, or None (no table: header only)."""
    flux = preset.flux
    if component == "flux_transformer":
        return flux_transformer_tensors(flux)
    if component == "flux_vae":
        ae = preset.ae or infer_ae_params(found)
        return flux_vae_tensors(ae) if ae is not None else {}
    if component == "uso_dit_lora":
        rank = _rank(found, ".down.weight")
        return uso_dit_lora_tensors(flux, rank) if rank else {}
    if component == "uso_projector":
        style = found.get("feature_embedder.high_embedding_linear.0.weight", (0,))[0]
        tokens, width = _siglip_dims(root, found)
        return uso_projector_tensors(USOProjectorParams(tokens, style, width, flux.hidden_size))
    if component == "omniconsistency_lora":
        rank = _rank(found, ".down.weight")
        return (
            omniconsistency_lora_tensors(
                flux.depth, flux.depth_single_blocks, flux.hidden_size, rank
            )
            if rank
            else {}
        )
    return None


def check_single_file(
    path: Path, component: str, preset: ArchitecturePreset, root: Path
) -> list[str]:
    """Problems of one safetensors file: unreadable header, or names/shapes off the table."""
    try:
        found = read_safetensors_shapes(path)
    except WeightFileError as error:
        return [error.problem]
    expected = expected_table(component, found, preset, root)
    if expected is None:
        return []
    if not expected:
        return [
            "the file lacks the tensors its sizes are read from (LoRA '.down.weight', VAE "
            "conv_in/conv_out)"
        ]
    diff = compare_tables(found, expected)
    return [
        f"{label}: {_listed(keys)}"
        for label, keys in (
            ("missing tensors", diff.missing),
            ("unexpected tensors", diff.unexpected),
            ("wrong shapes", diff.misshaped),
        )
        if keys
    ]


# -------------------------------------------------------------------------- folders
def _transformers_builder(component: str) -> Callable[[Path], torch.nn.Module]:
    import transformers as tf

    classes: dict[str, tuple[Any, Any]] = {
        "t5": (tf.T5Config, tf.T5EncoderModel),
        "clip": (tf.CLIPTextConfig, tf.CLIPTextModel),
        "siglip": (tf.SiglipVisionConfig, tf.SiglipVisionModel),
    }
    config_class, model_class = classes[component]
    return lambda folder: model_class(config_class.from_pretrained(folder))


def _diffusers_builder(component: str) -> Callable[[Path], torch.nn.Module]:
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    model_class = FluxTransformer2DModel if component == "flux_transformer" else AutoencoderKL
    return lambda folder: model_class.from_config(model_class.load_config(folder))


FOLDER_COMPONENTS = ("t5", "clip", "siglip", "flux_transformer", "flux_vae")


def check_model_folder(folder: Path, component: str) -> list[str]:
    """Problems of a transformers/diffusers folder: its config, its (sharded) safetensors, and
    every parameter of the architecture its config describes."""
    diffusers = component in ("flux_transformer", "flux_vae")
    stem = "diffusion_pytorch_model" if diffusers else "model"
    try:
        files = TensorFiles.diffusers_folder(folder, stem=stem)
    except WeightFileError as error:
        return [str(error)]
    build = _diffusers_builder(component) if diffusers else _transformers_builder(component)
    try:
        with torch.device("meta"):
            model = build(folder)
    except Exception as error:  # a config that does not build is the finding, whatever raised
        return [
            f"config.json does not describe a {component} model ({type(error).__name__}: {error})"
        ]
    found = {key: info.shape for key, info in files.infos.items()}
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    missing, misshaped = [], []
    for name, param in model.named_parameters(remove_duplicate=False):
        if name not in found:
            if tied.get(name) not in found:
                missing.append(name)
        elif tuple(found[name]) != tuple(param.shape):
            misshaped.append(f"{name}: file {tuple(found[name])} != config {tuple(param.shape)}")
    return [
        f"{label}: {_listed(keys)}"
        for label, keys in (
            ("parameters missing from the files", missing),
            ("wrong shapes", misshaped),
        )
        if keys
    ]


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    return shown + (f" ... (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else "")
