"""What the machine is and what it can do, measured in the same run as the models.

- `environment`: the device, its memory and capability, the library versions in use.
- `matmul_peak`: the bf16 dense matmul rate (8192^3 on a GPU), the denominator of every
  "fraction of peak" in the report, so figures compare across H100s, H200s and clocks.
- `attention_kernels`: each SDPA kernel PyTorch has here (cuDNN, flash, memory-efficient, math),
  timed on FLUX's attention shape, with its distance to an fp32 reference; the fastest one
  within bf16 rounding is the one `pipeline.models.speed` should put first on this GPU.
"""

from __future__ import annotations

import importlib.metadata
import platform
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

from pipeline.models.speed import HOPPER_SDPA_BACKEND, SDPA_KERNELS, SpeedSettings

VERSIONED = ("torch", "transformers", "diffusers", "peft", "accelerate", "safetensors")
EXACT_TOLERANCE = 2e-2  # max |diff| to an fp32 reference that bf16 rounding alone explains


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device) -> dict:
    info: dict = {"device": str(device), "python": platform.python_version()}
    for name in VERSIONED:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=props.name,
            capability=".".join(map(str, torch.cuda.get_device_capability(device))),
            memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    else:
        info.update(device_name=f"CPU ({platform.processor() or platform.machine()})")
    settings = SpeedSettings()
    info["sdpa_backend_default"] = settings.resolved_sdpa_backend(device)
    info["fp8_matmul_default"] = settings.resolved_fp8_matmul(device)
    return info


def matmul_peak(device: torch.device, side: int, repeats: int, dtype: torch.dtype) -> float:
    """FLOP/s of a side^3 product in `dtype` (the models' compute dtype: bf16 on a GPU, fp32 on
    a CPU, whose bf16 matmul is slower than its fp32 one), best of `repeats` timed calls after a
    warm-up."""
    a = torch.randn(side, side, device=device, dtype=dtype)
    b = torch.randn(side, side, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * side**3 / best


def attention_kernels(
    device: torch.device, heads: int, tokens: int, head_dim: int, repeats: int
) -> list[dict]:
    """Each SDPA kernel on [1, heads, tokens, head_dim] bf16 (FLUX: 24 x 4608 x 128 at 1024^2)."""
    shape = (1, heads, tokens, head_dim)
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (
        torch.randn(shape, device=device, dtype=torch.bfloat16, generator=gen) for _ in "qkv"
    )
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    flops = 4 * heads * tokens * tokens * head_dim
    rows = []
    for name, backend in SDPA_KERNELS.items():
        row: dict = {"backend": name}
        try:
            with sdpa_kernel(backend):
                out = F.scaled_dot_product_attention(q, k, v)
                sync(device)
                start = time.perf_counter()
                for _ in range(repeats):
                    F.scaled_dot_product_attention(q, k, v)
                sync(device)
            seconds = (time.perf_counter() - start) / repeats
            diff = float((out.float() - reference).abs().max())
            row.update(
                ms=round(seconds * 1e3, 4),
                tflops=round(flops / seconds / 1e12, 2),
                max_abs_diff=round(diff, 5),
                exact=diff <= EXACT_TOLERANCE,
            )
        except RuntimeError as error:  # "No available kernel" for this device or shape
            row.update(status=f"unavailable: {str(error).splitlines()[0][:120]}")
        rows.append(row)
    timed = [r for r in rows if r.get("exact")]
    fastest = min(timed, key=lambda r: r["ms"])["backend"] if timed else None
    for row in rows:
        row["fastest_exact"] = row["backend"] == fastest
        row["hopper_default"] = row["backend"] == HOPPER_SDPA_BACKEND
    return rows
