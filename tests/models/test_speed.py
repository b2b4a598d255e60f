"""The speed switches keep the authors' numbers where they must: the denoising loops never wait
for the host, the attention choice changes nothing on the CPU, and each switch refuses a value
it does not know. The CUDA-only paths (side-stream copies, sync-free loops under CUDA's own sync
checker, Hopper defaults) are `gpu` tests, skipped here."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline.models.base import GenerationRequest, ModelOptions
from pipeline.models.omniconsistency.model import OmniConsistencyModel
from pipeline.models.runtime import Runtime
from pipeline.models.speed import HOPPER_SDPA_BACKEND, SpeedSettings
from pipeline.models.transfers import HostTransfers
from pipeline.models.uso import model as uso_module
from pipeline.models.uso.model import USOModel

OMNI_EXTRA = {"cond_size": 32}
HOST_READS = {
    torch.ops.aten._local_scalar_dense.default,  # .item(), float(t), bool(t), if t: ...
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.equal.default,
}


class HostReads(TorchDispatchMode):
    """Records every op that reads a tensor's value back to Python (a device sync on a GPU)."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))


def request(seed: int, styles: bool = True) -> GenerationRequest:
    return GenerationRequest(
        f"item{seed}",
        "a red house",
        seed,
        subject=picture(seed),
        styles=[picture(seed + 9)] if styles else [],
        width=64,
        height=48,
        steps=3,
    )


def watched(function, mode: HostReads):
    @functools.wraps(function)
    def run(*args, **kwargs):
        with mode:
            return function(*args, **kwargs)

    return run


def test_the_uso_denoising_loop_never_reads_a_tensor_back_to_the_host(tiny_weights, monkeypatch):
    mode = HostReads()
    monkeypatch.setattr(uso_module, "denoise", watched(uso_module.denoise, mode))
    model = USOModel.load(tiny_weights, ModelOptions(device="cpu", max_batch_size=2))
    outcomes = model.generate([request(1), request(2)])
    assert all(o.ok for o in outcomes) and outcomes[0].parameters["batch_size"] == 2
    assert mode.seen == []


def test_the_omniconsistency_denoising_loop_never_reads_a_tensor_back(tiny_weights):
    mode = HostReads()
    model = OmniConsistencyModel.load(
        tiny_weights, ModelOptions(device="cpu", max_batch_size=2, extra=OMNI_EXTRA)
    )
    model.sampler.denoise = watched(model.sampler.denoise, mode)  # type: ignore[method-assign]
    outcomes = model.generate([request(1, styles=False), request(2, styles=False)])
    assert all(o.ok for o in outcomes) and outcomes[0].parameters["batch_size"] == 2
    assert mode.seen == []


@pytest.mark.parametrize("name", ["uso", "omniconsistency"])
def test_the_attention_switch_changes_nothing_on_the_cpu(tiny_weights, name):
    """ "auto" leaves PyTorch's own kernel choice on a CPU: the very same images as "default"."""
    cls, extra, styles = (
        (USOModel, {}, True) if name == "uso" else (OmniConsistencyModel, OMNI_EXTRA, False)
    )
    results = []
    for backend in ("auto", "default", "math"):
        model = cls.load(
            tiny_weights, ModelOptions(device="cpu", extra={**extra, "sdpa_backend": backend})
        )
        [outcome] = model.generate([request(4, styles=styles)])
        assert outcome.ok, outcome.error
        results.append(outcome.image)
    assert np.array_equal(results[0], results[1])
    assert np.abs(results[0].astype(int) - results[2].astype(int)).max() <= 1


def test_speed_switches_resolve_per_device_and_refuse_unknown_values():
    cpu = torch.device("cpu")
    settings = SpeedSettings()
    assert settings.resolved_sdpa_backend(cpu) == "default"
    assert settings.resolved_fp8_matmul(cpu) == "dequantize"
    assert SpeedSettings(fp8_matmul="scaled_mm").resolved_fp8_matmul(cpu) == "scaled_mm"
    for extra, message in (
        ({"sdpa_backend": "xformers"}, r"extra\['sdpa_backend'\] must be one of"),
        ({"fp8_matmul": "int8"}, r"extra\['fp8_matmul'\] must be one of"),
        ({"compile_backend": "tensorrt"}, "compile_backend must be one of"),
    ):
        with pytest.raises(ValueError, match=message):
            Runtime.from_options(ModelOptions(device="cpu", extra=extra))
    for cls, extra in ((USOModel, {}), (OmniConsistencyModel, OMNI_EXTRA)):
        with pytest.raises(ValueError, match=r"unknown .* option"):
            cls.load_random(ModelOptions(device="cpu", extra={**extra, "sdpa": "x"}), "tiny")


def test_transfers_are_plain_copies_on_the_cpu():
    transfers = HostTransfers(torch.device("cpu"))
    tensor = torch.arange(6.0).reshape(2, 3)
    assert not transfers.overlapped
    assert torch.equal(transfers.to_device(tensor, torch.float64), tensor.double())
    assert torch.equal(transfers.to_host(tensor).wait(), tensor)


# ------------------------------------------------------------------------------ CUDA only
@pytest.mark.gpu
def test_side_stream_copies_arrive_intact_and_pinned():
    device = torch.device("cuda")
    transfers = HostTransfers(device)
    source = torch.randn(4, 16, 128, 128)
    on_device = transfers.to_device(source, torch.bfloat16)
    assert on_device.device.type == "cuda" and on_device.dtype == torch.bfloat16
    back = transfers.to_host(on_device * 2).wait()
    assert back.is_pinned() and torch.equal(back, (source.bfloat16().cuda() * 2).cpu())


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["uso", "omniconsistency"])
def test_the_denoising_loops_pass_cudas_sync_checker(name, monkeypatch):
    """torch.cuda.set_sync_debug_mode("error") raises on any synchronising CUDA call."""
    cls, extra, styles = (
        (USOModel, {}, True) if name == "uso" else (OmniConsistencyModel, OMNI_EXTRA, False)
    )
    model = cls.load_random(ModelOptions(device="cuda", extra=extra), size="tiny")

    def strict(function):
        @functools.wraps(function)
        def run(*args, **kwargs):
            torch.cuda.set_sync_debug_mode("error")
            try:
                return function(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")

        return run

    if name == "uso":
        monkeypatch.setattr(uso_module, "denoise", strict(uso_module.denoise))
    else:
        model.sampler.denoise = strict(model.sampler.denoise)  # type: ignore[attr-defined]
    [outcome] = model.generate([request(1, styles=styles)])
    assert outcome.ok, outcome.error


@pytest.mark.gpu
def test_hopper_defaults_are_the_fast_kernels():
    device = torch.device("cuda")
    settings = SpeedSettings()
    major, minor = torch.cuda.get_device_capability(device)
    expected_sdpa = HOPPER_SDPA_BACKEND if major == 9 else "default"
    assert settings.resolved_sdpa_backend(device) == expected_sdpa
    expected_fp8 = "scaled_mm" if (major, minor) >= (8, 9) else "dequantize"
    assert settings.resolved_fp8_matmul(device) == expected_fp8
