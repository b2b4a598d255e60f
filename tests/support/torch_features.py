"""What the installed torch can do on a CPU, for tests that need more than the oldest supported
torch offers there (the lent GPU machine has torch 2.11; CI has 2.13)."""

from __future__ import annotations

import functools

import pytest
import torch


@functools.cache
def cpu_scaled_mm_takes_row_scales() -> bool:
    """True when `torch._scaled_mm` on a CPU takes one scale per row and per column (torch
    2.13 does; 2.11's CPU kernel takes per-tensor scales only, while its CUDA one takes rows)."""
    a = torch.ones(16, 16).to(torch.float8_e4m3fn)
    try:
        torch._scaled_mm(
            a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.float32
        )
    except RuntimeError:
        return False
    return True


# The fp8 path's scaled_mm kernel on a CPU, as a parameter that skips where this torch lacks it.
SCALED_MM_ON_CPU = pytest.param(
    "scaled_mm",
    marks=pytest.mark.skipif(
        not cpu_scaled_mm_takes_row_scales(),
        reason=f"torch {torch.__version__}'s CPU _scaled_mm takes per-tensor scales only",
    ),
)
