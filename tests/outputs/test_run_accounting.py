"""What a run wrote, counted the one way `restyle run` and `restyle status` both count it: every
record (a repeated id included), the newest record of each row, one images/s, one exit code."""

from __future__ import annotations

import io
import json
import time

import pytest

from pipeline.errors import ExitCode, RunConflictError
from pipeline.outputs.commit import (
    ItemRecord,
    SampleTarWriter,
    ShardPaths,
    ShardStats,
    ShardWriter,
    sample_key,
)
from pipeline.outputs.layout import LAYOUT_VERSION
from pipeline.outputs.run_state import RunState
from pipeline.outputs.status import images_per_second, run_status
from pipeline.storage import Storage

FINGERPRINT = "f" * 16


def commit(storage, folder, shard, rows, started=0.0, finished=10.0, retry=0):
    """Commit `rows` [(id, row, status)] as shard `shard` (or its retry) into `folder` with the
    real writer."""
    stats = ShardStats(shard, f"in/part-{shard}.parquet", "r", FINGERPRINT)
    paths = ShardPaths(folder, shard, retry)
    writer = ShardWriter(storage, paths, stats)
    for item_id, row, status in rows:
        key = sample_key(item_id)
        if status == "ok":
            writer.add_sample(key, {"png": b"png", "txt": b"t", "json": b"{}"})
        writer.add_record(ItemRecord(item_id, key, status, input_row=row, retry=retry))
    committed = writer.commit()
    committed.started_at, committed.finished_at = started, finished  # a known span
    storage.write_bytes(paths.marker, committed.to_json())
    return committed


def claim(storage, run, shards=2):
    """run.json as a run writes it, as far as status reads it."""
    RunState(storage, run).write_run_json(
        {
            "fingerprint": FINGERPRINT,
            "fingerprint_fields": {},
            "config": {"weights": "tiny"},
            "random_weights": True,
            "input_shards": [f"in/part-{k}.parquet" for k in range(shards)],
            "layout": LAYOUT_VERSION,
        }
    )


def test_a_repeated_id_counts_as_the_failed_row_it_is_in_status_as_in_the_marker(tmp_path):
    storage, run = Storage(), str(tmp_path / "run")
    claim(storage, run, shards=1)
    marker = commit(storage, run, 0, [("a", 0, "ok"), ("a", 1, "bad_input"), ("b", 2, "ok")])
    status = run_status(RunState(storage, run))
    assert (marker.ok, marker.failed) == (2, 1)
    assert (status.items, status.ok, status.failed, dict(status.errors)) == (
        3,
        2,
        1,
        {"bad_input": 1},
    )
    # A retry never redoes an id that has an ok record (its other row repeats it)...
    assert RunState(storage, run).retry_plan(FINGERPRINT) == []
    # ...and a retry commit overlays rows, not ids: the repeat never replaces the first row.
    commit(storage, run, 0, [("a", 0, "ok"), ("a", 1, "bad_input")], retry=1)
    status = run_status(RunState(storage, run))
    assert (status.items, status.ok, status.failed, status.retry_commits) == (3, 2, 1, 1)
    assert status.exit_code == ExitCode.ITEMS_FAILED


def test_status_exit_code_says_what_to_do_next(tmp_path):
    storage, run = Storage(), str(tmp_path / "run")
    claim(storage, run, shards=2)
    commit(storage, run, 0, [("a", 0, "ok"), ("b", 1, "skipped")])
    status = run_status(RunState(storage, run))
    assert (status.shards_missing, status.skipped, status.exit_code) == (1, 1, ExitCode.INCOMPLETE)
    commit(storage, run, 1, [("c", 0, "ok")])
    status = run_status(RunState(storage, run))
    assert (status.exit_code, status.weights, status.random_weights) == (ExitCode.OK, "tiny", True)


def test_images_per_second_counts_overlapping_shards_once_and_no_gap_between_runs():
    class Commit:
        def __init__(self, start, end):
            self.stats = ShardStats(0, "", "", "", started_at=start, finished_at=end)

    # Two shards overlapping on one actor (0-10, 5-15), then a resumed run the next day.
    commits = [Commit(0, 10), Commit(5, 15), Commit(86_400, 86_405)]
    assert images_per_second(40, commits) == pytest.approx(40 / 20)


def test_a_changed_config_is_refused_naming_only_what_changed(tmp_path):
    """run.json stores lists; the new config holds tuples (scoring metrics): compared as stored."""
    storage, run = Storage(), str(tmp_path / "run")
    fields = {"seed": 0, "scoring": {"metrics": (), "model": ""}, "sampling": {"steps": 2}}
    state = RunState(storage, run)
    state.write_run_json(
        {"fingerprint": "a" * 16, "fingerprint_fields": fields, "layout": LAYOUT_VERSION}
    )
    changed = {**fields, "seed": 1}
    with pytest.raises(RunConflictError, match=r"\(changed: seed\)"):
        state.claim({"fingerprint": "b" * 16, "fingerprint_fields": changed})
    assert state.check_claim({"fingerprint": "a" * 16, "fingerprint_fields": fields}) is False


def test_sample_tars_are_byte_for_byte_what_webdataset_writes():
    """The commit writes tars without importing webdataset (which imports torch); a trainer
    reading them, and every earlier run's bytes, see no difference."""
    import webdataset as wds

    samples = [
        ("a", {"png": b"\x89PNG" * 100, "txt": b"a caption", "json": b'{"id": "a"}'}),
        ("b-1f2e3d4c", {"jpg": b"\xff\xd8" * 3000, "txt": b"", "style.jpg": b"s" * 10}),
    ]
    ours, theirs = io.BytesIO(), io.BytesIO()
    writer = SampleTarWriter(ours)
    reference = wds.TarWriter(theirs, encoder=False, mtime=0.0)
    for key, members in samples:
        writer.write(key, members)
        reference.write({"__key__": key, **members})
    writer.close()
    reference.close()
    assert ours.getvalue() == theirs.getvalue()


def test_status_json_round_trips(tmp_path):
    storage, run = Storage(), str(tmp_path / "run")
    claim(storage, run, shards=1)
    commit(storage, run, 0, [("a", 0, "ok")], started=time.time() - 2, finished=time.time())
    status = run_status(RunState(storage, run))
    assert json.loads(json.dumps(status.__dict__, default=str))["ok"] == 1
