"""Optional float8 weight storage for FLUX blocks (ModelOptions.fp8): a memory saver, not a matmul
speed-up. One scheme for both models, recorded in provenance as `FP8_SCHEME`.

Each Linear inside the transformer blocks keeps its weight as float8_e4m3fn with one scale per
output row and is upcast to the activation dtype on every call; biases stay in the model dtype.
This halves the transformer's resident size (~23.8 -> ~12 GB for FLUX.1-dev).

Deviation, on purpose: the authors' fp8 mode casts every tensor raw (no scale) to e4m3fn, and
diffusers' layerwise casting does the same. That pushes FLUX's typical weight magnitudes (~1e-2)
into e4m3's subnormal range and loses most of their precision; a per-row scale maps each row's
largest weight to e4m3's largest value, so every weight keeps 3 mantissa bits. Numerics differ
from bf16 either way, so the option is off by default.

Why an `nn.Linear` subclass with a `weight` property (the dequantised weight in the compute
dtype) rather than a plain module or a parametrization: code that wraps or inspects Linears keeps
working unchanged. PEFT mounts OmniConsistency's community style LoRAs on these layers like on
any Linear, and creates each adapter in `base_layer.weight.dtype`, i.e. the compute dtype, never
in float8; USO's LoRA branch wraps them the same way. LoRA weights are never quantised. What
cannot work is writing into `weight` (merging a LoRA into it): the property returns a fresh
tensor, so both models refuse fp8 together with fuse_lora (`runtime.check_options`).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_SCHEME = "e4m3fn-rowwise"  # provenance value of `fp8` when the option is on
_FP8_MAX = torch.finfo(FP8_DTYPE).max


class Float8WeightLinear(nn.Linear):
    """A Linear whose weight lives in float8 (one scale per output row), upcast per forward."""

    # Buffers registered in __init__; declared here so they type as tensors, not `Tensor | Module`.
    weight_fp8: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)  # nn.Linear.__init__ would allocate a full-precision weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / _FP8_MAX
        self.register_buffer("weight_fp8", (weight / scale).to(FP8_DTYPE))
        self.register_buffer("weight_scale", scale.to(linear.weight.dtype))
        self.register_parameter("bias", linear.bias)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """The dequantised weight, in the compute dtype (what forward multiplies with)."""
        return self.weight_fp8.to(self.weight_scale.dtype) * self.weight_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), self.bias)


def store_linears_in_fp8(module: nn.Module) -> int:
    """Replace every plain nn.Linear below `module` (in place); returns how many were replaced.

    Only exact `nn.Linear` instances are replaced, so wrappers such as LoRA branches keep their
    own low-rank weights in the model dtype while their base Linear is stored in fp8.
    """
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Float8WeightLinear(child))
                replaced += 1
    return replaced


def store_blocks_in_fp8(transformer: nn.Module) -> int:
    """fp8 storage for the Linears of a FLUX transformer's double and single blocks (~all of its
    weights); embedders, final layer and norms stay in the model dtype."""
    # Both block lists are nn.ModuleLists on every FLUX transformer (diffusers' and USO's);
    # nn.Module.__getattr__ only promises `Tensor | Module`.
    double_blocks = cast(nn.ModuleList, transformer.transformer_blocks)
    single_blocks = cast(nn.ModuleList, transformer.single_transformer_blocks)
    return sum(store_linears_in_fp8(blocks) for blocks in (double_blocks, single_blocks))
