"""A shard commit publishes its tar and records before the marker, and a failed commit
publishes no marker; deterministic names make a redo overwrite instead of duplicating. A retry
commit overlays its records on the shard's current records before its own marker, and an
interrupted retry is redone under its own names."""

from __future__ import annotations

import io
import tarfile

import pytest

from pipeline.outputs.commit import ShardStats, ShardWriter, read_marker, sample_key
from pipeline.outputs.layout import ShardPaths
from pipeline.outputs.records import ItemRecord, read_records
from pipeline.outputs.run_state import RetryWork, RunState
from pipeline.storage import Storage, StorageError, StorageSettings


class RecordingStorage(Storage):
    """The real local storage, noting the order in which objects get published."""

    def __init__(self, fail_on: str | None = None):
        super().__init__(StorageSettings())
        self.published: list[str] = []
        self.fail_on = fail_on

    def _publish(self, uri: str) -> None:
        if self.fail_on and uri.endswith(self.fail_on):
            raise StorageError(uri, "write", "disk full (injected)")
        self.published.append(uri.rsplit("/", 1)[-1])

    def write_bytes(self, uri: str, data: bytes) -> None:
        self._publish(uri)
        super().write_bytes(uri, data)

    def upload_file(self, uri: str, local_source) -> None:
        self._publish(uri)
        super().upload_file(uri, local_source)


def write_shard(storage: Storage, folder: str, ids: list[str]) -> ShardStats:
    stats = ShardStats(shard=3, input_shard="in/part-3.parquet", run="r", fingerprint="f")
    writer = ShardWriter(storage, ShardPaths(folder, 3), stats)
    for item_id in ids:
        key = sample_key(item_id)
        writer.add_sample(key, {"png": b"png-bytes", "txt": item_id.encode(), "json": b"{}"})
        writer.add_record(ItemRecord(id=item_id, key=key, status="ok"))
    writer.add_record(ItemRecord(id="bad", key="bad", status="bad_input", error="corrupt"))
    return writer.commit()


def test_marker_is_published_last(tmp_path):
    storage = RecordingStorage()
    stats = write_shard(storage, str(tmp_path), ["a", "b"])
    assert storage.published == ["part-000003.tar", "part-000003.parquet", "part-000003.stats.json"]
    assert (stats.count, stats.ok, stats.failed, stats.errors) == (3, 2, 1, {"bad_input": 1})
    marker = read_marker(storage, str(tmp_path / "part-000003.stats.json"))
    assert marker == stats
    assert [r.id for r in read_records(storage, str(tmp_path / "part-000003.parquet"))] == [
        "a",
        "b",
        "bad",
    ]


def test_a_failed_commit_publishes_no_marker_and_a_redo_overwrites(tmp_path):
    with pytest.raises(StorageError):
        write_shard(RecordingStorage(fail_on=".parquet"), str(tmp_path), ["a", "b"])
    assert not (tmp_path / "part-000003.stats.json").exists()  # not committed: will be redone

    write_shard(RecordingStorage(), str(tmp_path), ["a", "b"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "part-000003.parquet",
        "part-000003.stats.json",
        "part-000003.tar",
    ]
    with tarfile.open(fileobj=io.BytesIO((tmp_path / "part-000003.tar").read_bytes())) as tar:
        assert tar.getnames() == ["a.json", "a.png", "a.txt", "b.json", "b.png", "b.txt"]


def test_sample_keys_are_webdataset_safe_and_distinct():
    assert sample_key("sku-123_A") == "sku-123_A"
    dotted, underscored = sample_key("a.b"), sample_key("a_b")
    assert "." not in dotted and "/" not in sample_key("x/y") and dotted != underscored


def retry_shard(storage: Storage, folder: str, retry: int, results: dict[str, str]) -> ShardStats:
    """Retry attempt `retry` of shard 3: `results` maps re-run ids to their new status."""
    stats = ShardStats(shard=3, input_shard="in/part-3.parquet", run="r", fingerprint="f")
    writer = ShardWriter(storage, ShardPaths(folder, 3, retry), stats)
    for item_id, status in results.items():
        if status == "ok":
            writer.add_sample(item_id, {"png": b"png-bytes", "txt": b"", "json": b"{}"})
        writer.add_record(
            ItemRecord(id=item_id, key=item_id, status=status, attempts=2, retry=retry)
        )
    return writer.commit()


def test_a_retry_rewrites_the_current_records_before_its_marker(tmp_path):
    write_shard(RecordingStorage(), str(tmp_path), ["a", "b"])
    storage = RecordingStorage()
    stats = retry_shard(storage, str(tmp_path), 1, {"bad": "ok"})
    assert storage.published == [
        "part-000003.retry-01.tar",
        "part-000003.parquet",
        "part-000003.retry-01.stats.json",
    ]
    assert (stats.retry, stats.count, stats.ok) == (1, 1, 1)
    current = read_records(storage, str(tmp_path / "part-000003.parquet"))
    assert [(r.id, r.status, r.retry) for r in current] == [
        ("a", "ok", 0),
        ("b", "ok", 0),
        ("bad", "ok", 1),
    ]
    state = RunState(storage, str(tmp_path))
    assert [(c.shard, c.retry) for c in state.commits()] == [(3, 0), (3, 1)]
    assert state.retry_plan("f") == []  # nothing failed any more


def test_an_interrupted_retry_is_redone_under_its_own_names(tmp_path):
    write_shard(RecordingStorage(), str(tmp_path), ["a", "b"])
    with pytest.raises(StorageError):  # records rewritten, then the marker write fails
        retry_shard(
            RecordingStorage(fail_on="retry-01.stats.json"), str(tmp_path), 1, {"bad": "ok"}
        )
    state = RunState(Storage(StorageSettings()), str(tmp_path))
    # The item looks done in the current records, but its commit never finished: redo it as
    # retry 1 again (overwriting its tar), counting only the attempt that did finish.
    assert state.retry_plan("f") == [RetryWork(3, 1, frozenset({"bad"}), {"bad": 1})]
    retry_shard(RecordingStorage(), str(tmp_path), 1, {"bad": "bad_input"})
    assert state.retry_plan("f") == [RetryWork(3, 2, frozenset({"bad"}), {"bad": 2})]


def test_a_commit_removes_the_temp_files_an_interrupted_commit_of_its_shard_left(tmp_path):
    leftovers = [
        tmp_path / ".part-000003.tar.k1l2m3.tmp",  # a kill between write and rename
        tmp_path / ".part-000003.stats.json.x9y8.tmp",
        tmp_path / ".part-000003.retry-01.tar.abcd.tmp",
    ]
    other_shard = tmp_path / ".part-000004.tar.zzzz.tmp"
    for path in [*leftovers, other_shard]:
        path.write_bytes(b"half a tar")
    write_shard(Storage(StorageSettings()), str(tmp_path), ["a"])
    assert not any(p.exists() for p in leftovers)
    assert other_shard.exists()  # another shard's commit may still be running
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [
        other_shard.name
    ]


def test_a_commit_on_s3_aborts_the_multipart_uploads_an_interrupted_commit_of_its_shard_left(
    s3_server, s3_bucket
):
    """A writer killed mid-upload leaves its multipart upload open (parts stored and billed,
    invisible to listings); the next commit of that shard aborts every attempt's, and only its."""
    client = s3_server.client()
    bucket = s3_bucket.removeprefix("s3://")

    def start_upload(key: str) -> None:
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)
        client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024
        )

    def open_keys() -> list[str]:
        return sorted(
            u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        )

    left = ["run/part-000003.tar", "run/part-000003.retry-01.tar", "run/part-000003.tar"]
    others = ["run/part-000004.tar", "run/part-0000030.tar", "other/part-000003.tar"]
    for key in left + others:
        start_upload(key)
    assert open_keys() == sorted(left + others)

    stats = write_shard(s3_server.storage(), f"{s3_bucket}/run", ["a", "b"])

    assert stats.ok == 2
    assert open_keys() == sorted(others)  # other shards' commits may still be running
    storage = s3_server.storage()
    assert storage.list(f"{s3_bucket}/run") == [
        f"{s3_bucket}/run/part-000003.{suffix}" for suffix in ("parquet", "stats.json", "tar")
    ]
    assert storage.abort_uploads(f"{s3_bucket}/run/part-000004.") == 1
    assert storage.abort_uploads(f"{s3_bucket}/run/part-000004.") == 0


def test_a_complete_run_aborts_stray_uploads_of_killed_writers_under_it_only(s3_server, s3_bucket):
    """An actor of a killed driver may go on writing after its shard was redone and committed
    elsewhere; once every shard is committed, what is still open under the run's `part-` prefix
    is such a stray (the driver calls this at the end of a complete run)."""
    from pipeline.outputs.commit import abort_stray_uploads

    client = s3_server.client()
    bucket = s3_bucket.removeprefix("s3://")
    for key in ["run/part-000001.tar", "run/part-000002.retry-01.tar", "run-b/part-000001.tar"]:
        client.create_multipart_upload(Bucket=bucket, Key=key)

    assert abort_stray_uploads(s3_server.storage(), f"{s3_bucket}/run") == 2
    open_keys = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert open_keys == ["run-b/part-000001.tar"]  # another run's folder, though its name shares
    assert abort_stray_uploads(s3_server.storage(), f"{s3_bucket}/run") == 0


def test_a_policy_without_multipart_permissions_warns_and_still_commits(
    s3_server, s3_bucket, caplog
):
    """Aborting is cleanup: where the credentials may not list or abort multipart uploads
    (AccessDenied), the commit says so in a warning and publishes the shard anyway."""
    from dataclasses import replace

    from support.fault_proxy import FaultProxy

    with FaultProxy(s3_server.endpoint_url) as proxy:
        proxy.fail_matching("?uploads", status=403, code="AccessDenied", method="GET")
        settings = replace(s3_server.settings(max_attempts=1), endpoint_url=proxy.endpoint_url)
        with caplog.at_level("WARNING", logger="pipeline.outputs.commit"):
            stats = write_shard(Storage(settings), f"{s3_bucket}/run", ["a"])
        assert any("?uploads" in path for _, path, _ in proxy.requests("GET"))
    assert stats.ok == 1
    assert s3_server.storage().exists(f"{s3_bucket}/run/part-000003.stats.json")
    assert "s3:ListBucketMultipartUploads" in caplog.text and "part-000003." in caplog.text
