"""A shard commit publishes its tar and records before the marker, and a failed commit
publishes no marker; deterministic names make a redo overwrite instead of duplicating."""

from __future__ import annotations

import io
import tarfile

import pytest

from pipeline.outputs.commit import (
    ItemRecord,
    ShardPaths,
    ShardStats,
    ShardWriter,
    read_marker,
    read_records,
    sample_key,
)
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
