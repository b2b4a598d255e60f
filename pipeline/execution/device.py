"""Device truth: an actor given a GPU runs on it, or says in one line why it cannot.

Ray pins an actor that asked for `num_gpus=1` to its GPU (CUDA_VISIBLE_DEVICES); `--device
auto` then means that GPU, and `--device cuda` asks for CUDA outright. When CUDA is unusable
there (a CPU-only torch build, no driver, no device visible) the actor stops with a plain
`StartError` naming the host, the torch build, the driver and CUDA_VISIBLE_DEVICES, instead of
quietly running on the CPU. `--device cpu` is always honoured, GPU or not.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import ray

from pipeline.errors import StartError

NVIDIA_VERSION_FILE = Path("/proc/driver/nvidia/version")


def actor_device(requested: str) -> str:
    """The device this actor runs on for `requested` (auto | cpu | cuda | cuda:N)."""
    import torch

    from pipeline.models.runtime import resolve_device

    # Outside a Ray worker (the in-process runs of tests and benchmarks) there are no Ray GPU
    # ids; asking would start a local Ray as a side effect.
    gpu_ids = [str(i) for i in ray.get_gpu_ids()] if ray.is_initialized() else []
    wants_cuda = requested.startswith("cuda") or (requested == "auto" and bool(gpu_ids))
    if wants_cuda and not torch.cuda.is_available():
        raise StartError(cuda_unusable(requested, gpu_ids))
    return str(resolve_device(requested))


def cuda_unusable(requested: str, gpu_ids: list[str]) -> str:
    """One line: why CUDA cannot be used in this process, with what an operator checks."""
    import torch

    if gpu_ids and requested == "auto":
        asked = f"Ray gave this actor GPU {','.join(gpu_ids)}"
    else:
        asked = f"--device {requested} was asked for"
    if torch.version.cuda is None:
        build = f"torch {torch.__version__} is a CPU-only build"
    else:
        build = f"torch {torch.__version__} (CUDA {torch.version.cuda}): {_cuda_init_error()}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")
    return (
        f"{socket.gethostname()}: {asked} but CUDA is unusable: {build}; {nvidia_driver()}; "
        f"CUDA_VISIBLE_DEVICES={visible}; install a CUDA build of torch on the GPU nodes, "
        "or run with --device cpu"
    )


def _cuda_init_error() -> str:
    import torch

    try:
        torch.cuda.init()
    except Exception as error:  # torch raises RuntimeError or AssertionError here
        return (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"torch.cuda.is_available() is False ({torch.cuda.device_count()} devices)"


def nvidia_driver() -> str:
    """The loaded NVIDIA kernel driver's version, or that none is loaded."""
    try:
        text = NVIDIA_VERSION_FILE.read_text()
    except OSError:
        return "no NVIDIA driver loaded (no /proc/driver/nvidia/version)"
    found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]*)", text)
    return f"NVIDIA driver {found.group(1) if found else text.splitlines()[0].strip()}"
