"""The batch pipeline end to end: manifests in, committed shards out, on a real local Ray.

Every run here uses the real tiny USO / OmniConsistency models loaded from tiny weight files in
the official formats, through the same loaders a production run uses.
"""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from support.run_helpers import (
    parquet_bytes,
    png_bytes,
    run_config,
    uso_rows,
    webdataset_tar,
    write_images,
)

from pipeline.errors import ExitCode, RunConflictError
from pipeline.execution.driver import Runner
from pipeline.outputs import marker_index
from pipeline.outputs.run_state import RunState
from pipeline.outputs.status import run_status
from pipeline.storage import Storage, StorageSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cpu():
    """A local Ray without GPUs; actors take fractional CPUs (2-core machines)."""
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def local_manifest(tmp_path: Path) -> list[str]:
    """Two Parquet shards of USO subject+style items; shard 1 has a corrupt and a missing image."""
    write_images(tmp_path / "images", 2)
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG not really an image")
    folder = tmp_path / "manifest"
    folder.mkdir()
    (folder / "part-0.parquet").write_bytes(
        parquet_bytes(uso_rows("a", 3, "../images/img0.png", "../images/img1.png"))
    )
    rows = uso_rows("b", 3, "../images/img0.png", "../images/img1.png")
    rows[1]["styles"] = ["../images/corrupt.png"]
    rows[2]["subject"] = "../images/does-not-exist.png"
    (folder / "part-1.parquet").write_bytes(parquet_bytes(rows))
    return [str(folder)]


def local_storage() -> Storage:
    return Storage(StorageSettings())


def tar_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_parquet_run_writes_committed_shards_with_records_for_every_item(
    ray_cpu, tiny_weights, local_manifest, tmp_path
):
    out = tmp_path / "out"
    runner = Runner(
        run_config(local_manifest, str(out), tiny_weights), StorageSettings(), show_progress=False
    )
    summary = runner.run()

    assert summary.shards_committed == 2 and not summary.shards_failed
    assert (summary.ok, summary.failed) == (4, 2)
    assert summary.errors == {"bad_input": 1, "io_error": 1}
    assert summary.exit_code == ExitCode.ITEMS_FAILED  # a non-zero exit with a summary
    run = out / "test"
    assert sorted(p.name for p in run.iterdir()) == [
        "README.md",
        "_drivers",  # the run lease is gone at the end; the claims say who ran each shard
        "index",  # the marker index (a cache for status and resume)
        "part-000000.parquet",
        "part-000000.stats.json",
        "part-000000.tar",
        "part-000001.parquet",
        "part-000001.stats.json",
        "part-000001.tar",
        "run.json",
    ]
    assert [p.name for p in (run / "index").iterdir()] == ["markers.parquet"]
    drivers = sorted(str(p.relative_to(run)) for p in (run / "_drivers").rglob("*") if p.is_file())
    assert drivers == ["_drivers/claims/shard-000000.json", "_drivers/claims/shard-000001.json"]

    members = tar_members((run / "part-000000.tar").read_bytes())
    assert sorted(members) == sorted(
        f"a-{i}.{ext}" for i in range(3) for ext in ("png", "txt", "json")
    )
    assert members["a-1.txt"] == b"item 1"  # default caption: the prompt
    provenance = json.loads(members["a-1.json"])
    assert provenance["model"] == "uso" and provenance["parameters"]["width"] == 64
    # tiny weights are random: every output says so, at the top and among its parameters
    assert provenance["random_weights"] is True
    assert provenance["parameters"]["random_weights"] is True
    assert {w["name"] for w in provenance["weights"]} >= {
        "flux1-dev/flux1-dev.safetensors",
        "uso/dit_lora.safetensors",
        "uso/projector.safetensors",
    }
    styles = [i["uri"] for i in provenance["inputs"] if i["role"] == "style"]
    assert styles == [str(tmp_path / "images" / "img1.png")]  # absolute

    records = pq.read_table(run / "part-000001.parquet").to_pylist()
    by_id = {r["id"]: r for r in records}
    assert [r["id"] for r in records] == ["b-0", "b-1", "b-2"]
    assert by_id["b-0"]["status"] == "ok" and by_id["b-0"]["output_key"].endswith(
        "part-000001.tar#b-0"
    )
    assert by_id["b-1"]["status"] == "bad_input" and "corrupt.png" in by_id["b-1"]["error"]
    assert by_id["b-2"]["status"] == "io_error" and "does-not-exist.png" in by_id["b-2"]["error"]
    assert "'b-2'" in by_id["b-2"]["error"]  # the message names the item
    assert len(tar_members((run / "part-000001.tar").read_bytes())) == 3  # only b-0 has a sample

    stats = json.loads((run / "part-000001.stats.json").read_text())
    assert (stats["count"], stats["ok"], stats["failed"]) == (3, 1, 2)
    assert stats["errors"] == {"bad_input": 1, "io_error": 1}
    assert stats["fingerprint"] == summary.fingerprint
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["fingerprint"] == summary.fingerprint
    assert run_json["weights"] == stats["weights"]

    status = run_status(RunState(local_storage(), str(run)))
    assert (status.ok, status.failed, status.shards_committed) == (4, 2, 2)

    # Same config again: both shards are committed, so nothing is redone.
    again = Runner(
        run_config(local_manifest, str(out), tiny_weights), StorageSettings(), show_progress=False
    ).run()
    assert (again.shards_already_done, again.shards_committed) == (2, 0)

    # A changed config (another run seed) is a new fingerprint: never mixed into this folder.
    with pytest.raises(RunConflictError, match="fingerprint"):
        Runner(
            run_config(local_manifest, str(out), tiny_weights, seed=1),
            StorageSettings(),
            show_progress=False,
        ).run()


def test_retry_failed_reruns_only_failed_items_into_a_separate_commit(
    ray_cpu, tiny_weights, local_manifest, tmp_path
):
    out = tmp_path / "out"
    config = run_config(local_manifest, str(out), tiny_weights)
    Runner(config, StorageSettings(), show_progress=False).run()
    run = out / "test"
    committed = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    # The operator fixes the missing image, then retries the failed items.
    (tmp_path / "images" / "does-not-exist.png").write_bytes(png_bytes(7))
    summary = Runner(config, StorageSettings(), show_progress=False).retry_failed()

    # The run's totals, as `restyle status` counts them: one retried item now ok, the
    # corrupt style still failing.
    assert (summary.items_retried, summary.ok, summary.failed) == (2, 5, 1)
    assert summary.exit_code == ExitCode.ITEMS_FAILED
    # The shard's records now hold each item's newest result, pointing at its image.
    records = pq.read_table(run / "part-000001.parquet").to_pylist()
    assert {r["id"]: (r["status"], r["attempts"], r["retry"]) for r in records} == {
        "b-0": ("ok", 1, 0),
        "b-1": ("bad_input", 2, 1),
        "b-2": ("ok", 2, 1),
    }
    assert records[2]["output_key"] == f"{run}/part-000001.retry-01.tar#b-2"
    assert sorted(tar_members((run / "part-000001.retry-01.tar").read_bytes())) == [
        "b-2.json",
        "b-2.png",
        "b-2.txt",
    ]
    assert not (run / "part-000000.retry-01.tar").exists()  # shard 0 had no failures
    # The committed images and markers were not touched.
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name in committed} == committed | {
        "part-000001.parquet": (run / "part-000001.parquet").read_bytes()
    }
    status = run_status(RunState(local_storage(), str(run)))
    assert (status.ok, status.failed, status.retry_commits) == (5, 1, 1)


def test_actor_killed_mid_shard_is_redone_on_a_fresh_actor_with_identical_bytes(
    ray_cpu, tiny_weights, tmp_path
):
    images = write_images(tmp_path / "images", 2)
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(parquet_bytes(uso_rows("k", 6, str(images[0]), str(images[1]))))

    reference = Runner(
        run_config(str(manifest), str(tmp_path / "ref"), tiny_weights),
        StorageSettings(),
        show_progress=False,
    ).run()
    assert reference.ok == 6

    runner = Runner(
        run_config(str(manifest), str(tmp_path / "killed"), tiny_weights),
        StorageSettings(),
        show_progress=False,
    )
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("summary", runner.run()))
    thread.start()
    killed_pid = _kill_actor_after_first_item(runner, timeout_s=240)
    thread.join(timeout=600)
    summary = result["summary"]

    assert killed_pid is not None
    assert summary.shards_committed == 1 and summary.ok == 6 and not summary.shards_failed
    ref_run, killed_run = tmp_path / "ref" / "test", tmp_path / "killed" / "test"
    # No duplicates and byte-identical results: the redone shard equals an uninterrupted one.
    assert (killed_run / "part-000000.tar").read_bytes() == (
        ref_run / "part-000000.tar"
    ).read_bytes()
    records = pq.read_table(killed_run / "part-000000.parquet").to_pylist()
    assert [r["id"] for r in records] == [f"k-{i}" for i in range(6)]
    stats = json.loads((killed_run / "part-000000.stats.json").read_text())
    assert stats["worker"]["pid"] != killed_pid


def _kill_actor_after_first_item(runner: Runner, timeout_s: float) -> int | None:
    """SIGKILL the run's actor once it has finished at least one item of its shard."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pool = runner.pool
        if pool is not None:
            try:
                actor = pool.actors[0]
                live = ray.get(actor.progress.remote(), timeout=10)
                if any(done >= 1 for done, _ in live.values()):
                    pid = ray.get(actor.info.remote(), timeout=10)["pid"]
                    os.kill(pid, signal.SIGKILL)
                    return pid
            except Exception:  # the pool is starting up or swapping actors
                pass
        time.sleep(0.2)
    return None


def test_webdataset_manifest_on_s3_to_s3_output(ray_cpu, tiny_weights, s3_server, s3_bucket):
    storage = s3_server.storage()
    subject, style = png_bytes(1), png_bytes(2)
    samples = [
        {
            "id": "w0",
            "fields": {"prompt": "a tar item", "width": 64, "height": 48, "steps": 2},
            "images": {"subject.png": subject, "style0.png": style},
        },
        {
            "id": "w1",
            "fields": {"prompt": "style only", "width": 48, "height": 48, "steps": 2},
            "images": {"style0.png": style, "style1.png": subject},
        },
    ]
    storage.write_bytes(f"{s3_bucket}/in/shard-000000.tar", webdataset_tar(samples))
    config = run_config(
        f"{s3_bucket}/in/shard-{{000000..000001}}.tar", f"{s3_bucket}/out", tiny_weights
    )
    summary = Runner(config, s3_server.settings(), show_progress=False).run()

    assert (summary.ok, summary.failed, summary.shards_committed) == (2, 0, 1)
    members = tar_members(storage.read_bytes(f"{s3_bucket}/out/test/part-000000.tar"))
    assert sorted(members) == sorted(
        f"{k}.{e}" for k in ("w0", "w1") for e in ("png", "txt", "json")
    )
    parameters = json.loads(members["w1.json"])["parameters"]
    assert json.loads(parameters["model_specific"])["num_styles"] == 2
    assert storage.exists(f"{s3_bucket}/out/test/part-000000.stats.json")
    run_json = storage.read_bytes(f"{s3_bucket}/out/test/run.json").decode()
    assert s3_server.secret_key not in run_json and s3_server.access_key not in run_json


def test_storage_errors_fail_only_that_shard_and_a_rerun_completes_it(
    ray_cpu, tiny_weights, s3_server, s3_bucket, tmp_path
):
    """Parquet manifest and images on S3, outputs on S3 through a proxy that fails shard 1."""
    from dataclasses import replace

    from support.fault_proxy import FaultProxy

    storage = s3_server.storage()
    for i in range(2):
        storage.write_bytes(f"{s3_bucket}/images/img{i}.png", png_bytes(i))
    for k in range(2):
        storage.write_bytes(
            f"{s3_bucket}/in/part-{k}.parquet",
            parquet_bytes(uso_rows(f"f{k}", 1, "../images/img0.png", "../images/img1.png")),
        )
    manifest = f"{s3_bucket}/in/part-*.parquet"
    with FaultProxy(s3_server.endpoint_url) as proxy:
        settings = replace(
            s3_server.settings(max_attempts=2, retry_budget_s=2, retry_base_delay_s=0.1),
            endpoint_url=proxy.endpoint_url,
        )
        proxy.fail_matching("part-000001", status=503, code="SlowDown", method="PUT")
        config = run_config(manifest, f"{s3_bucket}/out", tiny_weights)
        summary = Runner(config, settings, show_progress=False).run()

        assert summary.shards_committed == 1 and list(summary.shards_failed) == [1]
        reason = summary.shards_failed[1]
        assert "part-000001" in reason and "\n" not in reason
        assert "storage unavailable for" in reason and "past the 2 s retry budget" in reason
        assert summary.exit_code == ExitCode.INCOMPLETE
        assert len([r for r in proxy.requests("PUT") if "part-000001" in r[1]]) >= 2  # retried
        assert storage.exists(f"{s3_bucket}/out/test/part-000000.stats.json")
        assert not storage.exists(f"{s3_bucket}/out/test/part-000001.stats.json")

        proxy.clear()  # the storage recovers; the same command finishes the run
        again = Runner(config, settings, show_progress=False).run()
    assert (again.shards_already_done, again.shards_committed, again.exit_code) == (1, 1, 0)


def test_a_storage_outage_shorter_than_the_budget_costs_no_shard(
    ray_cpu, tiny_weights, s3_server, s3_bucket
):
    """Every request fails (503) for 8 s from the first output an actor writes: the commits
    wait it out on the retry budget and the run ends complete."""
    from dataclasses import replace

    from support.fault_proxy import FaultProxy

    storage = s3_server.storage()
    for i in range(2):
        storage.write_bytes(f"{s3_bucket}/images/img{i}.png", png_bytes(i))
    for k in range(3):
        storage.write_bytes(
            f"{s3_bucket}/in/part-{k}.parquet",
            parquet_bytes(uso_rows(f"f{k}", 2, "../images/img0.png", "../images/img1.png")),
        )
    with FaultProxy(s3_server.endpoint_url) as proxy:
        settings = replace(
            s3_server.settings(retry_base_delay_s=0.2, retry_cap_s=2),
            endpoint_url=proxy.endpoint_url,
        )
        done = threading.Event()

        def outage_at_first_output() -> None:
            while not done.is_set():
                if any("/out/test/part-" in path for _, path, _ in proxy.requests("PUT")):
                    proxy.outage_for(8.0)
                    return
                time.sleep(0.05)

        watcher = threading.Thread(target=outage_at_first_output, daemon=True)
        watcher.start()
        config = run_config(f"{s3_bucket}/in/part-*.parquet", f"{s3_bucket}/out", tiny_weights)
        try:
            summary = Runner(config, settings, show_progress=False).run()
        finally:
            done.set()
        failed = [r for r in proxy.requests() if r[2] == "503 SlowDown"]
    assert len(failed) > 3, "the outage never hit the run"
    assert (summary.shards_committed, summary.shards_failed, summary.exit_code) == (3, {}, 0)
    assert summary.ok == 6


def test_omniconsistency_items_are_grouped_by_style_lora(ray_cpu, tiny_weights, tmp_path):
    images = write_images(tmp_path / "images", 1)
    styles = ["Ghibli", "Van_Gogh", "Ghibli", None, "Van_Gogh"]
    rows = [
        {
            "id": f"o{i}",
            "prompt": "a small house",
            "subject": str(images[0]),
            "style_lora": style,
            "width": 64,
            "height": 48,
            "steps": 2,
        }
        for i, style in enumerate(styles)
    ]
    manifest = tmp_path / "omni.parquet"
    manifest.write_bytes(parquet_bytes(rows))
    config = run_config(str(manifest), str(tmp_path / "out"), tiny_weights, model="omniconsistency")
    summary = Runner(config, StorageSettings(), show_progress=False).run()

    assert (summary.ok, summary.failed) == (5, 0)
    run = tmp_path / "out" / "test"
    records = pq.read_table(run / "part-000000.parquet").to_pylist()
    # Items sharing a LoRA run back to back (stable within a group): one load per group.
    assert [r["id"] for r in records] == ["o3", "o0", "o2", "o1", "o4"]
    members = tar_members((run / "part-000000.tar").read_bytes())
    provenance = json.loads(members["o1.json"])
    assert provenance["style_lora"]["name"] == "Van_Gogh"
    assert len(provenance["style_lora"]["sha256"]) == 64
    assert json.loads(members["o3.json"])["style_lora"]["name"] == ""  # no LoRA, same shape


def test_run_and_status_agree_on_every_path_reruns_duplicates_skips_and_retries(
    ray_cpu, tiny_weights, tmp_path
):
    """`restyle run` prints the run's totals and exit code, the very ones `restyle status`
    gives: after a first run with failures, after a rerun with nothing left to do (it used to
    say "0 failed" and exit 0), with a repeated id and a row for another model, and after
    --retry-failed."""
    write_images(tmp_path / "images", 2)
    folder = tmp_path / "manifest"
    folder.mkdir()
    rows = [
        {**row, "model": None}
        for row in uso_rows("d", 4, "../images/img0.png", "../images/img1.png")
    ]
    rows[1]["subject"] = "../images/missing.png"  # fails
    rows[2]["id"] = rows[0]["id"]  # a repeated id: refused as such
    rows[3]["model"] = "omniconsistency"  # another model's row: skipped
    (folder / "part-0.parquet").write_bytes(parquet_bytes(rows))
    config = run_config([str(folder)], str(tmp_path / "out"), tiny_weights)

    def agree(summary):
        state = RunState(local_storage(), config.run_uri)
        status = run_status(state)
        # the run pass left a current marker index: status took every marker from it
        index = marker_index.load(local_storage(), config.run_uri)
        listed = state.listing()
        assert {
            m.rpartition("/")[2]: v
            for m, v in zip(listed.markers.values(), listed.marker_versions.values(), strict=True)
        } == {name: version for name, (version, _) in index.items()}
        ours = (summary.ok, summary.failed, summary.skipped, dict(summary.errors))
        assert ours == (status.ok, status.failed, status.skipped, dict(status.errors))
        assert summary.exit_code == status.exit_code
        assert summary.images_per_s == pytest.approx(status.images_per_s)
        return ours, summary.exit_code

    first = Runner(config, StorageSettings(), show_progress=False).run()
    assert agree(first) == ((1, 2, 1, {"bad_input": 1, "io_error": 1}), ExitCode.ITEMS_FAILED)
    assert "--retry-failed" in first.advice()
    again = Runner(config, StorageSettings(), show_progress=False).run()
    assert (again.shards_committed, again.shards_already_done) == (0, 1)
    assert agree(again) == agree(first)
    assert "--retry-failed" in again.advice()

    (tmp_path / "images" / "missing.png").write_bytes(png_bytes(3))
    retried = Runner(config, StorageSettings(), show_progress=False).retry_failed()
    assert agree(retried) == ((2, 1, 1, {"bad_input": 1}), ExitCode.ITEMS_FAILED)
    # status took those counts from the markers: the retry's holds the whole shard after it
    newest = RunState(local_storage(), config.run_uri).commits()[-1]
    assert newest.retry == 1
    assert newest.stats.shard_counts == {"ok": 2, "bad_input": 1, "skipped": 1}
