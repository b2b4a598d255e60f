"""Cluster shape on one machine: a local Ray that declares GPUs it does not have.

Ray pins each model actor to its own GPU (CUDA_VISIBLE_DEVICES); on this CPU-only machine the
actors run on the CPU because the run asks for `--device cpu` (the default `auto` on a GPU
without CUDA stops the run: test_pool_cluster.py), but the pinning they report is Ray's real
scheduling decision.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
from support.run_helpers import parquet_bytes, run_config, uso_rows, write_images

from pipeline.execution.driver import Runner
from pipeline.storage import StorageSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_two_gpus():
    ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_one_actor_per_gpu_each_pinned_to_its_own_device(
    ray_two_gpus, tiny_weights, tmp_path: Path
):
    weights = tiny_weights
    images = write_images(tmp_path / "images", 2)
    for k in range(4):
        (tmp_path / f"part-{k}.parquet").write_bytes(
            parquet_bytes(uso_rows(f"g{k}", 1, str(images[0]), str(images[1])))
        )
    config = run_config(str(tmp_path / "part-*.parquet"), str(tmp_path / "out"), weights, actors=0)
    runner = Runner(config, StorageSettings(), show_progress=False)
    summary = runner.run()

    assert summary.ok == 4 and summary.shards_committed == 4
    workers = [
        json.loads(p.read_text())["worker"]
        for p in (tmp_path / "out" / "test").glob("*.stats.json")
    ]
    devices = {w["pid"]: w["cuda_visible_devices"] for w in workers}
    assert len(devices) == 2  # one actor per declared GPU (actors=0 means "one per GPU")
    assert sorted(devices.values()) == ["0", "1"]  # each pinned to a distinct GPU
