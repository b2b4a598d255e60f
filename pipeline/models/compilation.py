"""Regional compilation of a FLUX transformer, the same way for both models (ModelOptions.compile).

Only the repeated blocks are compiled (19 double + 38 single in FLUX.1-dev, two block classes),
so dynamo traces two graphs per phase instead of the whole 57-block model: warm-up takes seconds
per graph rather than minutes, and the graphs are reused by every block of a kind. This is
diffusers' `compile_repeated_blocks` with one difference: the block's `forward` is compiled,
not its `__call__`, so forward pre-hooks run eagerly. OmniConsistency relies on that: its
pre-hook hands each block its own cache slot (`omniconsistency.attention`), which inside the
compiled code would be a per-block constant and force one graph per block.

Shapes are static (`dynamic=False`): one layout (size, condition size, batch) is one set of
graphs, which also keeps CUDA graphs possible (`mode="reduce-overhead"`). A style LoRA swap must
not recompile; `flux.style_lora.StyleLoraSlot` keeps the module structure and the LoRA's shapes
fixed for that when the model is compiled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch._dynamo
from torch import nn

REPEATED_BLOCKS = ("transformer_blocks", "single_transformer_blocks")
# Graphs dynamo may keep per block kind: one per phase (OmniConsistency: warm-up, steps, plain
# FLUX) x batch size x LoRA structure (none / mounted) a run meets; dynamo's default of 8 would
# fail a compiled run (fullgraph) that sees two batch sizes of both phases with a style LoRA.
RECOMPILE_LIMIT = 32
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")  # the last two: tests and debugging only


@dataclass(frozen=True)
class CompileSettings:
    """How `compile_repeated_blocks` calls torch.compile (`ModelOptions.extra` keys
    "compile_mode" and "compile_backend")."""

    mode: str | None = None  # None: inductor's default; "max-autotune-no-cudagraphs", ...
    backend: str = "inductor"

    def __post_init__(self) -> None:
        if self.backend not in COMPILE_BACKENDS:
            raise ValueError(
                f"compile_backend must be one of {COMPILE_BACKENDS}, got {self.backend!r}"
            )
        if self.mode is not None and not isinstance(self.mode, str):
            raise ValueError(f"compile_mode must be a string, got {self.mode!r}")


def repeated_blocks(transformer: nn.Module) -> list[nn.Module]:
    """The double- then single-stream blocks of a diffusers FLUX transformer."""
    return [block for name in REPEATED_BLOCKS for block in getattr(transformer, name)]


def _row_major_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _dense(value):
    """`value` with row-major strides (a copy only when they differ, even in size-1 dims, which
    `Tensor.contiguous()` ignores but dynamo's guards do not)."""
    if isinstance(value, torch.Tensor) and value.stride() != _row_major_strides(value.shape):
        return value.clone(memory_format=torch.contiguous_format)
    return value


def _dense_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: tensor inputs with row-major strides. diffusers hands each single-stream
    block the previous one's output as two strided views (text rows, image rows), but the first
    one a dense tensor; dynamo guards on strides, so without this the single blocks would need
    two graphs per phase. The copy is eager and costs a few microseconds per block."""
    return tuple(_dense(a) for a in args), {k: _dense(v) for k, v in kwargs.items()}


def compile_repeated_blocks(transformer: nn.Module, settings: CompileSettings) -> int:
    """Compile the forward of every repeated block (in place, idempotent); returns how many.

    `fullgraph=True`: a graph break inside a block is a bug to fix, not a silent slowdown."""
    mode = settings.mode if settings.backend == "inductor" else None
    dynamo_config = torch._dynamo.config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    blocks = repeated_blocks(transformer)
    for block in blocks:
        if not getattr(block, "_restyle_compiled", False):
            block.register_forward_pre_hook(_dense_inputs, with_kwargs=True)
            compiled = torch.compile(
                block.forward, fullgraph=True, dynamic=False, backend=settings.backend, mode=mode
            )
            object.__setattr__(block, "forward", compiled)
            object.__setattr__(block, "_restyle_compiled", True)
    return len(blocks)


def is_compiled(transformer: nn.Module) -> bool:
    return any(getattr(block, "_restyle_compiled", False) for block in repeated_blocks(transformer))
