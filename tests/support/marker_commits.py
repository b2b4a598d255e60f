"""Commits made with the real writer (`ShardWriter`, marker last) for tests that count from
markers: first runs, retries, interrupted commits and markers from before the counts."""

from __future__ import annotations

import json

from pipeline.outputs.commit import ShardStats, ShardWriter, sample_key
from pipeline.outputs.layout import LAYOUT_VERSION, ShardPaths
from pipeline.outputs.records import ItemRecord
from pipeline.outputs.run_state import RunState
from pipeline.storage import Storage

FINGERPRINT = "5a" * 8


def claim(storage: Storage, run: str, shards: int) -> None:
    RunState(storage, run).write_run_json(
        {
            "fingerprint": FINGERPRINT,
            "config": {"weights": "tiny"},
            "input_shards": [f"in/part-{k}.parquet" for k in range(shards)],
            "layout": LAYOUT_VERSION,
        }
    )


def commit(storage, run, shard, rows, retry=0, interrupted=False) -> None:
    """Commit `rows` [(id, input row, status)] with the real writer; `interrupted`: the marker
    never arrives (tar and records are published, as when a commit is killed before its end)."""
    stats = ShardStats(shard, f"in/part-{shard}.parquet", "r", FINGERPRINT, started_at=1.0)
    paths = ShardPaths(run, shard, retry)
    writer = ShardWriter(storage, paths, stats)
    for item_id, row, status in rows:
        if status == "ok":
            writer.add_sample(sample_key(item_id), {"png": b"png", "json": b"{}"})
        writer.add_record(
            ItemRecord(item_id, sample_key(item_id), status, input_row=row, retry=retry)
        )
    writer.commit()
    if interrupted:
        storage.delete(paths.marker)


def forget_counts(storage: Storage, marker_uri: str) -> None:
    """Rewrite a marker as restyle wrote it before markers held the shard's counts."""
    data = json.loads(storage.read_bytes(marker_uri))
    del data["shard_counts"]
    storage.write_bytes(marker_uri, json.dumps(data).encode())
