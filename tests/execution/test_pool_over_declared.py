"""A cluster that declares more GPUs than it can place actors on: 4 GPUs but 2 CPUs (each GPU
actor needs 1 GPU + 1 CPU). `--actors 0` sizes the pool to the 2 that fit; asking for 3 leaves
one waiting, said in the log and the progress lines with what it needs and what the cluster
has, while the run finishes on the two it has."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import ray
from support.run_helpers import parquet_bytes, run_config, uso_rows, write_images

from pipeline.execution.driver import Runner
from pipeline.storage import StorageSettings

pytestmark = pytest.mark.slow

# What is free depends on when the cluster was last read (before or after the two placed
# actors took their share); what the cluster has, and what an actor needs, do not.
WAITING = re.compile(
    r"1 model actor for 'uso' \(weights '.+'\) waiting for resources: each needs 1 GPU \+ "
    r"1 CPU; cluster free \d+ GPU, \d+ CPU of 4 GPU, 2 CPU on 1 node$"
)
NOTE = re.compile(
    r"model actors for 'uso' \(weights '.+'\): 2 ready, 0 loading, 1 waiting for resources "
    r"\(each needs 1 GPU \+ 1 CPU; cluster free \d+ GPU, \d+ CPU of 4 GPU, 2 CPU on 1 node\)$"
)


@pytest.fixture(scope="module")
def ray_over_declared():
    ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def manifest(folder: Path, shards: int, items: int) -> str:
    images = write_images(folder / "images", 2)
    for k in range(shards):
        rows = uso_rows(f"o{k}", items, str(images[0]), str(images[1]))
        for row in rows:
            row["steps"] = 6  # shards long enough for the waiting actor to be reported
        (folder / f"part-{k}.parquet").write_bytes(parquet_bytes(rows))
    return str(folder / "part-*.parquet")


def worker_pids(run: Path) -> set[int]:
    return {json.loads(p.read_text())["worker"]["pid"] for p in run.glob("*.stats.json")}


def test_actors_0_sizes_the_pool_to_what_can_be_placed(
    ray_over_declared, tiny_weights, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    config = run_config(manifest(tmp_path, 4, 2), str(out), tiny_weights, actors=0)
    summary = Runner(config, StorageSettings(), show_progress=False).run()

    assert summary.ok == 8 and summary.shards_committed == 4
    messages = [r.getMessage() for r in caplog.records]
    assert any("the cluster can hold 2 model actors" in m for m in messages)
    assert not any("waiting for resources" in m for m in messages)  # nothing asked in vain
    assert len(worker_pids(out / "test")) <= 2


def test_actors_that_cannot_be_placed_are_reported_and_the_run_finishes_without_them(
    ray_over_declared, tiny_weights, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    config = run_config(manifest(tmp_path, 6, 3), str(out), tiny_weights, actors=3)
    summary = Runner(config, StorageSettings(), show_progress=True).run()

    assert summary.ok == 18 and summary.shards_committed == 6 and not summary.shards_failed
    log_lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.execution.pool"]
    assert any(WAITING.match(line) for line in log_lines), log_lines
    progress = [r.getMessage() for r in caplog.records if r.name == "restyle.progress"]
    assert any(NOTE.match(line) for line in progress), progress
    assert len(worker_pids(out / "test")) == 2  # the two placed actors did all the work
