"""Load the FLUX transformer and VAE from the files people actually have.

Public API (used by USO and OmniConsistency; keep it small):

- `load_flux_transformer(path, *, config=None, dtype, device) -> FluxTransformer2DModel` from a
  Black Forest Labs single file (flux1-dev.safetensors key layout: img_in, double_blocks.*,
  single_blocks.*, final_layer.*, optionally prefixed "model.diffusion_model.") or from a
  diffusers folder (config.json + diffusion_pytorch_model[.safetensors | shards + index]).
- `load_flux_vae(path, *, config=None, dtype, device) -> AutoencoderKL` from BFL ae.safetensors
  (LDM key layout, no quant convs) or a diffusers folder.

Both are strict: a missing file, a truncated or corrupt header, missing or unexpected keys, or a
tensor of the wrong shape raise `WeightFileError` naming the file and the keys, before any
tensor data is read. The architecture of a BFL file is inferred from its tensor shapes (widths,
head size, depths, text/vector widths, guidance embedding, MLP ratio); the RoPE `axes_dim` can
not be inferred and comes from `config` (a BFL FluxParams dict, a dict holding one under
"flux_bfl_params", or a json file of either), defaulting to (16, 56, 56) when head_dim is 128.

The BFL -> diffusers key mapping is our own and general: diffusers'
`convert_flux_transformer_checkpoint_to_diffusers` hard-codes inner_dim 3072, which breaks
tiny checkpoints. For the VAE, diffusers' `convert_ldm_vae_checkpoint` is used as is, run once
on shape-only meta tensors to learn which file key feeds which parameter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from pipeline.errors import WeightFileError
from pipeline.models.architecture import FLUX_AE, FLUX_DEV
from pipeline.models.flux.tensor_files import (
    TensorFiles,
    TensorSource,
    identity_plan,
    materialize,
)

_BFL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def load_flux_transformer(
    path: Path,
    *,
    config: Mapping | Path | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
) -> FluxTransformer2DModel:
    """A FLUX transformer from a BFL single file or a diffusers folder (see module docstring).

    `config` is only needed for BFL files whose head size is not 128 (tiny test models); for a
    diffusers folder it is optional and, when given, must agree with the folder's config.
    """
    path = Path(path)
    bfl_params = _read_bfl_params(config)
    if path.is_dir():
        files = TensorFiles.diffusers_folder(path)
        kwargs = _diffusers_config(path, FluxTransformer2DModel)
        if (
            bfl_params
            and "axes_dim" in bfl_params
            and tuple(bfl_params["axes_dim"]) != tuple(kwargs.get("axes_dims_rope", ()))
        ):
            raise WeightFileError(
                path / "config.json",
                f"axes_dims_rope {kwargs.get('axes_dims_rope')} disagrees with "
                f"the given config's axes_dim {bfl_params['axes_dim']}",
            )
        with torch.device("meta"):
            model = FluxTransformer2DModel.from_config(kwargs)
        plan = identity_plan(model.state_dict().keys())
    else:
        files = TensorFiles.single(path)
        prefix = _uniform_prefix(files.keys())
        kwargs = flux_transformer_kwargs_from_bfl(files, prefix, bfl_params)
        with torch.device("meta"):
            model = FluxTransformer2DModel(**kwargs)
        plan = bfl_transformer_plan(kwargs, prefix)
    return materialize(model, plan, files, dtype, device)


def load_flux_vae(
    path: Path,
    *,
    config: Mapping | Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> AutoencoderKL:
    """The FLUX VAE from BFL ae.safetensors or a diffusers folder.

    For a BFL file, `config` may override `norm_num_groups` (BFL always uses 32, which tiny
    VAEs with widths not divisible by 32 cannot), `scale_factor` and `shift_factor`.
    """
    path = Path(path)
    overrides = _read_json_or_mapping(config) if config is not None else {}
    overrides = overrides.get("vae_bfl_params", overrides)
    if path.is_dir():
        files = TensorFiles.diffusers_folder(path)
        with torch.device("meta"):
            model = AutoencoderKL.from_config(_diffusers_config(path, AutoencoderKL))
        plan = identity_plan(model.state_dict().keys())
    else:
        files = TensorFiles.single(path)
        kwargs = vae_kwargs_from_bfl(files, overrides)
        with torch.device("meta"):
            model = AutoencoderKL(**kwargs)
        plan = bfl_vae_plan(files, kwargs)
    return materialize(model, plan, files, dtype, device)


# ----------------------------------------------------------------------------- transformer


def flux_transformer_kwargs_from_bfl(
    files: TensorFiles, prefix: str = "", bfl_params: Mapping | None = None
) -> dict:
    """diffusers FluxTransformer2DModel kwargs inferred from a BFL file's tensor shapes."""
    keys = files.keys()

    def shape(name: str) -> tuple[int, ...]:
        if prefix + name not in keys:
            raise WeightFileError(
                files.label, "missing tensors (not a BFL FLUX transformer?)", [prefix + name]
            )
        return files.shape(prefix + name)

    hidden, in_channels = shape("img_in.weight")
    depth = _count_blocks(keys, prefix + "double_blocks.")
    depth_single = _count_blocks(keys, prefix + "single_blocks.")
    norm_key = (
        "double_blocks.0.img_attn.norm.query_norm.scale"
        if depth
        else "single_blocks.0.norm.query_norm.scale"
    )
    (head_dim,) = shape(norm_key)
    if hidden % head_dim:
        raise WeightFileError(
            files.label,
            f"hidden size {hidden} is not a multiple of the head size {head_dim}",
            [prefix + norm_key],
        )
    if depth:
        mlp_hidden = shape("double_blocks.0.img_mlp.0.weight")[0]
        if prefix + "double_blocks.0.img_attn.qkv.bias" not in keys:
            raise WeightFileError(
                files.label,
                "qkv without bias is not supported by diffusers' FLUX",
                [prefix + "double_blocks.0.img_attn.qkv.bias"],
            )
    else:
        mlp_hidden = shape("single_blocks.0.linear1.weight")[0] - 3 * hidden
    if mlp_hidden != 4 * hidden:
        raise WeightFileError(
            files.label,
            f"MLP ratio {mlp_hidden / hidden:g} is not supported (diffusers' FLUX hard-codes 4)",
        )
    out_channels = shape("final_layer.linear.weight")[0]
    axes_dim = _axes_dim(files.label, head_dim, bfl_params)
    if bfl_params:
        _check_bfl_params(
            files.label,
            bfl_params,
            {
                "hidden_size": hidden,
                "num_heads": hidden // head_dim,
                "depth": depth,
                "depth_single_blocks": depth_single,
                "in_channels": in_channels,
                "context_in_dim": shape("txt_in.weight")[1],
                "vec_in_dim": shape("vector_in.in_layer.weight")[1],
                "guidance_embed": prefix + "guidance_in.in_layer.weight" in keys,
                "theta": FLUX_DEV.theta,  # diffusers hard-codes it
                "mlp_ratio": 4.0,
                "qkv_bias": True,
            },
        )
    return {
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": None if out_channels == in_channels else out_channels,
        "num_layers": depth,
        "num_single_layers": depth_single,
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": shape("txt_in.weight")[1],
        "pooled_projection_dim": shape("vector_in.in_layer.weight")[1],
        "guidance_embeds": prefix + "guidance_in.in_layer.weight" in keys,
        "axes_dims_rope": tuple(axes_dim),
    }


def bfl_transformer_plan(kwargs: Mapping, prefix: str = "") -> dict[str, TensorSource]:
    """diffusers key -> BFL source, for any FLUX width and depth.

    Fused qkv weights are split by rows; single-block linear1 rows are [q | k | v | mlp];
    the final adaLN's (shift, scale) halves become diffusers' (scale, shift).
    """
    hidden = kwargs["attention_head_dim"] * kwargs["num_attention_heads"]
    plan: dict[str, TensorSource] = {}

    def linear(
        dst: str, src: str, rows: tuple[int, int] | None = None, transform=None, shape=None
    ) -> None:
        for suffix in ("weight", "bias"):
            plan[f"{dst}.{suffix}"] = TensorSource(
                f"{prefix}{src}.{suffix}", rows, transform, None if shape is None else shape[suffix]
            )

    def norm(dst: str, src: str) -> None:
        plan[f"{dst}.weight"] = TensorSource(f"{prefix}{src}.scale")

    qkv_rows = [(0, hidden), (hidden, 2 * hidden), (2 * hidden, 3 * hidden)]
    linear("x_embedder", "img_in")
    linear("context_embedder", "txt_in")
    embedders = [("timestep_embedder", "time_in"), ("text_embedder", "vector_in")]
    if kwargs["guidance_embeds"]:
        embedders.append(("guidance_embedder", "guidance_in"))
    for dst, src in embedders:
        linear(f"time_text_embed.{dst}.linear_1", f"{src}.in_layer")
        linear(f"time_text_embed.{dst}.linear_2", f"{src}.out_layer")
    for i in range(kwargs["num_layers"]):
        dst, src = f"transformer_blocks.{i}", f"double_blocks.{i}"
        linear(f"{dst}.norm1.linear", f"{src}.img_mod.lin")
        linear(f"{dst}.norm1_context.linear", f"{src}.txt_mod.lin")
        for name, rows in zip(("to_q", "to_k", "to_v"), qkv_rows, strict=True):
            linear(f"{dst}.attn.{name}", f"{src}.img_attn.qkv", rows)
        for name, rows in zip(("add_q_proj", "add_k_proj", "add_v_proj"), qkv_rows, strict=True):
            linear(f"{dst}.attn.{name}", f"{src}.txt_attn.qkv", rows)
        norm(f"{dst}.attn.norm_q", f"{src}.img_attn.norm.query_norm")
        norm(f"{dst}.attn.norm_k", f"{src}.img_attn.norm.key_norm")
        norm(f"{dst}.attn.norm_added_q", f"{src}.txt_attn.norm.query_norm")
        norm(f"{dst}.attn.norm_added_k", f"{src}.txt_attn.norm.key_norm")
        linear(f"{dst}.attn.to_out.0", f"{src}.img_attn.proj")
        linear(f"{dst}.attn.to_add_out", f"{src}.txt_attn.proj")
        linear(f"{dst}.ff.net.0.proj", f"{src}.img_mlp.0")
        linear(f"{dst}.ff.net.2", f"{src}.img_mlp.2")
        linear(f"{dst}.ff_context.net.0.proj", f"{src}.txt_mlp.0")
        linear(f"{dst}.ff_context.net.2", f"{src}.txt_mlp.2")
    for i in range(kwargs["num_single_layers"]):
        dst, src = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        linear(f"{dst}.norm.linear", f"{src}.modulation.lin")
        for name, rows in zip(("to_q", "to_k", "to_v"), qkv_rows, strict=True):
            linear(f"{dst}.attn.{name}", f"{src}.linear1", rows)
        linear(f"{dst}.proj_mlp", f"{src}.linear1", (3 * hidden, 7 * hidden))  # MLP ratio 4
        norm(f"{dst}.attn.norm_q", f"{src}.norm.query_norm")
        norm(f"{dst}.attn.norm_k", f"{src}.norm.key_norm")
        linear(f"{dst}.proj_out", f"{src}.linear2")
    linear("proj_out", "final_layer.linear")
    linear("norm_out.linear", "final_layer.adaLN_modulation.1", transform=_swap_halves)
    return plan


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    """BFL's final adaLN emits (shift, scale); diffusers' AdaLayerNormContinuous wants
    (scale, shift)."""
    shift, scale = tensor.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def _count_blocks(keys: set[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def _uniform_prefix(keys: set[str]) -> str:
    for prefix in _BFL_PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys):
            return prefix
    return ""


def _axes_dim(label: str, head_dim: int, bfl_params: Mapping | None) -> tuple[int, ...]:
    if bfl_params and "axes_dim" in bfl_params:
        axes = tuple(int(a) for a in bfl_params["axes_dim"])
    elif head_dim == sum(FLUX_DEV.axes_dim):
        axes = FLUX_DEV.axes_dim
    else:
        raise WeightFileError(
            label,
            f"head size {head_dim} needs the RoPE axes_dim, which a "
            "checkpoint cannot tell: pass a BFL FluxParams config "
            "(flux_config.json)",
        )
    if sum(axes) != head_dim or any(a % 2 for a in axes):
        raise WeightFileError(
            label, f"axes_dim {list(axes)} must be even and sum to the head size {head_dim}"
        )
    return axes


def _check_bfl_params(label: str, given: Mapping, inferred: Mapping) -> None:
    """A given FluxParams value that contradicts the file is an error, not a silent override."""
    wrong = [
        f"{k}={given[k]!r} (file says {v!r})"
        for k, v in inferred.items()
        if k in given and given[k] is not None and given[k] != v
    ]
    if wrong:
        raise WeightFileError(label, "config disagrees with the checkpoint's shapes", wrong)


def _read_json_or_mapping(config: Mapping | Path | str) -> dict:
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise WeightFileError(path, f"cannot read the config json ({err})") from err
    if not isinstance(data, dict):
        raise WeightFileError(path, "config json is not an object")
    return data


def _read_bfl_params(config: Mapping | Path | None) -> dict | None:
    """A BFL FluxParams dict, also when wrapped as {"flux_bfl_params": {...}}."""
    if config is None:
        return None
    data = _read_json_or_mapping(config)
    return dict(data.get("flux_bfl_params", data))


def _diffusers_config(folder: Path, cls) -> dict:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise WeightFileError(folder, "diffusers folder without config.json")
    try:
        return dict(cls.load_config(str(folder)))
    except (OSError, ValueError) as err:
        raise WeightFileError(config_path, f"unreadable diffusers config ({err})") from err


# ----------------------------------------------------------------------------- VAE


def vae_kwargs_from_bfl(files: TensorFiles, overrides: Mapping | None = None) -> dict:
    """diffusers AutoencoderKL kwargs inferred from a BFL/LDM VAE file's shapes."""
    keys = files.keys()
    overrides = dict(overrides or {})

    def shape(name: str) -> tuple[int, ...]:
        if name not in keys:
            raise WeightFileError(files.label, "missing tensors (not a BFL VAE?)", [name])
        return files.shape(name)

    levels = _count_blocks(keys, "encoder.down.")
    if levels == 0:
        raise WeightFileError(files.label, "missing tensors (not a BFL VAE?)", ["encoder.down.0.*"])
    widths = [shape(f"encoder.down.{i}.block.0.conv2.weight")[0] for i in range(levels)]
    layers = _count_blocks(keys, "encoder.down.0.block.")
    groups = int(overrides.get("norm_num_groups", FLUX_AE.norm_num_groups))
    bad = [w for w in widths if w % groups]
    if bad:
        raise WeightFileError(
            files.label,
            f"channel widths {widths} are not divisible by "
            f"{groups} GroupNorm groups; pass norm_num_groups in the config",
        )
    return {
        "in_channels": shape("encoder.conv_in.weight")[1],
        "out_channels": shape("decoder.conv_out.weight")[0],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": widths,
        "layers_per_block": layers,
        "latent_channels": shape("encoder.conv_out.weight")[0] // 2,
        "norm_num_groups": groups,
        "scaling_factor": float(overrides.get("scale_factor", FLUX_AE.scale_factor)),
        "shift_factor": float(overrides.get("shift_factor", FLUX_AE.shift_factor)),
        "use_quant_conv": "quant_conv.weight" in keys,
        "use_post_quant_conv": "post_quant_conv.weight" in keys,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in keys,
    }


def bfl_vae_plan(files: TensorFiles, kwargs: Mapping) -> dict[str, TensorSource]:
    """Run diffusers' LDM VAE converter on shape-only meta tensors to learn, for every diffusers
    key, which file key feeds it and the (reshape-only) transform the converter applies."""
    originals = {key: torch.empty(files.shape(key), device="meta") for key in files}
    by_identity = {id(t): key for key, t in originals.items()}
    try:
        converted = convert_ldm_vae_checkpoint(dict(originals), dict(kwargs))
    except (KeyError, IndexError) as err:
        raise WeightFileError(files.label, "missing tensors (LDM VAE layout)", [str(err)]) from err
    for extra in ("quant_conv", "post_quant_conv"):  # the converter maps these only for SD VAEs
        for suffix in ("weight", "bias"):
            if f"{extra}.{suffix}" in originals:
                converted.setdefault(f"{extra}.{suffix}", originals[f"{extra}.{suffix}"])
    plan = {}
    for target, tensor in converted.items():
        base = tensor if tensor._base is None else tensor._base
        source_key = by_identity[id(base)]
        new_shape = tuple(tensor.shape)
        reshape = (
            None if new_shape == files.shape(source_key) else (lambda t, s=new_shape: t.reshape(s))
        )
        plan[target] = TensorSource(source_key, transform=reshape, shape=new_shape)
    return plan
