"""Optional float8 weight storage for FLUX blocks (ModelOptions.fp8): a memory saver, not a matmul
speed-up.

Each Linear inside the transformer blocks keeps its weight as float8_e4m3fn with one scale per
output row and is upcast to the activation dtype on every call; biases stay in the model dtype.
This halves the transformer's resident size (~23.8 -> ~12 GB for FLUX.1-dev).

Deviation, on purpose: the authors' fp8 mode casts every tensor raw (no scale) to e4m3fn, which
pushes FLUX's typical weight magnitudes (~1e-2) into e4m3's subnormal range and loses most of
their precision; a per-row scale keeps 3 mantissa bits for every weight. Numerics differ from
bf16 either way, so the option is off by default. LoRA branches stay in the model dtype, as in
the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
_FP8_MAX = torch.finfo(FP8_DTYPE).max


class Float8WeightLinear(nn.Module):
    """A Linear whose weight lives in float8 (row-scaled) and is upcast per forward."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.data.float()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / _FP8_MAX
        self.register_buffer("weight_fp8", (weight / scale).to(FP8_DTYPE))
        self.register_buffer("weight_scale", scale.to(linear.weight.dtype))
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight (what forward multiplies with)."""
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
