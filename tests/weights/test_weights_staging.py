"""Each node stages the weights once (a lock), verified, never using a partial download."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tarfile
import threading
import time
from collections import namedtuple
from pathlib import Path

import pytest
import ray
from support.run_helpers import parquet_bytes, run_config, uso_rows, write_images

import pipeline.weights.staging as staging
from pipeline.errors import WeightSpaceError
from pipeline.execution.driver import Runner
from pipeline.storage import Storage
from pipeline.weights.inventory import model_files
from pipeline.weights.pull import pull
from pipeline.weights.resolve import local_root, resolve_weights, stage_spec
from pipeline.weights.sources import LocalSource
from pipeline.weights.staging import node_lock, partial_dir, stage
from pipeline.weights.verify import verify_root

pytestmark = pytest.mark.usefixtures("private_caches")  # caches in tmp, see conftest


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class StagingActor:
    """What a model actor does first on a node: stage the weights spec it was given."""

    def pid(self) -> int:
        return os.getpid()

    def stage(self, spec: str, settings) -> staging.StageReport:
        return stage_spec(spec, model="uso", storage=Storage(settings))


@pytest.fixture(scope="module")
def ray_node(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real local Ray (one node, 2 CPUs); its workers share this node-local weight cache."""
    node_cache = tmp_path_factory.mktemp("node") / "weights-cache"
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(
        address="local",  # a new local Ray, never a `ray start` cluster found on the machine
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {
                "RESTYLE_WEIGHTS_CACHE": str(node_cache),
                "RESTYLE_CACHE": str(node_cache.parent / "hash-cache"),
            }
        },
    )
    yield node_cache
    ray.shutdown()


@pytest.mark.slow
def test_two_actors_on_one_node_stage_a_mirror_once(
    ray_node: Path, s3_server, tiny_weights: Path, tmp_path: Path
):
    mirror = s3_server.new_bucket("node") + "/weights"
    pull(LocalSource(tiny_weights), ["uso"], mirror, s3_server.storage(), tmp_path / "scratch")
    actors = [ray.remote(num_cpus=0.25)(StagingActor).remote() for _ in range(2)]
    assert len(set(ray.get([a.pid.remote() for a in actors]))) == 2  # two processes
    reports = ray.get([a.stage.remote(mirror, s3_server.settings()) for a in actors])
    files = model_files(tiny_weights, "uso")
    assert len({r.root for r in reports}) == 1
    root = reports[0].root
    assert root.parent == ray_node / "staged"
    assert sorted(len(r.fetched) for r in reports) == [0, len(files)]  # one download in all
    assert sum(r.bytes_fetched for r in reports) == sum(
        (tiny_weights / p).stat().st_size for p in files
    )
    assert verify_root(root).ok


@pytest.mark.slow
def test_a_run_from_a_mirror_records_the_sha256_of_every_weight_file(
    ray_node: Path, s3_server, tiny_weights: Path, tmp_path: Path
):
    mirror = s3_server.new_bucket("run") + "/weights"
    pull(LocalSource(tiny_weights), ["uso"], mirror, s3_server.storage(), tmp_path / "scratch")
    write_images(tmp_path / "images", 2)
    (tmp_path / "manifest").mkdir()
    (tmp_path / "manifest" / "part-0.parquet").write_bytes(
        parquet_bytes(uso_rows("a", 1, "../images/img0.png", "../images/img1.png"))
    )
    out = tmp_path / "out"
    config = run_config([str(tmp_path / "manifest")], str(out), mirror)
    summary = Runner(config, s3_server.settings(), show_progress=False).run()
    assert (summary.ok, summary.failed) == (1, 0)
    expected = resolve_weights(str(tiny_weights), "uso").sha256
    assert "uso/dit_lora.safetensors" in expected and "t5/spiece.model" in expected
    run_json = json.loads((out / "test" / "run.json").read_text())
    assert run_json["weights"] == expected and run_json["random_weights"] is False
    with tarfile.open(out / "test" / "part-000000.tar") as tar:
        provenance = json.loads(tar.extractfile("a-0.json").read())
    recorded = {w["name"]: w["sha256"] for w in provenance["weights"]}
    assert recorded == expected and provenance["random_weights"] is False
    assert (ray_node / "staged").is_dir()  # the actor staged the mirror on its node


def test_staging_logs_its_time_and_what_it_fetched(
    tiny_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="pipeline.weights.staging")
    report = stage(LocalSource(tiny_weights), ["omniconsistency"], tmp_path / "staged")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("staged "))
    assert (
        f"staged {report.files} weight files from {tiny_weights} into {tmp_path / 'staged'} in "
        in line
    )
    assert f"fetched {report.files} (" in line and "waited 0.0 s for another process" in line


def test_a_second_stage_of_the_same_weights_is_a_no_op(tiny_weights: Path, tmp_path: Path):
    root = tmp_path / "staged"
    first = stage(LocalSource(tiny_weights), ["uso"], root)
    assert first.fetched and stage(LocalSource(tiny_weights), ["uso"], root).fetched == []
    (root / "clip" / "tokenizer.json").unlink()
    assert stage(LocalSource(tiny_weights), ["uso"], root).fetched == ["clip/tokenizer.json"]


def test_a_process_arriving_while_another_stages_waits_for_it(tiny_weights: Path, tmp_path: Path):
    root = tmp_path / "staged"
    holding = threading.Event()

    def other_process_staging() -> None:
        with node_lock(root):
            holding.set()
            time.sleep(1.0)

    other = threading.Thread(target=other_process_staging)
    other.start()
    holding.wait(5)
    report = stage(LocalSource(tiny_weights), ["uso"], root)
    other.join()
    assert report.waited_s >= 0.8


def test_a_partial_download_left_by_a_crash_is_discarded_and_restarted(
    tiny_weights: Path, tmp_path: Path
):
    root = tmp_path / "staged"
    leftover = partial_dir(root) / "uso" / "projector.safetensors.partial"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a file from a process that died")
    stage(LocalSource(tiny_weights), ["uso"], root)
    assert _sha(root / "uso" / "projector.safetensors") == _sha(
        tiny_weights / "uso" / "projector.safetensors"
    )
    assert not leftover.exists()


def test_too_little_disk_space_is_refused_before_any_download(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(
        staging.shutil, "disk_usage", lambda _path: usage(10 << 30, 10 << 30, 1 << 20)
    )
    root = tmp_path / "staged"
    with pytest.raises(WeightSpaceError) as caught:
        stage(LocalSource(tiny_weights), ["uso"], root)
    message = str(caught.value)
    assert (
        f"not enough disk space to stage {len(model_files(tiny_weights, 'uso'))} weight files"
        in message
    )
    assert f"into {root}" in message and "(largest: flux1-dev/ae.safetensors" in message
    assert "0.00 GiB is free" in message and "RESTYLE_WEIGHTS_CACHE" in message
    assert not [p for p in root.rglob("*") if p.is_file() and p.suffix == ".safetensors"]


def test_local_root_of_a_local_folder_stages_nothing(tiny_weights: Path, tmp_path: Path):
    assert local_root(str(tiny_weights), model="uso") == tiny_weights
    assert not (tmp_path / "weights-cache").exists()


def test_a_mirror_stages_byte_identical_files_several_at_a_time(
    s3_server, tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Staging downloads files concurrently (and big ones in ranged parts); each staged file
    has the sha256 of the file the mirror was pulled from."""
    from pipeline.weights.sources import S3MirrorSource

    mirror = s3_server.new_bucket("ranged") + "/weights"
    pull(LocalSource(tiny_weights), ["uso"], mirror, s3_server.storage(), tmp_path / "scratch")
    in_flight, most = [0], [0]
    lock = threading.Lock()
    fetch = staging.fetch_verified

    def counting_fetch(*args, **kwargs):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            time.sleep(0.05)  # long enough for the pool's other downloads to start
            return fetch(*args, **kwargs)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(staging, "fetch_verified", counting_fetch)
    root = tmp_path / "node" / "staged"
    report = stage(S3MirrorSource(mirror, s3_server.storage()), ["uso"], root)
    files = sorted(model_files(tiny_weights, "uso"))
    assert report.fetched == files
    assert {p: _sha(root / p) for p in files} == {p: _sha(tiny_weights / p) for p in files}
    assert 1 < most[0] <= staging.FILE_WORKERS
    assert verify_root(root, ["uso"]).ok
