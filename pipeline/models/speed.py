"""The speed switches both models share (`ModelOptions.extra`), parsed once by `Runtime`.

None of them changes what is computed, only which kernels compute it (fp8's kernel adds the
rounding of its activations, see `fp8`); each defaults to what is fastest where it runs:

- "sdpa_backend": which PyTorch scaled-dot-product-attention kernel runs the transformer's
  attention. "auto" (default) puts `HOPPER_SDPA_BACKEND` first on Hopper GPUs and leaves
  PyTorch's own order everywhere else (the CPU included: numerics there never change);
  "default" is PyTorch's own order everywhere; "cudnn", "flash", "efficient" or "math" put
  that kernel first. The other kernels stay behind it as fallbacks, so shapes or masks a kernel
  does not support (OmniConsistency's masked warm-up pass) still run. All of them are exact
  attention; they differ in rounding only. `benchmarks/gpu_check.py --only attention` times
  them on the machine at hand.
- "fp8_matmul" (with `ModelOptions.fp8`): "auto" (default) multiplies in float8 with
  `torch._scaled_mm` where the GPU has fp8 tensor cores (compute capability >= 8.9: Ada,
  Hopper, Blackwell) and dequantises the weight for a matmul in the compute dtype elsewhere;
  "scaled_mm" or "dequantize" force one kernel (see `fp8`).
- "compile_mode" / "compile_backend" (with `ModelOptions.compile`): passed to torch.compile
  (`compilation.CompileSettings`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from pipeline.models.compilation import CompileSettings

SPEED_KEYS = ("sdpa_backend", "fp8_matmul", "compile_mode", "compile_backend")
SDPA_KERNELS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
SDPA_BACKENDS = ("auto", "default", *SDPA_KERNELS)
# The fastest exact kernel for FLUX's attention (head dim 128, bf16, 4.6k-5.8k tokens) on H100
# and H200, per diffusers' and PyTorch's published attention benchmarks; the device check
# (`--only attention`) measures it again on every lent machine and says if another one wins.
HOPPER_SDPA_BACKEND = "cudnn"
FP8_MATMULS = ("auto", "scaled_mm", "dequantize")
# Fallback order behind the chosen kernel (PyTorch's own priority, cuDNN last).
_FALLBACK_ORDER = ("flash", "efficient", "math", "cudnn")


def is_hopper(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9


def has_fp8_tensor_cores(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


@dataclass(frozen=True)
class SpeedSettings:
    """The shared speed switches, with their defaults (module docstring)."""

    sdpa_backend: str = "auto"
    fp8_matmul: str = "auto"
    compile_mode: str | None = None
    compile_backend: str = "inductor"

    @classmethod
    def from_extra(cls, extra: Mapping) -> SpeedSettings:
        """The shared keys of `extra` (others are the model's own); a bad value is a
        ValueError naming the key."""
        settings = cls(**{key: extra[key] for key in SPEED_KEYS if key in extra})
        if settings.sdpa_backend not in SDPA_BACKENDS:
            raise ValueError(
                f"extra['sdpa_backend'] must be one of {SDPA_BACKENDS}, got {settings.sdpa_backend!r}"
            )
        if settings.fp8_matmul not in FP8_MATMULS:
            raise ValueError(
                f"extra['fp8_matmul'] must be one of {FP8_MATMULS}, got {settings.fp8_matmul!r}"
            )
        settings.compile_settings()  # validates mode and backend
        return settings

    def compile_settings(self) -> CompileSettings:
        return CompileSettings(mode=self.compile_mode, backend=self.compile_backend)

    def resolved_sdpa_backend(self, device: torch.device) -> str:
        """ "default" or the kernel put first on `device`."""
        if self.sdpa_backend == "auto":
            return HOPPER_SDPA_BACKEND if is_hopper(device) else "default"
        return self.sdpa_backend

    def resolved_fp8_matmul(self, device: torch.device) -> str:
        if self.fp8_matmul == "auto":
            return "scaled_mm" if has_fp8_tensor_cores(device) else "dequantize"
        return self.fp8_matmul


@contextlib.contextmanager
def sdpa_preference(backend: str) -> Iterator[None]:
    """SDPA calls inside the block try `backend` first ("default": PyTorch's own order)."""
    if backend == "default":
        yield
        return
    order = [backend, *(name for name in _FALLBACK_ORDER if name != backend)]
    with sdpa_kernel([SDPA_KERNELS[name] for name in order], set_priority=True):
        yield
