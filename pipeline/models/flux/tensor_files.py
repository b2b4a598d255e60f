"""Strict, memory-frugal loading of safetensors files into modules built on the meta device.

Why this exists: `from_pretrained`-style loaders warn about missing or unexpected keys and then
carry on with random or meta tensors, which surfaces much later as garbage images or a crash in
the middle of a batch. Here every weight file is checked against the architecture from its
header alone (names and shapes) before any data is read, and any mismatch raises
`WeightFileError` naming the file and the keys. Tensors are then read one at a time, cast to the
target dtype on the CPU and moved to the device (pinned + non_blocking on CUDA), and assigned
into a module whose parameters were never allocated (`assign=True`), so a 12B-parameter model
is never held twice.

A *load plan* maps every state-dict key of the target module to a `TensorSource`: which file
key to read, optionally which rows, and an optional pure reshaping transform.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError, safe_open

from pipeline.errors import WeightFileError

_ModuleT = TypeVar("_ModuleT", bound=torch.nn.Module)


@dataclass(frozen=True)
class TensorInfo:
    """What a safetensors header says about one tensor."""

    shape: tuple[int, ...]
    dtype: str
    file: Path


@dataclass(frozen=True)
class TensorSource:
    """Where one target tensor comes from: `key` in the file, rows [start, stop) of dim 0 if
    `rows` is set, then `transform` (a pure function such as a reshape or a half swap)."""

    key: str
    rows: tuple[int, int] | None = None
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    shape: tuple[int, ...] | None = None  # shape after rows+transform; None = derive from header


class TensorFiles:
    """One logical weight file that may be split into shards (a diffusers index or one file).

    `label` is what error messages name (the file, or the folder of a sharded checkpoint).
    """

    def __init__(self, files: Iterable[Path], label: Path | str):
        self.label = str(label)
        self.infos: dict[str, TensorInfo] = {}
        self._handles: dict[Path, safe_open] = {}
        for file in files:
            for key, info in read_safetensors_header(file).items():
                if key in self.infos:
                    raise WeightFileError(file, "tensor also present in another shard", [key])
                self.infos[key] = info

    @classmethod
    def single(cls, path: Path) -> TensorFiles:
        return cls([path], path)

    @classmethod
    def diffusers_folder(cls, folder: Path, stem: str = "diffusion_pytorch_model") -> TensorFiles:
        """`<stem>.safetensors`, or the shards listed in `<stem>.safetensors.index.json`."""
        single = folder / f"{stem}.safetensors"
        index = folder / f"{stem}.safetensors.index.json"
        if single.exists():
            return cls.single(single)
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as err:
                raise WeightFileError(index, f"not a safetensors shard index ({err})") from err
            shards = sorted({folder / name for name in weight_map.values()})
            files = cls(shards, folder)
            listed, present = set(weight_map), set(files.infos)
            if listed != present:
                raise WeightFileError(
                    index, "index and shards disagree on tensor names", sorted(listed ^ present)
                )
            return files
        raise WeightFileError(folder, f"no {stem}.safetensors (nor a sharded index) in the folder")

    def keys(self) -> set[str]:
        return set(self.infos)

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.infos[key].shape

    def read(self, source: TensorSource) -> torch.Tensor:
        """Read one source tensor on the CPU (only the requested rows are read)."""
        info = self.infos[source.key]
        try:
            handle = self._handles.get(info.file)
            if handle is None:
                handle = safe_open(str(info.file), framework="pt", device="cpu")
                self._handles[info.file] = handle
            if source.rows is None:
                tensor = handle.get_tensor(source.key)
            else:
                start, stop = source.rows
                tensor = handle.get_slice(source.key)[start:stop]
        except (SafetensorError, OSError, RuntimeError) as err:
            raise WeightFileError(info.file, f"cannot read tensor ({err})", [source.key]) from err
        return source.transform(tensor) if source.transform is not None else tensor

    def close(self) -> None:
        self._handles.clear()


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Names, shapes and dtypes from a safetensors header; a missing, truncated or corrupt file
    raises `WeightFileError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(path, "file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            infos = {}
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                piece = handle.get_slice(key)
                infos[key] = TensorInfo(tuple(piece.get_shape()), piece.get_dtype(), path)
            return infos
    except (SafetensorError, OSError) as err:
        raise WeightFileError(path, f"not a readable safetensors file ({err})") from err


def _expected_source_shapes(
    plan: Mapping[str, TensorSource], expected: Mapping[str, torch.Tensor], files: TensorFiles
) -> dict[str, tuple[int, ...]]:
    """The header shape each used file key must have for the plan to fit the module.

    A key read by row ranges must have exactly as many rows as the ranges cover, and the
    targets' trailing dims; a key read whole must have the target's shape (or, for a reshaping
    transform, the same element count)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for target, source in plan.items():
        want = tuple(expected[target].shape)
        if source.rows is not None:
            _start, stop = source.rows
            prev = shapes.get(source.key, (0, *want[1:]))
            shapes[source.key] = (max(prev[0], stop), *want[1:])
        elif source.shape is not None and source.shape != files.shape(source.key):
            have = files.shape(source.key)
            ok = source.shape == want and torch.Size(have).numel() == torch.Size(want).numel()
            shapes[source.key] = have if ok else want
        else:
            shapes[source.key] = want
    return shapes


def check_plan(
    module: torch.nn.Module,
    plan: Mapping[str, TensorSource],
    files: TensorFiles,
    allowed_unused: Callable[[str], bool] = lambda key: False,
) -> None:
    """Raise one `WeightFileError` listing every missing, unexpected and mis-shaped file key
    unless the plan covers the module exactly. `allowed_unused` names keys that may stay unread."""
    expected = dict(module.state_dict(keep_vars=True))
    # a plan entry for a parameter the module lacks means the file had a key we cannot place
    stray = {t: s for t, s in plan.items() if t not in expected}
    plan = {t: s for t, s in plan.items() if t in expected}
    problems: list[str] = []
    missing = sorted(
        {s.key for s in plan.values() if s.key not in files.infos}
        | {f"(nothing feeds {k})" for k in expected if k not in plan}
    )
    problems += [f"missing {k}" for k in missing]
    used = {s.key for s in plan.values()}
    unexpected = sorted((files.keys() - used) | {s.key for s in stray.values()})
    problems += [f"unexpected {k}" for k in unexpected if not allowed_unused(k)]
    present = {t: s for t, s in plan.items() if s.key in files.infos}
    for key, want in sorted(_expected_source_shapes(present, expected, files).items()):
        have = files.shape(key)
        if have != want:
            problems.append(f"mis-shaped {key} {list(have)} (expected {list(want)})")
    if problems:
        counts = {
            word: sum(p.startswith(word) for p in problems)
            for word in ("missing", "unexpected", "mis-shaped")
        }
        summary = ", ".join(f"{n} {word}" for word, n in counts.items() if n)
        raise WeightFileError(
            files.label, f"does not match the architecture ({summary} tensors)", problems
        )


def materialize(
    module: _ModuleT,
    plan: Mapping[str, TensorSource],
    files: TensorFiles,
    dtype: torch.dtype,
    device: torch.device | str,
    allowed_unused: Callable[[str], bool] = lambda key: False,
) -> _ModuleT:
    """Check the plan, then read, cast and move every tensor and assign it into `module`
    (built on the meta device). Returns the module in eval mode without gradients."""
    check_plan(module, plan, files, allowed_unused)
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    state = {}
    try:
        for target, source in plan.items():
            tensor = files.read(source)
            if tensor.is_floating_point():
                tensor = tensor.to(dtype)
            if on_cuda:
                tensor = tensor.pin_memory().to(device, non_blocking=True)
            elif device.type != "cpu":
                tensor = tensor.to(device)
            state[target] = tensor.contiguous()
    finally:
        files.close()
    module.load_state_dict(state, strict=True, assign=True)
    leftovers = [
        name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta
    ]
    if leftovers:
        raise WeightFileError(files.label, "tensors left unloaded (meta) after loading", leftovers)
    module.requires_grad_(False)
    return module.eval()


def identity_plan(keys: Iterable[str], prefix: str = "") -> dict[str, TensorSource]:
    """A plan that reads each target key from `prefix + key` unchanged (diffusers folders)."""
    return {key: TensorSource(prefix + key) for key in keys}
