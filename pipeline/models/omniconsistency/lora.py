"""The OmniConsistency consistency LoRA: condition-branch q/k/v (and proj) LoRAs for every block.

It is not a PEFT adapter: the authors keep it inside custom attention processors, and it only
ever touches the condition tokens in the warm-up pass. Here it is a plain `nn.Module` held next
to the transformer (the transformer's own state dict stays stock FLUX), read by the attention
processors in `omni_attention` through the per-generation context.

On-disk format (EasyControl's save format, the released `OmniConsistency.safetensors`):

    transformer_blocks.{i}.attn.processor.{q,k,v,proj}_loras.0.{down,up}.weight
    single_transformer_blocks.{i}.attn.processor.{q,k,v}_loras.0.{down,up}.weight

down is [r, inner_dim], up is [inner_dim, r], no alpha keys (the reference sets alpha := rank,
a factor of 1). The LoRA math runs in the file's dtype, as in the reference: the input is cast
to it and the result cast back.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from pipeline.errors import WeightFileError

DOUBLE_PROJECTIONS = ("q", "k", "v", "proj")  # proj_loras: loaded, applied only on request
SINGLE_PROJECTIONS = ("q", "k", "v")
_KEY = re.compile(
    r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.attn\.processor\."
    r"(q|k|v|proj)_loras\.(\d+)\.(down|up)\.weight$"
)


class LoraPair(nn.Module):
    """up(down(x)) with no bias and factor 1; computed in the weights' dtype."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor):
        super().__init__()
        self.down = nn.Parameter(down, requires_grad=False)
        self.up = nn.Parameter(up, requires_grad=False)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = nn.functional.linear(x.to(self.down.dtype), self.down)
        return nn.functional.linear(hidden, self.up).to(x.dtype)


class ConsistencyLoraBlock(nn.Module):
    """The LoRA pairs of one transformer block: q, k, v (+ proj for double-stream blocks)."""

    def __init__(self, pairs: dict[str, LoraPair]):
        super().__init__()
        for name, pair in pairs.items():
            self.add_module(name, pair)

    def pair(self, projection: str) -> LoraPair:
        return getattr(self, projection)


class ConsistencyLora(nn.Module):
    """All consistency LoRA pairs, indexed like the transformer's blocks."""

    def __init__(
        self, double_blocks: list[ConsistencyLoraBlock], single_blocks: list[ConsistencyLoraBlock]
    ):
        super().__init__()
        self.double_blocks = nn.ModuleList(double_blocks)
        self.single_blocks = nn.ModuleList(single_blocks)

    # nn.ModuleList indexes and iterates as plain `Module`; both lists only ever hold the
    # ConsistencyLoraBlocks given to __init__, so these accessors cast to that type.
    def double_block(self, index: int) -> ConsistencyLoraBlock:
        return cast(ConsistencyLoraBlock, self.double_blocks[index])

    def single_block(self, index: int) -> ConsistencyLoraBlock:
        return cast(ConsistencyLoraBlock, self.single_blocks[index])

    @property
    def rank(self) -> int:
        return (
            self.double_block(0).pair("q").rank
            if len(self.double_blocks)
            else self.single_block(0).pair("q").rank
        )

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @staticmethod
    def expected_keys(n_double: int, n_single: int) -> list[str]:
        keys = []
        for i in range(n_double):
            for p in DOUBLE_PROJECTIONS:
                keys += [
                    f"transformer_blocks.{i}.attn.processor.{p}_loras.0.{part}.weight"
                    for part in ("down", "up")
                ]
        for i in range(n_single):
            for p in SINGLE_PROJECTIONS:
                keys += [
                    f"single_transformer_blocks.{i}.attn.processor.{p}_loras.0.{part}.weight"
                    for part in ("down", "up")
                ]
        return keys

    @classmethod
    def from_state_dict(
        cls,
        tensors: dict[str, torch.Tensor],
        *,
        inner_dim: int,
        n_double: int,
        n_single: int,
        source: Path | str = "<state dict>",
    ) -> ConsistencyLora:
        """Build from official key names; every key must be there with consistent shapes."""
        expected = cls.expected_keys(n_double, n_single)
        missing = [k for k in expected if k not in tensors]
        unexpected = sorted(set(tensors) - set(expected))
        if unexpected:
            multi = [k for k in unexpected if (m := _KEY.match(k)) and m.group(4) != "0"]
            problem = (
                "has LoRAs for more than one condition (only one is supported)"
                if multi
                else "unexpected keys (not an OmniConsistency LoRA for this transformer?)"
            )
            raise WeightFileError(source, problem, unexpected)
        if missing:
            raise WeightFileError(source, "missing keys", missing)

        def pair(prefix: str) -> LoraPair:
            down, up = tensors[f"{prefix}.down.weight"], tensors[f"{prefix}.up.weight"]
            rank = down.shape[0]
            if (
                down.ndim != 2
                or up.ndim != 2
                or down.shape[1] != inner_dim
                or up.shape != (inner_dim, rank)
            ):
                raise WeightFileError(
                    source,
                    f"mis-shaped LoRA pair (down {tuple(down.shape)}, up "
                    f"{tuple(up.shape)}; expected [r, {inner_dim}] and [{inner_dim}, r])",
                    [f"{prefix}.down.weight", f"{prefix}.up.weight"],
                )
            return LoraPair(down, up)

        double = [
            ConsistencyLoraBlock(
                {
                    p: pair(f"transformer_blocks.{i}.attn.processor.{p}_loras.0")
                    for p in DOUBLE_PROJECTIONS
                }
            )
            for i in range(n_double)
        ]
        single = [
            ConsistencyLoraBlock(
                {
                    p: pair(f"single_transformer_blocks.{i}.attn.processor.{p}_loras.0")
                    for p in SINGLE_PROJECTIONS
                }
            )
            for i in range(n_single)
        ]
        return cls(double, single)

    @classmethod
    def from_file(
        cls,
        path: Path,
        *,
        inner_dim: int,
        n_double: int,
        n_single: int,
        device: torch.device | str = "cpu",
    ) -> ConsistencyLora:
        """Read `OmniConsistency.safetensors`; a bad file raises `WeightFileError` naming it."""
        path = Path(path)
        if not path.is_file():
            raise WeightFileError(path, "file not found")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as handle:
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightFileError(path, f"not a readable safetensors file ({exc})") from exc
        return cls.from_state_dict(
            tensors, inner_dim=inner_dim, n_double=n_double, n_single=n_single, source=path
        )

    @classmethod
    def random(
        cls,
        *,
        inner_dim: int,
        n_double: int,
        n_single: int,
        rank: int,
        std: float = 0.02,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> ConsistencyLora:
        """Random down AND up weights (a zero `up`, the training init, would hide bugs)."""
        generator = torch.Generator(device=device).manual_seed(seed)
        tensors = {}
        for key in cls.expected_keys(n_double, n_single):
            shape = (rank, inner_dim) if ".down." in key else (inner_dim, rank)
            tensors[key] = (torch.randn(shape, generator=generator, device=device) * std).to(dtype)
        return cls.from_state_dict(
            tensors, inner_dim=inner_dim, n_double=n_double, n_single=n_single, source="<random>"
        )

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors under the authors' key names (inverse of `from_state_dict`)."""
        out = {}
        for i in range(len(self.double_blocks)):
            block = self.double_block(i)
            for p in DOUBLE_PROJECTIONS:
                out[f"transformer_blocks.{i}.attn.processor.{p}_loras.0.down.weight"] = block.pair(
                    p
                ).down.data
                out[f"transformer_blocks.{i}.attn.processor.{p}_loras.0.up.weight"] = block.pair(
                    p
                ).up.data
        for i in range(len(self.single_blocks)):
            block = self.single_block(i)
            for p in SINGLE_PROJECTIONS:
                out[f"single_transformer_blocks.{i}.attn.processor.{p}_loras.0.down.weight"] = (
                    block.pair(p).down.data
                )
                out[f"single_transformer_blocks.{i}.attn.processor.{p}_loras.0.up.weight"] = (
                    block.pair(p).up.data
                )
        return out

    def save(self, path: Path) -> None:
        save_file(
            {k: v.contiguous().cpu() for k, v in self.official_state_dict().items()}, str(path)
        )
