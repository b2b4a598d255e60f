"""One execution policy for both models: where and in which dtype they run, how they offload,
store weights in fp8, check their options, recognise an out-of-memory error and keep one bad
item from failing its batch.

Each model builds a `Runtime` from its `ModelOptions` when it loads, and goes through it for
everything that is not its own algorithm, so the two models cannot drift apart on these rules.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import torch
from torch import nn

from pipeline.errors import ItemError, ItemStatus
from pipeline.models.base import DTYPE_ALIASES, GenerationOutcome, GenerationRequest, ModelOptions
from pipeline.models.compilation import compile_repeated_blocks
from pipeline.models.fp8 import FP8_SCHEME, store_blocks_in_fp8
from pipeline.models.speed import SPEED_KEYS, SpeedSettings, sdpa_preference

log = logging.getLogger(__name__)

DTYPES = {name: getattr(torch, attribute) for name, attribute in DTYPE_ALIASES.items()}


def resolve_device(name: str) -> torch.device:
    """ "auto": the GPU Ray pinned this process to (cuda:0 of CUDA_VISIBLE_DEVICES), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """ "auto": bf16 on CUDA (the authors' dtype), fp32 elsewhere (exact parity on CPU)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use auto or one of {sorted(DTYPES)}") from None


# ------------------------------------------------------------------------------- options
def check_options(options: ModelOptions) -> None:
    """Option combinations no model supports."""
    if options.fp8 and options.fuse_lora:
        raise ValueError(
            "fp8 and fuse_lora cannot be combined: a LoRA cannot be merged into "
            "float8 weights without a second rounding; choose one of them"
        )


def check_extra_keys(model: str, extra: Mapping, known: Iterable[str]) -> None:
    """Refuse `ModelOptions.extra` keys `model` does not know (a typo must not be ignored); the
    shared speed keys (`speed.SPEED_KEYS`) are known to every model."""
    unknown = sorted(set(extra) - set(known) - set(SPEED_KEYS))
    if unknown:
        raise ValueError(f"unknown {model} option(s) {unknown}; known: {sorted(known)}")


# ----------------------------------------------------------------------------- placement
@contextmanager
def resident(device: torch.device, offload: bool, *modules: nn.Module | None) -> Iterator[None]:
    """With `offload`, move `modules` to `device` for the block and back to the CPU after;
    otherwise (or on a CPU device) do nothing. None entries are skipped."""
    moving = [m for m in modules if m is not None] if offload and device.type != "cpu" else []
    for module in moving:
        module.to(device)
    try:
        yield
    finally:
        for module in moving:
            module.to("cpu")


def free_accelerator_memory(device: torch.device) -> None:
    """Drop unreachable tensors and return cached accelerator blocks (after an OOM, on close)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class Runtime:
    """How one loaded model executes: its options, resolved device and compute dtype, and the
    shared speed switches (`speed.SpeedSettings`)."""

    options: ModelOptions
    device: torch.device
    dtype: torch.dtype
    speed: SpeedSettings = field(default_factory=SpeedSettings)

    @classmethod
    def from_options(cls, options: ModelOptions) -> Runtime:
        check_options(options)
        device = resolve_device(options.device)
        speed = SpeedSettings.from_extra(options.extra)
        return cls(options, device, resolve_dtype(options.dtype, device), speed)

    @staticmethod
    def model_extra(extra: Mapping) -> dict:
        """`extra` without the shared speed keys: what a model's own settings parse."""
        return {key: value for key, value in extra.items() if key not in SPEED_KEYS}

    @property
    def home(self) -> torch.device:
        """Where weights live between uses: the CPU with offload, else the device."""
        return torch.device("cpu") if self.options.offload else self.device

    def resident(self, *modules: nn.Module | None):
        """Context manager: `modules` on the device for the block (see `resident`)."""
        return resident(self.device, self.options.offload, *modules)

    @property
    def fp8_matmul(self) -> str | None:
        """The fp8 kernel ("scaled_mm" | "dequantize"), None without fp8."""
        return self.speed.resolved_fp8_matmul(self.device) if self.options.fp8 else None

    def store_in_fp8(self, transformer: nn.Module) -> None:
        """The one fp8 path (`fp8.store_blocks_in_fp8`), when the option is on."""
        if self.fp8_matmul is not None:
            store_blocks_in_fp8(transformer, self.fp8_matmul)

    def compile(self, transformer: nn.Module) -> None:
        """Regional compilation of the transformer's blocks (`compilation`), when asked."""
        if self.options.compile:
            compile_repeated_blocks(transformer, self.speed.compile_settings())

    def attention(self):
        """Context manager: the transformer's SDPA calls use the chosen kernel (`speed`)."""
        return sdpa_preference(self.speed.resolved_sdpa_backend(self.device))

    def synchronize(self) -> None:
        """Wait for the device (once per batch, for honest stage timings)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def free_memory(self) -> None:
        free_accelerator_memory(self.device)

    def parameters(self, random_weights: bool) -> dict:
        """The execution choices every item's provenance records, the same keys in all models."""
        options = self.options
        return {
            "dtype": str(self.dtype),
            "fp8": FP8_SCHEME if options.fp8 else False,
            "fp8_matmul": self.fp8_matmul,
            "compile": options.compile,
            "fuse_lora": options.fuse_lora,
            "random_weights": random_weights,
        }


# -------------------------------------------------------------------------------- failures
def is_out_of_memory(error: BaseException) -> bool:
    """The accelerator's or the host's allocator refused memory (CUDA OOM, a failed CPU
    allocation, Python's MemoryError)."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def item_error(item_id: str, error: BaseException) -> ItemError:
    """The item error an exception raised while running `item_id` becomes."""
    if isinstance(error, ItemError):
        return error
    if is_out_of_memory(error):
        return ItemError(
            item_id, ItemStatus.OUT_OF_MEMORY, f"out of memory ({type(error).__name__}: {error})"
        )
    return ItemError(item_id, ItemStatus.MODEL_ERROR, f"{type(error).__name__}: {error}")


class PreparedRequest(Protocol):
    """What the helpers below need of a model's prepared item (`<model>/prepare.PreparedItem`)."""

    request: GenerationRequest
    parameters: dict
    timings: dict[str, float]


Item = TypeVar("Item", bound=PreparedRequest)


def _failure(item_id: str, error: BaseException, model: str) -> ItemError:
    """`item_error` without the traceback (so its frames' tensors can be freed), logged when it
    is not an expected kind."""
    failure = item_error(item_id, error).with_traceback(None)
    if failure.kind == ItemStatus.MODEL_ERROR:
        log.error("%s failed on item %r", model, item_id, exc_info=error)
    return failure


def prepare_all(
    requests: Sequence[GenerationRequest],
    prepare: Callable[[int, GenerationRequest], Item],
    runtime: Runtime,
    model: str,
) -> tuple[list[Item], list[GenerationOutcome | None]]:
    """`prepare(index, request)` for every request: (prepared items, outcomes) where outcomes
    holds the failed requests' outcomes at their index and None elsewhere."""
    outcomes: list[GenerationOutcome | None] = [None] * len(requests)
    prepared: list[Item] = []
    for index, request in enumerate(requests):
        try:
            prepared.append(prepare(index, request))
            continue
        except Exception as error:
            failure = _failure(request.item_id, error, model)
        if failure.kind == ItemStatus.OUT_OF_MEMORY:
            runtime.free_memory()
        outcomes[index] = GenerationOutcome(request.item_id, error=failure)
    return prepared, outcomes


def run_splitting_failures(
    group: Sequence[Item],
    run_batch: Callable[[Sequence[Item]], list[GenerationOutcome]],
    runtime: Runtime,
    model: str,
) -> list[GenerationOutcome]:
    """`run_batch(group)`; if it raises, retry each item alone so one bad or too-large item
    cannot fail its neighbours (memory is freed first after an OOM). An item that fails alone
    gets an outcome with its `item_error`. One outcome per item, in order."""
    try:
        return run_batch(group)
    except Exception as error:
        oom = is_out_of_memory(error)
        summary = f"{type(error).__name__}: {error}"
        failure = _failure(group[0].request.item_id, error, model) if len(group) == 1 else None
    # Out of the except block: the traceback (and the tensors its frames hold) is released.
    if oom:
        runtime.free_memory()
    if failure is None:
        log.warning("%s batch of %d failed (%s); retrying one by one", model, len(group), summary)
        return [
            outcome
            for item in group
            for outcome in run_splitting_failures([item], run_batch, runtime, model)
        ]
    item = group[0]
    return [
        GenerationOutcome(
            item.request.item_id, error=failure, parameters=item.parameters, timings=item.timings
        )
    ]


@contextmanager
def random_init(
    device: torch.device, seed: int, dtype: torch.dtype | None = None
) -> Iterator[None]:
    """Build modules with random weights from `seed` directly on `device` (in `dtype` when
    given: no fp32 CPU copy of a 12B model), leaving the caller's RNG state untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with building_on(device, dtype):
            yield


@contextmanager
def building_on(device: torch.device, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Create parameters on `device` (in `dtype` when given) inside the block."""
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)
