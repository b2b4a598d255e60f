"""USO's rank-128 DiT LoRA (XLabs key format) on diffusers' FLUX transformer, unmerged by default.

The authors run the LoRA as a parallel branch, y = W x + b + up(down(x)), on four projections of
each double block and two of each single block (reference uso.md section 5):

    double_blocks.{i}.processor.qkv_lora1   -> img stream qkv  (diffusers attn.to_qkv, fused)
    double_blocks.{i}.processor.proj_lora1  -> img attn out    (attn.to_out.0)
    double_blocks.{i}.processor.qkv_lora2   -> txt stream qkv  (attn.to_added_qkv, fused)
    double_blocks.{i}.processor.proj_lora2  -> txt attn out    (attn.to_add_out)
    single_blocks.{i}.processor.qkv_lora    -> qkv rows of linear1 only (attn.to_qkv, fused)
    single_blocks.{i}.processor.proj_lora   -> linear2 on cat(attn, gelu(mlp)) (proj_out)

Why our own wrapper instead of PEFT: the qkv LoRA shares one `down` across q, k and v; on
diffusers' split to_q/to_k/to_v PEFT must run that down projection three times. We fuse each
attention's q/k/v into one Linear (as BFL's checkpoint is laid out) and wrap it once, which is
exact and cheaper, and frees the unfused copies. `merge=True` folds up@down into the base
weights instead (ModelOptions.fuse_lora): faster, but in bf16 it changes rounding slightly.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import FluxTransformer2DModel
from diffusers.models.transformers.transformer_flux import FluxAttention
from torch import nn

from pipeline.errors import WeightFileError
from pipeline.models.flux.tensor_files import TensorFiles, TensorSource

_DOUBLE_TARGETS = {
    "qkv_lora1": "attn.to_qkv",
    "proj_lora1": "attn.to_out.0",
    "qkv_lora2": "attn.to_added_qkv",
    "proj_lora2": "attn.to_add_out",
}
_SINGLE_TARGETS = {"qkv_lora": "attn.to_qkv", "proj_lora": "proj_out"}


class LoRAParallelLinear(nn.Module):
    """A Linear plus an unmerged low-rank branch, as USO's LoRALinearLayer computes it: the
    branch runs in its own weight dtype and its result is cast back and added to the base output.
    """

    def __init__(self, base: nn.Linear, down: torch.Tensor, up: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.base = base
        self.down = nn.Parameter(down, requires_grad=False)  # [rank, in]
        self.up = nn.Parameter(up, requires_grad=False)  # [out, rank]
        self.scale = scale

    @property
    def weight(self) -> torch.Tensor:  # lets code that inspects `.weight` (dtype, device) work
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        branch = F.linear(F.linear(x.to(self.down.dtype), self.down), self.up)
        if self.scale != 1.0:
            branch = branch * self.scale
        return out + branch.to(out.dtype)


def fuse_qkv(attn: FluxAttention) -> None:
    """Replace an attention's separate q/k/v (and added q/k/v) Linears by one fused Linear each,
    freeing the originals (diffusers' own `fuse_projections` keeps both copies)."""
    if getattr(attn, "fused_projections", False):
        return
    groups = [("to_qkv", ("to_q", "to_k", "to_v"))]
    if getattr(attn, "add_q_proj", None) is not None:
        groups.append(("to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj")))
    for fused_name, parts in groups:
        linears = [getattr(attn, p) for p in parts]
        weight = torch.cat([lin.weight.data for lin in linears])
        has_bias = linears[0].bias is not None
        fused = nn.Linear(
            weight.shape[1], weight.shape[0], bias=has_bias, device="meta", dtype=weight.dtype
        )
        fused.weight = nn.Parameter(weight, requires_grad=False)
        if has_bias:
            fused.bias = nn.Parameter(
                torch.cat([lin.bias.data for lin in linears]), requires_grad=False
            )
        for p in parts:
            delattr(attn, p)
        setattr(attn, fused_name, fused)
    attn.fused_projections = True


def lora_target_module_names(num_double: int, num_single: int) -> dict[str, str]:
    """Official LoRA prefix (e.g. 'double_blocks.3.processor.qkv_lora1') -> diffusers module path."""
    names = {}
    for i in range(num_double):
        for lora, target in _DOUBLE_TARGETS.items():
            names[f"double_blocks.{i}.processor.{lora}"] = f"transformer_blocks.{i}.{target}"
    for i in range(num_single):
        for lora, target in _SINGLE_TARGETS.items():
            names[f"single_blocks.{i}.processor.{lora}"] = f"single_transformer_blocks.{i}.{target}"
    return names


def uso_lora_shapes(
    transformer: FluxTransformer2DModel, rank: int
) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """Official LoRA prefix -> (down shape, up shape) for this transformer and rank."""
    cfg = transformer.config
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    shapes = {}
    for prefix in lora_target_module_names(cfg.num_layers, cfg.num_single_layers):
        fan_out = 3 * hidden if ".qkv_lora" in prefix else hidden
        # single-block linear2 reads cat(attention, 4x MLP), i.e. 15360 wide at full size
        fan_in = 5 * hidden if prefix.endswith("processor.proj_lora") else hidden
        shapes[prefix] = ((rank, fan_in), (fan_out, rank))
    return shapes


def read_uso_lora(
    path: Path, transformer: FluxTransformer2DModel, dtype: torch.dtype
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{official prefix: (down, up)} from dit_lora.safetensors, checked strictly: every block
    needs all its LoRA pairs, nothing else may be in the file, one rank, shapes that fit."""
    files = TensorFiles.single(Path(path))
    ranks = {files.shape(k)[0] for k in files if k.endswith(".down.weight")}
    problems = [f"mixed ranks {sorted(ranks)}"] if len(ranks) > 1 else []
    expected = {}
    for prefix, (down, up) in uso_lora_shapes(transformer, next(iter(ranks), 0)).items():
        expected[f"{prefix}.down.weight"], expected[f"{prefix}.up.weight"] = down, up
    present = files.keys()
    problems += [f"missing {k}" for k in sorted(set(expected) - present)]
    problems += [f"unexpected {k}" for k in sorted(present - set(expected))]
    problems += [
        f"mis-shaped {k} {list(files.shape(k))} (expected {list(s)})"
        for k, s in sorted(expected.items())
        if k in present and files.shape(k) != s
    ]
    if problems:
        raise WeightFileError(files.label, "not a USO dit_lora for this transformer", problems)
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for prefix in uso_lora_shapes(transformer, 0):
        down_weight, up_weight = (
            files.read(TensorSource(f"{prefix}.{part}.weight")).to(dtype) for part in ("down", "up")
        )
        pairs[prefix] = (down_weight, up_weight)
    files.close()
    return pairs


def attach_lora(
    transformer: FluxTransformer2DModel,
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    merge: bool = False,
    scale: float = 1.0,
) -> FluxTransformer2DModel:
    """Fuse every attention's q/k/v, then add each (down, up) pair, keyed by official prefix,
    to its projection: as a parallel branch, or merged into the weight when `merge`."""
    for module in transformer.modules():
        if hasattr(module, "to_q") and hasattr(module, "norm_q"):
            fuse_qkv(module)
    cfg = transformer.config
    targets = lora_target_module_names(cfg.num_layers, cfg.num_single_layers)
    for prefix, (down, up) in pairs.items():
        parent_path, _, name = targets[prefix].rpartition(".")
        parent = transformer.get_submodule(parent_path)
        base = parent[int(name)] if name.isdigit() else getattr(parent, name)
        down, up = down.to(base.weight.device), up.to(base.weight.device)
        if merge:
            delta = (up.float() @ down.float()) * scale
            base.weight.data = (base.weight.data.float() + delta).to(base.weight.dtype)
            continue
        wrapped = LoRAParallelLinear(base, down, up, scale)
        if name.isdigit():
            parent[int(name)] = wrapped
        else:
            setattr(parent, name, wrapped)
    return transformer


def apply_uso_lora(
    transformer: FluxTransformer2DModel,
    path: Path,
    *,
    dtype: torch.dtype,
    merge: bool = False,
    scale: float = 1.0,
) -> FluxTransformer2DModel:
    """Read USO's dit_lora.safetensors and attach it (in place); see `attach_lora`.

    `merge=False` (default, the reference's behaviour) keeps the branch separate;
    `merge=True` adds scale*up@down to the base weights (computed in fp32, then cast).
    """
    return attach_lora(
        transformer, read_uso_lora(path, transformer, dtype), merge=merge, scale=scale
    )
