"""Community FLUX style LoRAs: read any common format, mount with PEFT, swap without residue.

Formats (detected and converted at ONE boundary, `read_style_lora`, by diffusers' own
`FluxLoraLoaderMixin.lora_state_dict`, the same path the authors' `load_lora_weights` takes):
kohya / sd-scripts (Civitai, LibLib: `lora_unet_*.lora_down/lora_up/alpha`), diffusers/PEFT
(`transformer.*.lora_A/lora_B`), XLabs (`*.processor.qkv_lora1...`), BFL control and
ai-toolkit/fal variants where diffusers converts them.

One gap is filled here: diffusers' kohya converter hard-codes FLUX.1-dev's split of the fused
single-block `linear1` (q, k, v, mlp = 3072, 3072, 3072, 12288). For any other width (tiny test
models) those entries are split here with the transformer's own widths, with the same math
(shared down, alpha/rank folded in, up split by rows); the rest still goes through diffusers.

Text-encoder parts of a LoRA (`lora_te*`) are not applied: the prompt embeddings are computed
and cached by `FluxTextEncoders`, which stay LoRA-free. Their key count is reported.

`StyleLoraSlot` holds the one style LoRA mounted on a transformer. Consecutive items sharing
a LoRA load it once; a swap unloads the PEFT layers entirely (outputs then equal a never-loaded
model bit for bit). With `fuse=True` the deltas are merged into the base weights (faster
steps, different bf16 rounding) and the exact original weights, kept on the CPU, are copied
back on unload: fuse/unfuse arithmetic in bf16 is lossy, a copy is not.

On a compiled transformer (`models.compilation`) a swap must not change what dynamo guards on:
the module structure, the LoRA's shapes and its scale. With `hotswap_rank` set, the first LoRA is
mounted through diffusers' `enable_lora_hotswap` (PEFT pads every LoRA to that rank and turns each
scale into a tensor), and every later one is copied into the same parameters
(`load_lora_adapter(hotswap=True)`); "no LoRA" and a new scale are written into the scale tensors
in place (a zero scale adds exact zeros). A LoRA of higher rank, or one that targets a layer the
mounted one does not, is remounted instead (a recompile, logged and counted in `remounts`). The
price: while nothing is mounted after a LoRA, the zeroed branch still runs (rank-`hotswap_rank`
FLOPs).

Base Linears stored in fp8 (`pipeline.models.fp8`) are `nn.Linear` subclasses whose `weight` is
the dequantised weight: PEFT wraps them like any Linear and creates the adapters in that
(compute) dtype. Fusing into them is not possible (models refuse fp8 with fuse_lora).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import FluxTransformer2DModel
from diffusers.loaders import FluxLoraLoaderMixin
from safetensors import SafetensorError
from safetensors.torch import load_file

log = logging.getLogger(__name__)

ADAPTER_NAME = "style"
_FLUX_DEV_LINEAR1_SPLIT = (3072, 3072, 3072, 12288)


class StyleLoraError(ValueError):
    """A style LoRA file that cannot be read, converted or applied; the message names the file."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"style LoRA {path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class ConvertedStyleLora:
    """A style LoRA in diffusers/PEFT keys (no "transformer." prefix), ready for PEFT."""

    path: Path
    source_format: str  # "kohya", "xlabs", "diffusers", ...
    state_dict: dict[str, torch.Tensor]
    network_alphas: dict[str, torch.Tensor] | None = None  # keys keep the "transformer." prefix
    ignored_keys: list[str] = field(default_factory=list)  # e.g. text-encoder LoRA parts


def detect_format(keys: list[str]) -> str:
    """The same order of tests diffusers' FluxLoraLoaderMixin.lora_state_dict uses."""
    if any(".lora_down.weight" in k for k in keys):
        return "kohya"
    if any("processor" in k for k in keys):
        return "xlabs"
    if any("query_norm.scale" in k for k in keys):
        return "bfl_control"
    if any("base_model" in k for k in keys):
        return "fal_kontext"
    return "diffusers"


def _split_kohya_linear1(
    tensors: dict[str, torch.Tensor], transformer: FluxTransformer2DModel
) -> dict[str, torch.Tensor]:
    """Convert kohya `single_blocks_{i}_linear1` entries for widths diffusers does not hard-code.

    Returns diffusers-format entries and removes the consumed keys from `tensors`.
    """
    if not len(transformer.single_transformer_blocks):
        return {}
    block = transformer.single_transformer_blocks[0]
    split = (
        block.attn.to_q.out_features,
        block.attn.to_k.out_features,
        block.attn.to_v.out_features,
        block.proj_mlp.out_features,
    )
    if split == _FLUX_DEV_LINEAR1_SPLIT:
        return {}  # diffusers handles it
    out: dict[str, torch.Tensor] = {}
    for i in range(len(transformer.single_transformer_blocks)):
        name = f"lora_unet_single_blocks_{i}_linear1"
        if f"{name}.lora_down.weight" not in tensors:
            continue
        down = tensors.pop(f"{name}.lora_down.weight")
        up = tensors.pop(f"{name}.lora_up.weight")
        rank = down.shape[0]
        alpha = tensors.pop(f"{name}.alpha", None)
        scale_down, scale_up = (float(alpha) if alpha is not None else rank) / rank, 1.0
        while scale_down * 2 < scale_up:  # diffusers' balancing of alpha/rank between the factors
            scale_down, scale_up = scale_down * 2, scale_up / 2
        if up.shape[0] != sum(split):
            raise ValueError(
                f"{name}.lora_up.weight has {up.shape[0]} rows, the transformer's "
                f"fused q/k/v/mlp projection has {sum(split)}"
            )
        target = f"transformer.single_transformer_blocks.{i}"
        modules = (
            f"{target}.attn.to_q",
            f"{target}.attn.to_k",
            f"{target}.attn.to_v",
            f"{target}.proj_mlp",
        )
        for module, up_part in zip(modules, torch.split(up, list(split), dim=0), strict=True):
            out[f"{module}.lora_A.weight"] = down * scale_down
            out[f"{module}.lora_B.weight"] = up_part.contiguous() * scale_up
    return out


def read_style_lora(path: Path, transformer: FluxTransformer2DModel) -> ConvertedStyleLora:
    """Read and convert one LoRA file; raise `StyleLoraError` naming it if anything is wrong."""
    path = Path(path)
    if not path.is_file():
        raise StyleLoraError(path, "file not found")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise StyleLoraError(path, f"not a readable safetensors file ({exc})") from exc
    if not tensors:
        raise StyleLoraError(path, "the file holds no tensors")
    source_format = detect_format(list(tensors))
    try:
        extra = _split_kohya_linear1(tensors, transformer) if source_format == "kohya" else {}
        converted, alphas = FluxLoraLoaderMixin.lora_state_dict(tensors, return_alphas=True)
    except Exception as exc:  # diffusers raises ValueError/AssertionError/KeyError on odd files
        raise StyleLoraError(
            path, f"cannot convert this {source_format}-format LoRA ({type(exc).__name__}: {exc})"
        ) from exc
    converted = {**converted, **extra}
    prefix = "transformer."
    state_dict = {k[len(prefix) :]: v for k, v in converted.items() if k.startswith(prefix)}
    ignored = sorted(k for k in converted if not k.startswith(prefix))
    if not state_dict:
        raise StyleLoraError(
            path,
            f"no transformer LoRA weights found ({source_format} format; "
            f"{len(ignored)} other keys)",
        )
    _check_targets(path, state_dict, transformer)
    alphas = {k: v for k, v in (alphas or {}).items() if k.startswith(prefix)} or None
    return ConvertedStyleLora(path, source_format, state_dict, alphas, ignored)


def _check_targets(
    path: Path, state_dict: dict[str, torch.Tensor], transformer: FluxTransformer2DModel
) -> None:
    """Every LoRA pair must sit on a Linear of this transformer with matching widths."""
    modules = dict(transformer.named_modules())
    problems = []
    for key, tensor in state_dict.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        module_name = key.split(".lora_")[0]
        module = modules.get(module_name)
        if module is not None and hasattr(module, "get_base_layer"):  # a mounted hot-swap LoRA
            module = module.get_base_layer()
        if not isinstance(module, torch.nn.Linear):
            problems.append(f"{key} (no Linear {module_name!r} in the transformer)")
        elif ".lora_A." in key and tensor.ndim == 2 and tensor.shape[1] != module.in_features:
            problems.append(
                f"{key} has {tensor.shape[1]} inputs, {module_name} takes {module.in_features}"
            )
        elif ".lora_B." in key and tensor.ndim == 2 and tensor.shape[0] != module.out_features:
            problems.append(
                f"{key} has {tensor.shape[0]} outputs, {module_name} gives {module.out_features}"
            )
    if problems:
        more = f" ... (+{len(problems) - 10} more)" if len(problems) > 10 else ""
        shown = "; ".join(problems[:10]) + more
        raise StyleLoraError(path, f"does not fit this FLUX transformer: {shown}")


def _file_identity(path: Path) -> tuple[str, int, int]:
    stat = os.stat(path)
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns


def _max_rank(converted: ConvertedStyleLora) -> int:
    return max(
        (t.shape[0] for k, t in converted.state_dict.items() if ".lora_A." in k and t.ndim == 2),
        default=0,
    )


class StyleLoraSlot:
    """The (at most one) style LoRA mounted on a transformer; see the module docstring."""

    def __init__(
        self,
        transformer: FluxTransformer2DModel,
        *,
        fuse: bool = False,
        hotswap_rank: int | None = None,
    ):
        if fuse and hotswap_rank is not None:
            raise ValueError("a fused style LoRA leaves no LoRA layers to hot-swap")
        self.transformer = transformer
        self.fuse = fuse
        self.hotswap_rank = hotswap_rank
        self._identity: tuple | None = None
        self._scale: float | None = None
        self._originals: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._hot = False  # a hot-swappable (padded, tensor-scaled) adapter is mounted
        self._unit_scaling: dict[str, float] = {}  # module -> alpha/rank of the current LoRA
        self.loads = 0  # how many times a file was read and mounted (for tests and stats)
        self.remounts = 0  # hot-swaps that had to change the module structure instead
        self.current: ConvertedStyleLora | None = None

    @property
    def mounted(self) -> bool:
        return self._identity is not None

    def activate(self, path: Path | None, scale: float = 1.0) -> None:
        """Make `path` at `scale` the mounted LoRA (None: none). No-op if already so.

        On failure nothing stays mounted and `StyleLoraError` names the file.
        """
        if path is None:
            if self._hot:
                self._set_scale(0.0)
                self._identity, self._scale, self.current = None, None, None
            else:
                self.unload()
            return
        identity = _file_identity(path) if Path(path).is_file() else None
        if identity is not None and identity == self._identity:
            if scale == self._scale:
                return
            if self._hot:
                self._set_scale(float(scale))
                self._scale = scale
                return
            if not self.fuse:
                self.transformer.set_adapters([ADAPTER_NAME], weights=[float(scale)])
                self._scale = scale
                return
        if self._hot:
            self._set_scale(0.0)  # nothing active until the new LoRA is in
            self._identity, self._scale, self.current = None, None, None
        else:
            self.unload()
        converted = read_style_lora(Path(path), self.transformer)
        try:
            if not (self._hot and self._hotswap(converted)):
                self.unload()
                self._mount(converted)
            self._set_scale(float(scale))
        except Exception as exc:
            self.unload()
            raise StyleLoraError(path, f"cannot be applied ({type(exc).__name__}: {exc})") from exc
        self._identity, self._scale, self.current = identity, scale, converted
        self.loads += 1

    def _load(self, converted: ConvertedStyleLora, hotswap: bool) -> None:
        with torch.no_grad():
            self.transformer.load_lora_adapter(
                {f"transformer.{k}": v for k, v in converted.state_dict.items()},
                prefix="transformer",
                network_alphas=converted.network_alphas,
                adapter_name=ADAPTER_NAME,
                hotswap=hotswap,
            )

    def _hotswap(self, converted: ConvertedStyleLora) -> bool:
        """Copy `converted` into the mounted adapter's parameters; False when it cannot be (the
        caller remounts, which recompiles a compiled model)."""
        rank = _max_rank(converted)
        if self.hotswap_rank is not None and rank > self.hotswap_rank:
            reason = f"rank {rank} > the hot-swap rank {self.hotswap_rank}"
        else:
            try:
                self._load(converted, hotswap=True)
                self._remember_unit_scaling()
                return True
            except (RuntimeError, ValueError) as error:  # PEFT: new target layers, odd config
                reason = str(error).splitlines()[0][:200]
        log.warning("style LoRA %s is remounted, not hot-swapped: %s", converted.path.name, reason)
        self.remounts += 1
        return False

    def _mount(self, converted: ConvertedStyleLora) -> None:
        hot = self.hotswap_rank is not None and _max_rank(converted) <= self.hotswap_rank
        if hot:
            self.transformer.enable_lora_hotswap(
                target_rank=self.hotswap_rank, check_compiled="ignore"
            )
        self._identity = ("mounting",)  # so a failure below unloads the PEFT layers
        self._load(converted, hotswap=False)
        self._hot = hot
        if hot:
            self._remember_unit_scaling()

    def _lora_layers(self):
        from peft.tuners.lora import LoraLayer

        for name, module in self.transformer.named_modules():
            if isinstance(module, LoraLayer) and ADAPTER_NAME in module.scaling:
                yield name, module

    def _remember_unit_scaling(self) -> None:
        """alpha/rank of each layer for the LoRA just loaded (read once per swap, on the host)."""
        self._unit_scaling = {
            name: float(module.scaling[ADAPTER_NAME]) for name, module in self._lora_layers()
        }

    def _set_scale(self, scale: float) -> None:
        """The LoRA's strength: in place in the scale tensors when hot-swappable (no new guard
        values for a compiled model), else PEFT's own `set_adapters` (and the fuse, if asked)."""
        if not self._hot:
            if getattr(self.transformer, "peft_config", None):
                self.transformer.set_adapters([ADAPTER_NAME], weights=[scale])
                if self.fuse:
                    self._fuse()
            return
        with torch.no_grad():
            for name, module in self._lora_layers():
                module.scaling[ADAPTER_NAME].fill_(self._unit_scaling[name] * scale)

    def _fuse(self) -> None:
        """Merge into the base weights, drop the PEFT wrappers, keep exact originals on the CPU."""
        from peft.tuners.lora import LoraLayer

        pin = torch.cuda.is_available() and self.transformer.device.type == "cuda"
        for name, module in self.transformer.named_modules():
            if isinstance(module, LoraLayer):
                base = module.get_base_layer()
                weight = base.weight.detach().to("cpu", copy=True)
                bias = None if base.bias is None else base.bias.detach().to("cpu", copy=True)
                if pin:
                    weight = weight.pin_memory()
                    bias = None if bias is None else bias.pin_memory()
                self._originals[name] = (weight, bias)
        self.transformer.fuse_lora(lora_scale=1.0, adapter_names=[ADAPTER_NAME])
        self.transformer.unload_lora()  # keeps the merged weights, removes the wrappers

    def unload(self) -> None:
        """Remove the mounted LoRA; afterwards the transformer computes exactly as before."""
        if getattr(self.transformer, "peft_config", None):
            self.transformer.unload_lora()
        if self._originals:
            modules = dict(self.transformer.named_modules())
            with torch.no_grad():
                for name, (weight, bias) in self._originals.items():
                    modules[name].weight.copy_(weight, non_blocking=True)
                    if bias is not None:
                        modules[name].bias.copy_(bias, non_blocking=True)
            self._originals.clear()
        self._hot = False
        self._unit_scaling = {}
        self._identity, self._scale, self.current = None, None, None
