"""The one execution policy both models share: options are checked once, an out-of-memory error
is recognised whatever raised it, a failed batch is retried item by item, offloading moves a
module to the device only for the block."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from pipeline.errors import ItemError, ItemStatus
from pipeline.models.base import GenerationOutcome, GenerationRequest, ModelOptions
from pipeline.models.runtime import (
    Runtime,
    check_extra_keys,
    is_out_of_memory,
    item_error,
    prepare_all,
    resident,
    run_splitting_failures,
)

CPU_ALLOCATOR = (
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
    "memory: you tried to allocate 85899345920 bytes. Error code 12"
)


@pytest.mark.parametrize(
    "error, oom",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), True),
        (MemoryError(), True),
        (RuntimeError(CPU_ALLOCATOR), True),
        (RuntimeError("CUDA error: out of memory"), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x4)"), False),
        (ValueError("the option says out of memory"), False),  # not an allocator's error type
        (KeyError("x"), False),
    ],
)
def test_the_one_out_of_memory_test_classifies_the_cases(error, oom):
    assert is_out_of_memory(error) is oom
    kind = item_error("item-1", error).kind
    assert kind == (ItemStatus.OUT_OF_MEMORY if oom else ItemStatus.MODEL_ERROR)


def test_an_item_error_keeps_its_kind_and_messages_name_the_exception():
    bad = ItemError("a", ItemStatus.BAD_INPUT, "unreadable")
    assert item_error("a", bad) is bad
    assert (
        str(item_error("b", MemoryError("host"))) == "item 'b': out of memory (MemoryError: host)"
    )
    assert str(item_error("c", KeyError("k"))) == "item 'c': KeyError: 'k'"


def test_unknown_extra_keys_are_named_with_the_known_ones():
    check_extra_keys("Model", {"a": 1}, ["a", "b"])
    with pytest.raises(ValueError) as error:
        check_extra_keys("Model", {"zz": 1, "a": 1, "c": 2}, ["b", "a"])
    assert str(error.value) == "unknown Model option(s) ['c', 'zz']; known: ['a', 'b']"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dtype="fp9"), "unknown dtype 'fp9'"),
        (dict(device="gpu"), "device must be"),
        (dict(max_batch_size=0), "max_batch_size must be an integer >= 1"),
        (dict(max_batch_size=True), "max_batch_size must be an integer >= 1"),
    ],
)
def test_model_options_refuse_impossible_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelOptions(**kwargs)


def test_model_options_keep_their_fields_and_fingerprint():
    """Existing runs' fingerprints depend on this exact dict."""
    assert ModelOptions().fingerprint_fields() == {
        "dtype": "auto",
        "compile": False,
        "fp8": False,
        "fuse_lora": False,
        "extra": {},
    }
    assert ModelOptions(device="cuda:1", dtype="bf16", max_batch_size=4).device == "cuda:1"


def test_fp8_with_fuse_lora_is_refused_before_anything_loads():
    with pytest.raises(ValueError, match="fp8 and fuse_lora cannot be combined"):
        Runtime.from_options(ModelOptions(device="cpu", fp8=True, fuse_lora=True))


def test_runtime_reports_the_execution_parameters():
    runtime = Runtime.from_options(ModelOptions(device="cpu", fp8=True, compile=True))
    assert runtime.parameters(random_weights=False) == {
        "dtype": "torch.float32",
        "fp8": "e4m3fn-rowwise",
        "fp8_matmul": "dequantize",  # no fp8 tensor cores on a CPU
        "compile": True,
        "fuse_lora": False,
        "random_weights": False,
    }
    assert Runtime.from_options(ModelOptions(device="cpu")).parameters(True)["fp8"] is False


class _Recorder(nn.Module):
    """Records the device `.to()` was called with (a CPU-only machine has no second device)."""

    def __init__(self):
        super().__init__()
        self.moves: list[str] = []

    def to(self, device):  # type: ignore[override]
        self.moves.append(str(device))
        return self


def test_offload_moves_modules_for_the_block_only():
    module, other = _Recorder(), _Recorder()
    with resident(torch.device("cuda"), True, module, None, other):
        assert module.moves == ["cuda"] and other.moves == ["cuda"]
    assert module.moves == ["cuda", "cpu"] and other.moves == ["cuda", "cpu"]
    with pytest.raises(RuntimeError), resident(torch.device("cuda"), True, module):
        raise RuntimeError("the block failed")
    assert module.moves[-1] == "cpu"  # sent back even after a failure
    still = _Recorder()
    with resident(torch.device("cuda"), False, still), resident(torch.device("cpu"), True, still):
        pass
    assert still.moves == []  # no offload, or nothing to offload to


@dataclass
class _Item:
    request: GenerationRequest
    parameters: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


def test_a_failed_batch_is_retried_one_by_one_and_only_the_culprit_fails():
    items = [_Item(GenerationRequest(f"i{n}", "p", n), {"n": n}, {"text_s": 0.1}) for n in range(3)]
    calls: list[list[str]] = []

    def run_batch(group):
        calls.append([it.request.item_id for it in group])
        if any(it.request.item_id == "i1" for it in group):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return [GenerationOutcome(it.request.item_id) for it in group]

    runtime = Runtime.from_options(ModelOptions(device="cpu"))
    outcomes = run_splitting_failures(items, run_batch, runtime, "Model")
    assert calls == [["i0", "i1", "i2"], ["i0"], ["i1"], ["i2"]]
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[1].error.kind == ItemStatus.OUT_OF_MEMORY
    assert "injected" in str(outcomes[1].error)
    assert outcomes[1].parameters == {"n": 1} and outcomes[1].timings == {"text_s": 0.1}
    assert outcomes[1].error.__traceback__ is None  # its frames' tensors can be freed


def test_preparation_failures_become_outcomes_at_their_index():
    requests = [GenerationRequest(f"r{n}", "p", n) for n in range(3)]

    def prepare(index, request):
        if index == 1:
            raise ItemError(request.item_id, ItemStatus.BAD_INPUT, "no subject")
        if index == 2:
            raise MemoryError("host")
        return _Item(request)

    runtime = Runtime.from_options(ModelOptions(device="cpu"))
    prepared, outcomes = prepare_all(requests, prepare, runtime, "Model")
    assert [p.request.item_id for p in prepared] == ["r0"]
    assert outcomes[0] is None
    assert outcomes[1].error.kind == ItemStatus.BAD_INPUT
    assert outcomes[2].error.kind == ItemStatus.OUT_OF_MEMORY
