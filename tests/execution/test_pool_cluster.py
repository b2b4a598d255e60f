"""The actor pool on a changing cluster: several Ray nodes on this machine
(`ray.cluster_utils.Cluster`), worker nodes declaring one GPU and one CPU each, the head none.

Ray pins each model actor to its node's GPU; on this CPU-only machine the actors run with
`--device cpu` (asked for explicitly, which device truth allows), while the default `auto`
on a GPU Ray assigned but CUDA cannot use stops the run with one line and exit 5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from ray.cluster_utils import Cluster
from support.run_helpers import parquet_bytes, run_config, uso_rows, write_images

from pipeline.errors import ExitCode, StartError
from pipeline.execution.driver import Runner, RunSummary
from pipeline.storage import StorageSettings

pytestmark = pytest.mark.slow

GPU_NODE = {"num_cpus": 1, "num_gpus": 1}


@pytest.fixture
def cluster():
    """A head without GPUs (the driver's node) and no workers yet; the test adds them."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False},
    )
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def manifest(folder: Path, shards: int, items: int, steps: int = 2) -> str:
    """`shards` Parquet shards of `items` USO items each, `steps` denoising steps per item (more
    steps: longer shards, so a cluster change lands mid-run on a busy machine too)."""
    images = write_images(folder / "images", 2)
    for k in range(shards):
        rows = uso_rows(f"s{k}", items, str(images[0]), str(images[1]))
        for row in rows:
            row["steps"] = steps
        (folder / f"part-{k}.parquet").write_bytes(parquet_bytes(rows))
    return str(folder / "part-*.parquet")


def start(runner: Runner) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        try:
            result["summary"] = runner.run()
        except BaseException as error:  # handed to the test's thread
            result["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def finish(thread: threading.Thread, result: dict, timeout_s: float = 600) -> RunSummary:
    thread.join(timeout=timeout_s)
    assert not thread.is_alive(), "the run did not end"
    if "error" in result:
        raise result["error"]
    return result["summary"]


def actor_nodes(runner: Runner) -> dict[int, str]:
    """pid -> node id of the run's ready actors now."""
    pool = runner.pool
    if pool is None:
        return {}
    return {s.info["pid"]: s.info["node"] for s in list(pool.slots) if s.info is not None}


def workers(run: Path) -> dict[int, int]:
    """shard index -> pid of the actor that committed it."""
    return {
        int(p.name.split("-")[1].split(".")[0]): json.loads(p.read_text())["worker"]["pid"]
        for p in run.glob("*.stats.json")
    }


def test_a_node_added_mid_run_gets_actors_that_take_shards(cluster, tiny_weights, tmp_path):
    cluster.add_node(**GPU_NODE)
    cluster.wait_for_nodes()
    out = tmp_path / "out"
    runner = Runner(
        run_config(manifest(tmp_path, 12, 4, steps=8), str(out), tiny_weights, actors=0),
        StorageSettings(),
        show_progress=False,
    )
    thread, result = start(runner)
    deadline = time.monotonic() + 300
    while not actor_nodes(runner) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert actor_nodes(runner), "no actor became ready on the first node"
    joined = cluster.add_node(**GPU_NODE)  # mid-run: shards are already under way
    seen: dict[int, str] = {}
    while thread.is_alive():
        seen.update(actor_nodes(runner))
        time.sleep(0.2)
    summary = finish(thread, result)

    assert summary.shards_committed == 12 and summary.ok == 48 and not summary.shards_failed
    on_new_node = {pid for pid, node in seen.items() if node == joined.node_id}
    assert on_new_node, f"the pool did not grow onto the node that joined: {seen} {joined.node_id}"
    assert on_new_node & set(workers(out / "test").values()), "the new actor took no shard"


def test_a_node_removed_mid_run_has_its_shards_redone_with_identical_bytes(
    cluster, tiny_weights, tmp_path
):
    cluster.add_node(**GPU_NODE)
    leaving = cluster.add_node(**GPU_NODE)
    cluster.wait_for_nodes()
    shards = manifest(tmp_path, 6, 3)
    reference = Runner(
        run_config(shards, str(tmp_path / "ref"), tiny_weights, actors=0),
        StorageSettings(),
        show_progress=False,
    ).run()
    assert reference.ok == 18

    runner = Runner(
        run_config(shards, str(tmp_path / "lost"), tiny_weights, actors=0),
        StorageSettings(),
        show_progress=False,
    )
    thread, result = start(runner)
    lost_shard, lost_pids = None, set()
    deadline = time.monotonic() + 300
    while lost_shard is None and time.monotonic() < deadline and thread.is_alive():
        for slot in list(runner.pool.ready() if runner.pool else []):
            if slot.info and slot.info["node"] == leaving.node_id:
                live = ray.get(slot.handle.progress.remote(), timeout=30)
                started = [shard for shard, (done, _) in live.items() if done >= 1]
                if started:
                    lost_shard, lost_pids = started[0], {slot.info["pid"]}
        time.sleep(0.1)
    assert lost_shard is not None, "no shard was under way on the node to remove"
    cluster.remove_node(leaving)
    summary = finish(thread, result)

    assert summary.ok == 18 and not summary.shards_failed
    ref_run, lost_run = tmp_path / "ref" / "test", tmp_path / "lost" / "test"
    tars = sorted(p.name for p in ref_run.glob("*.tar"))
    assert tars == sorted(p.name for p in lost_run.glob("*.tar")) and len(tars) == 6
    for name in tars:  # byte-identical: the redone shard equals the uninterrupted one
        assert (lost_run / name).read_bytes() == (ref_run / name).read_bytes(), name
    for k in range(6):  # every item once, none twice
        records = pq.read_table(lost_run / f"part-{k:06d}.parquet").to_pylist()
        assert [r["id"] for r in records] == [f"s{k}-{i}" for i in range(3)]
    assert workers(lost_run)[lost_shard] not in lost_pids  # redone on the node that stayed


def test_no_room_for_any_actor_fails_the_queued_shards_after_the_capacity_wait(
    cluster, tiny_weights, tmp_path, caplog
):
    # --device cuda asks every actor for a GPU; this cluster has none (the head only).
    config = run_config(
        manifest(tmp_path, 2, 1), str(tmp_path / "out"), tiny_weights, capacity_wait=8.0
    )
    config = config.model_copy(update={"options": replace(config.options, device="cuda")})
    summary = Runner(config, StorageSettings(), show_progress=False).run()

    assert set(summary.shards_failed) == {0, 1}
    reason = summary.shards_failed[0]
    assert "could be placed within 8 s (--capacity-wait)" in reason
    assert "each needs 1 GPU + 1 CPU" in reason and "of 0 GPU, 1 CPU on 1 node" in reason
    assert summary.exit_code == ExitCode.INCOMPLETE and summary.shards_missing == 2
    assert any("waiting for resources" in r.getMessage() for r in caplog.records)


def test_an_actor_given_a_gpu_without_cuda_stops_the_run_with_one_line(
    cluster, tiny_weights, tmp_path
):
    cluster.add_node(**GPU_NODE)
    cluster.wait_for_nodes()
    config = run_config(manifest(tmp_path, 1, 1), str(tmp_path / "out"), tiny_weights)
    auto = config.model_copy(update={"options": replace(config.options, device="auto")})
    with pytest.raises(StartError) as raised:
        Runner(auto, StorageSettings(), show_progress=False).run()
    message = str(raised.value)
    assert "\n" not in message
    assert "Ray gave this actor GPU 0 but CUDA is unusable" in message
    assert "CPU-only build" in message and "CUDA_VISIBLE_DEVICES=0" in message

    # The command: that line, and exit 5 (CANNOT_START).
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "run",
            str(tmp_path / "part-0.parquet"),
            "--out",
            str(tmp_path / "cli"),
            "--weights",
            str(tiny_weights),
            "--address",
            cluster.address,
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == ExitCode.CANNOT_START, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "CUDA is unusable" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and "StylizeActor pid=" not in done.stderr
