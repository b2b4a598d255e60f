"""The device an actor's body resolves, outside Ray: what in-process runs (tests, the GPU
check's shard section) and actors share, without starting a Ray as a side effect."""

from __future__ import annotations

import ray

from pipeline.execution.device import actor_device


def test_outside_ray_auto_is_the_cpu_here_and_starts_no_ray():
    assert not ray.is_initialized()
    assert actor_device("auto") == "cpu"  # this machine has no CUDA
    assert actor_device("cpu") == "cpu"
    # ray.get_gpu_ids() outside a worker would have started a local Ray (and left it running,
    # so the next test's ray.init failed: "Maybe you called ray.init twice")
    assert not ray.is_initialized()
