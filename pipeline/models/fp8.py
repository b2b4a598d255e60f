"""Optional float8 weights for FLUX blocks (ModelOptions.fp8): one storage scheme for both models,
recorded in provenance as `FP8_SCHEME`, with two kernels to multiply by it.

Storage: each Linear inside the transformer blocks keeps its weight as float8_e4m3fn with one
scale per output row (per output channel); biases stay in the model dtype. This halves the
transformer's resident size (~23.8 -> ~12 GB for FLUX.1-dev).

Kernels (`Float8WeightLinear.kernel`, chosen by `speed.SpeedSettings.fp8_matmul`):
- "scaled_mm" (default on GPUs with fp8 tensor cores, compute capability >= 8.9): the
  activations are quantised to e4m3 with one scale per token (row), and `torch._scaled_mm`
  multiplies the two float8 operands with both row scales applied in its epilogue, at fp8
  tensor-core speed (about twice bf16's on Hopper). The activation rounding is a second loss
  on top of the weights'.
- "dequantize" (everywhere else, the CPU included): the weight is upcast to the activation
  dtype and multiplied there; only the weights' rounding is lost, and it saves memory, not time.
The bound each keeps to bf16 is measured on the CPU (where `torch._scaled_mm` also runs) in
tests/models/test_fp8.py and written in benchmarks/README.md.

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

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_SCHEME = "e4m3fn-rowwise"  # provenance value of `fp8` when the option is on
FP8_KERNELS = ("scaled_mm", "dequantize")
_FP8_MAX = torch.finfo(FP8_DTYPE).max


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] -> (e4m3 values [M, K], float32 scales [M, 1]): each row's largest magnitude maps
    to e4m3's largest value. Runs on the device, no host synchronisation."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / _FP8_MAX
    return (x.float() / scale).to(FP8_DTYPE), scale


class Float8WeightLinear(nn.Linear):
    """A Linear whose weight lives in float8 (one scale per output row); `kernel` says how it
    multiplies (module docstring)."""

    weight_fp8: torch.Tensor
    weight_scale: torch.Tensor
    weight_scale_row: torch.Tensor

    def __init__(self, linear: nn.Linear, kernel: str = "dequantize"):
        nn.Module.__init__(self)  # nn.Linear.__init__ would allocate a full-precision weight
        if kernel not in FP8_KERNELS:
            raise ValueError(f"fp8 kernel must be one of {FP8_KERNELS}, got {kernel!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.kernel = kernel
        quantized, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight_fp8", quantized)
        self.register_buffer("weight_scale", scale.to(linear.weight.dtype))
        # _scaled_mm's per-column scale of the second operand: float32, [1, out]
        self.register_buffer("weight_scale_row", scale.reshape(1, -1), persistent=False)
        self.register_parameter("bias", linear.bias)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """The dequantised weight, in the compute dtype (what forward multiplies with)."""
        return self.weight_fp8.to(self.weight_scale.dtype) * self.weight_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "scaled_mm":
            return self._scaled_mm(x)
        return F.linear(x, self.weight.to(x.dtype), self.bias)

    def _scaled_mm(self, x: torch.Tensor) -> torch.Tensor:
        """x quantised per token, both row scales applied by the matmul's epilogue."""
        rows = x.reshape(-1, self.in_features)
        quantized, scale = quantize_rows(rows)
        out = torch._scaled_mm(
            quantized,
            self.weight_fp8.t(),  # column-major view of [out, in]: what the kernel expects
            scale_a=scale,
            scale_b=self.weight_scale_row.float(),  # float32 even after a module.to(bf16)
            out_dtype=x.dtype,
        )
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


def store_linears_in_fp8(module: nn.Module, kernel: str = "dequantize") -> int:
    """Replace every plain nn.Linear below `module` (in place); returns how many were replaced.

    Only exact `nn.Linear` instances are replaced, so wrappers such as LoRA branches keep their
    own low-rank weights in the model dtype while their base Linear is stored in fp8.
    """
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Float8WeightLinear(child, kernel))
                replaced += 1
    return replaced


def store_blocks_in_fp8(transformer: nn.Module, kernel: str = "dequantize") -> int:
    """fp8 storage for the Linears of a FLUX transformer's double and single blocks (~all of its
    weights); embedders, final layer and norms stay in the model dtype."""
    blocks: list[nn.Module] = [
        transformer.get_submodule("transformer_blocks"),
        transformer.get_submodule("single_transformer_blocks"),
    ]
    return sum(store_linears_in_fp8(stack, kernel) for stack in blocks)
