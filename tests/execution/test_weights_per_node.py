"""A run's weights reach each node of a cluster once, however many actors the node runs.

Several Ray nodes on this machine (`ray.cluster_utils.Cluster`), each with its own weight cache
folder, as each machine of a real cluster has its own disk: the node's environment sets
RESTYLE_WEIGHTS_CACHE (Ray's per-node `env_vars`; on KubeRay, the pod spec of the worker
group), and Ray's workers on that node inherit it. The weights come from an S3 mirror on the
real SeaweedFS server, read through the fault proxy, which logs every request: a weight file's
downloads are counted there (a parallel ranged download counts once, `FaultProxy.downloads`).

Each node declares 1 CPU and a CPU actor takes half of one, so a run of 2 actors per node
fills every node exactly: the placement, not chance, puts 2 actors on each node, and the test
checks it from Ray's actor table (a read-ahead lets one actor hold two shards, so which actors
committed shards says less). A node that joins later stages the weights once for its own
actors, and the nodes that already have them fetch nothing: between two runs, and mid-run,
when actors waiting for resources start on a node that joins (the elastic pool).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster
from support.fault_proxy import FaultProxy
from support.run_helpers import parquet_bytes, run_config, uso_rows, write_images

from pipeline.execution.driver import Runner, RunSummary
from pipeline.storage import Storage, StorageSettings
from pipeline.weights.inventory import model_files
from pipeline.weights.manifest import MANIFEST_NAME, read_manifest
from pipeline.weights.pull import pull
from pipeline.weights.sources import LocalSource
from pipeline.weights.verify import verify_root

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("private_caches")]

NODE_CPUS = 1  # per node; CPU actors take 0.5 (pool.CPU_ACTOR_CPUS): exactly 2 actors a node
ACTORS_PER_NODE = 2


def node_env(folder: Path) -> dict[str, dict[str, str]]:
    """A node's own caches: what a real node has on its local disk."""
    return {
        "env_vars": {
            "RESTYLE_WEIGHTS_CACHE": str(folder / "weights-cache"),
            "RESTYLE_CACHE": str(folder / "hash-cache"),
        }
    }


@pytest.fixture
def cluster(tmp_path: Path):
    """A head node and one worker node, each with its own cache folder (nodes/<name>)."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": NODE_CPUS,
            "include_dashboard": False,
            **node_env(tmp_path / "nodes" / "head"),
        },
    )
    cluster.add_node(num_cpus=NODE_CPUS, **node_env(tmp_path / "nodes" / "worker-1"))
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def manifest(folder: Path, shards: int, items: int) -> str:
    images = write_images(folder / "images", 2)
    for k in range(shards):
        rows = uso_rows(f"s{k}", items, str(images[0]), str(images[1]))
        (folder / f"part-{k}.parquet").write_bytes(parquet_bytes(rows))
    return str(folder / "part-*.parquet")


def model_actors() -> dict[str, str]:
    """Actor id -> node id of every model actor the cluster has started, dead ones included:
    Ray's actor table in the GCS (the state API would need the dashboard, which these clusters
    do not start)."""
    table = ray._private.state.actors()
    return {
        actor_id: entry["Address"]["NodeID"]
        for actor_id, entry in table.items()
        if entry["ActorClassName"].endswith("StylizeActor")
    }


def actors_per_node(before: dict[str, str]) -> Counter[str]:
    """Node id -> model actors started there since `before` (a `model_actors()` snapshot)."""
    return Counter(node for actor, node in model_actors().items() if actor not in before)


def staged_roots(nodes: Path) -> dict[str, Path]:
    """Node folder name -> the mirror's staged copy in that node's cache."""
    found = {}
    for node in sorted(nodes.iterdir()):
        roots = list((node / "weights-cache" / "staged").glob("s3-*"))
        assert len(roots) == 1, f"{node.name}: {roots}"
        found[node.name] = roots[0]
    return found


def test_each_node_stages_the_weights_once_for_all_its_actors_and_a_late_node_once_too(
    cluster: Cluster, s3_server, tiny_weights: Path, tmp_path: Path
):
    mirror = s3_server.new_bucket("per-node") + "/weights"
    pull(LocalSource(tiny_weights), ["uso"], mirror, s3_server.storage(), tmp_path / "scratch")
    files = sorted(model_files(tiny_weights, "uso"))
    bucket_path = "/" + mirror[len("s3://") :] + "/"
    nodes = tmp_path / "nodes"
    with FaultProxy(s3_server.endpoint_url) as proxy:
        settings = dataclasses.replace(s3_server.settings(), endpoint_url=proxy.endpoint_url)

        def downloads() -> Counter[str]:
            """Weight file -> whole downloads of it so far (the manifest read apart)."""
            paths = proxy.downloads(bucket_path)
            return Counter(
                p[len(bucket_path) :] for p in paths if not p.endswith("/" + MANIFEST_NAME)
            )

        def run(folder: str, shards: int, name: str, actors: int) -> RunSummary:
            """A run of `shards` shards x 2 items into its own folder under one output root."""
            config = run_config(
                manifest(tmp_path / folder, shards, 2), str(tmp_path / "out"), mirror,
                run=name, actors=actors,
            )  # fmt: skip
            return Runner(config, settings, show_progress=False).run()

        # Run 1: two nodes, two actors on each, 8 shards.
        before = model_actors()
        summary = run("in1", shards=8, name="first", actors=2 * ACTORS_PER_NODE)
        assert (summary.ok, summary.failed, summary.shards_committed) == (16, 0, 8)
        per_node = actors_per_node(before)
        assert sorted(per_node.values()) == [ACTORS_PER_NODE, ACTORS_PER_NODE], per_node
        assert downloads() == Counter({f: 2 for f in files})  # once per node, not per actor
        roots = staged_roots(nodes)
        assert sorted(roots) == ["head", "worker-1"]
        first_inodes = {n: {f: os.stat(r / f).st_ino for f in files} for n, r in roots.items()}

        # A third node joins; run 2 fills all three nodes with two actors each.
        cluster.add_node(num_cpus=NODE_CPUS, **node_env(nodes / "worker-2"))
        cluster.wait_for_nodes()
        before = model_actors()
        summary = run("in2", shards=6, name="second", actors=3 * ACTORS_PER_NODE)
        assert (summary.ok, summary.failed, summary.shards_committed) == (12, 0, 6)
        per_node = actors_per_node(before)
        assert sorted(per_node.values()) == [ACTORS_PER_NODE] * 3, per_node
        assert downloads() == Counter({f: 3 for f in files})  # the new node once, the others 0

    roots = staged_roots(nodes)
    assert sorted(roots) == ["head", "worker-1", "worker-2"]
    for name, inodes in first_inodes.items():  # the first nodes' copies were never replaced
        assert {f: os.stat(roots[name] / f).st_ino for f in files} == inodes
    local = Storage(StorageSettings())
    for name, root in roots.items():
        assert verify_root(root).ok, name
        staged = read_manifest(local, str(root))
        assert staged is not None and sorted(staged.files) == files, name
        for f in files:  # byte for byte the files pulled into the mirror
            assert (root / f).read_bytes() == (tiny_weights / f).read_bytes(), (name, f)
    assert not (tmp_path / "weights-cache" / "staged").exists()  # the driver staged nothing
    for run in ("first", "second"):
        provenance = json.loads((tmp_path / "out" / run / "run.json").read_text())["weights"]
        assert set(provenance) <= set(files) and "uso/dit_lora.safetensors" in provenance


def test_a_node_joining_mid_run_stages_the_weights_once_for_its_actors(
    cluster: Cluster, s3_server, tiny_weights: Path, tmp_path: Path
):
    """6 actors asked for, room for 4: two wait for resources until a third node joins mid-run,
    then start there and stage the weights on it, once for both."""
    mirror = s3_server.new_bucket("mid-run") + "/weights"
    pull(LocalSource(tiny_weights), ["uso"], mirror, s3_server.storage(), tmp_path / "scratch")
    files = sorted(model_files(tiny_weights, "uso"))
    bucket_path = "/" + mirror[len("s3://") :] + "/"
    nodes = tmp_path / "nodes"
    images = write_images(tmp_path / "in" / "images", 2)
    for k in range(16):
        rows = uso_rows(f"s{k}", 4, str(images[0]), str(images[1]))
        for row in rows:
            row["steps"] = 8  # longer shards: the join lands while work is left
        (tmp_path / "in" / f"part-{k}.parquet").write_bytes(parquet_bytes(rows))
    with FaultProxy(s3_server.endpoint_url) as proxy:
        settings = dataclasses.replace(s3_server.settings(), endpoint_url=proxy.endpoint_url)

        def downloads() -> Counter[str]:
            paths = proxy.downloads(bucket_path)
            return Counter(
                p[len(bucket_path) :] for p in paths if not p.endswith("/" + MANIFEST_NAME)
            )

        before = model_actors()
        config = run_config(
            str(tmp_path / "in" / "part-*.parquet"),
            str(tmp_path / "out"),
            mirror,
            actors=3 * ACTORS_PER_NODE,
        )
        result: dict = {}

        def run() -> None:
            try:
                result["summary"] = Runner(config, settings, show_progress=False).run()
            except BaseException as error:  # handed to the test's thread
                result["error"] = error

        thread = threading.Thread(target=run)
        thread.start()
        run_folder = tmp_path / "out" / "test"
        deadline = time.monotonic() + 300
        while not any(run_folder.glob("*.stats.json")) and time.monotonic() < deadline:
            time.sleep(0.2)  # until the first shard is committed: the run is under way
        assert thread.is_alive() and any(run_folder.glob("*.stats.json")), result
        assert downloads() == Counter({f: 2 for f in files})  # the first two nodes so far
        joined = cluster.add_node(num_cpus=NODE_CPUS, **node_env(nodes / "worker-2"))
        thread.join(timeout=600)
        assert not thread.is_alive(), "the run did not end"
        if "error" in result:
            raise result["error"]
        summary = result["summary"]
        final = downloads()

    assert (summary.ok, summary.failed, summary.shards_committed) == (64, 0, 16)
    per_node = actors_per_node(before)
    assert per_node[joined.node_id] == ACTORS_PER_NODE, per_node
    assert sorted(per_node.values()) == [ACTORS_PER_NODE] * 3, per_node
    assert final == Counter({f: 3 for f in files})  # the node that joined: once, for both
    roots = staged_roots(nodes)
    assert sorted(roots) == ["head", "worker-1", "worker-2"]
    assert all(verify_root(root).ok for root in roots.values())
