"""Host <-> GPU copies that do not stall the model: pinned host memory and a side stream.

A copy from pageable host memory makes the host wait for the GPU (the driver stages it through
its own pinned buffer), and a device-to-host copy on the compute stream waits for every kernel
queued before it. Both models move little per item (the initial noise, ~1 MiB at 1024^2, in;
the decoded image, ~3-12 MiB, out), but they move it between stages where the GPU would
otherwise run on: the next item's noise goes up while the previous item decodes, and a decoded
image comes down while the next row decodes. On the CPU both are plain tensors, unchanged.

Contract: `to_device` returns a tensor the compute stream may use at once (the stream waits for
the copy on the GPU, not the host); `to_host` returns a `HostTensor` whose `.wait()` gives the
CPU tensor once its copy is done.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def upload(
    tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """A small host tensor (RoPE ids, guidance) on `device`, without making the host wait: on
    CUDA through pinned memory with a non-blocking copy on the current stream (PyTorch's host
    allocator keeps the pinned block until the copy is done). Elsewhere a plain `.to`."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device, dtype)
    return tensor.pin_memory().to(device, dtype, non_blocking=True)


@dataclass
class HostTensor:
    """A device-to-host copy in flight; `wait()` returns the CPU tensor when it has landed."""

    tensor: torch.Tensor
    done: torch.cuda.Event | None = None

    def wait(self) -> torch.Tensor:
        if self.done is not None:
            self.done.synchronize()
        return self.tensor


class HostTransfers:
    """Copies between the host and `device` for one model (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    @property
    def overlapped(self) -> bool:
        """True where copies run on a side stream from pinned memory (CUDA)."""
        return self.stream is not None

    def to_device(self, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """`tensor` on the device (in `dtype`), ready for the compute stream."""
        if self.stream is None or tensor.device.type != "cpu":
            return tensor.to(self.device, dtype)
        compute = torch.cuda.current_stream(self.device)
        pinned = tensor if tensor.is_pinned() else tensor.pin_memory()
        with torch.cuda.stream(self.stream):
            moved = pinned.to(self.device, non_blocking=True)
            if dtype is not None:
                moved = moved.to(dtype)
        compute.wait_stream(self.stream)
        moved.record_stream(compute)  # its memory is the compute stream's to free
        return moved

    def to_host(self, tensor: torch.Tensor) -> HostTensor:
        """Start copying `tensor` (produced on the compute stream) into pinned host memory."""
        if self.stream is None or tensor.device.type != "cuda":
            return HostTensor(tensor.cpu())
        compute = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(compute)  # the copy starts once `tensor` is computed
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        with torch.cuda.stream(self.stream):
            host.copy_(tensor, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        tensor.record_stream(self.stream)  # not reused by the compute stream before the copy
        return HostTensor(host, done)
