"""`restyle status` counts items from the commit markers (`ShardStats.shard_counts`) and gives
exactly what counting every row of `part-*.parquet` gives: across first runs, retries that
overlay rows, repeated ids, interrupted commits and markers written before the counts existed
(for those, and only those, the records file is read)."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter

from support.fault_proxy import FaultProxy
from support.marker_commits import FINGERPRINT, claim, commit, forget_counts

from pipeline.outputs.commit import ShardStats
from pipeline.outputs.layout import MARKER_INDEX, ShardPaths
from pipeline.outputs.records import read_records
from pipeline.outputs.run_state import RunState
from pipeline.outputs.status import RunStatus, run_status
from pipeline.storage import Storage

OUTCOMES = ["ok", "ok", "ok", "skipped", "bad_input", "model_error", "out_of_memory"]


def row_by_row(storage: Storage, run: str) -> Counter:
    """status -> rows, over every record of the documented glob: what a reader counts."""
    counts: Counter = Counter()
    for uri in storage.glob(f"{run}/part-*.parquet"):
        counts.update(str(r.status) for r in read_records(storage, uri))
    return counts


def assert_counts_agree(status: RunStatus, counts: Counter) -> None:
    failed = {k: v for k, v in counts.items() if k not in ("ok", "skipped")}
    assert status.items == sum(counts.values())
    assert (status.ok, status.skipped) == (counts["ok"], counts["skipped"])
    assert status.failed == sum(failed.values())
    assert dict(status.errors) == failed


def test_status_from_markers_equals_a_row_count_through_retries_repeats_and_interruptions(
    tmp_path,
):
    """Random runs (fixed seeds): first commits with repeated ids, `--retry-failed` rounds
    chosen by `retry_plan` as the runner chooses them, some commits interrupted and redone,
    some markers from before the counts; after every step status equals the row count."""
    storage = Storage()
    for seed in range(6):
        rng = random.Random(seed)
        run = str(tmp_path / f"run-{seed}")
        shards = 4
        claim(storage, run, shards)
        state = RunState(storage, run)
        for shard in range(shards):
            ids = [f"s{shard}-{n}" for n in range(rng.randint(1, 12))]
            rows = [(item_id, n, rng.choice(OUTCOMES)) for n, item_id in enumerate(ids)]
            if rng.random() < 0.5:  # a manifest row repeating an id gets a failed record
                rows.append((rng.choice(ids), len(rows), "bad_input"))
            if rng.random() < 0.3:  # killed before its marker, then redone whole
                commit(storage, run, shard, rows, interrupted=True)
                assert_counts_agree(run_status(state), row_by_row(storage, run))
            commit(storage, run, shard, rows)
            if rng.random() < 0.25:
                forget_counts(storage, ShardPaths(run, shard).marker)
            assert_counts_agree(run_status(state), row_by_row(storage, run))
        for _ in range(3):  # --retry-failed rounds
            for work in state.retry_plan(FINGERPRINT):
                current = {r.id: r for r in state.current_records(work.shard)}
                rows = [
                    (item_id, current[item_id].input_row, rng.choice(OUTCOMES))
                    for item_id in sorted(work.only_ids)
                ]
                interrupted = rng.random() < 0.3
                commit(storage, run, work.shard, rows, work.retry, interrupted)
                if rng.random() < 0.2 and not interrupted:
                    forget_counts(storage, ShardPaths(run, work.shard, work.retry).marker)
                assert_counts_agree(run_status(state), row_by_row(storage, run))


def test_a_retry_marker_holds_the_whole_shard_after_its_overlay(tmp_path):
    storage, run = Storage(), str(tmp_path / "run")
    claim(storage, run, 1)
    commit(storage, run, 0, [("a", 0, "ok"), ("b", 1, "bad_input"), ("c", 2, "model_error")])
    commit(storage, run, 0, [("b", 1, "ok"), ("c", 2, "out_of_memory")], retry=1)
    marker = ShardStats.from_json(storage.read_bytes(ShardPaths(run, 0, 1).marker))
    assert (marker.count, marker.ok, marker.failed) == (2, 1, 1)  # the re-run items
    assert marker.shard_counts == {"ok": 2, "out_of_memory": 1}  # the shard's records file


def test_markers_read_by_this_restyle_may_come_from_an_older_or_newer_one():
    old = {"shard": 3, "input_shard": "in", "run": "r", "fingerprint": FINGERPRINT, "ok": 2}
    assert ShardStats.from_json(json.dumps(old).encode()).shard_counts is None
    newer = {**old, "shard_counts": {"ok": 2}, "a_later_field": [1, 2]}
    assert ShardStats.from_json(json.dumps(newer).encode()).shard_counts == {"ok": 2}


def test_status_reads_no_records_file_where_markers_have_counts(s3_server, s3_bucket):
    """Counted at the fault proxy in front of the real S3 server: one listing, each marker
    read once, and a records file only for the shards no marker vouches for."""
    run = f"{s3_bucket}/out/run"
    storage = s3_server.storage()
    claim(storage, run, 5)
    commit(storage, run, 0, [("a", 0, "ok"), ("b", 1, "bad_input"), ("a", 2, "bad_input")])
    commit(storage, run, 0, [("b", 1, "ok")], retry=1)
    commit(storage, run, 1, [("c", 0, "skipped"), ("d", 1, "model_error")])
    commit(storage, run, 2, [("e", 0, "ok")])
    forget_counts(storage, ShardPaths(run, 2).marker)  # written by an earlier restyle
    commit(storage, run, 3, [("f", 0, "ok"), ("g", 1, "io_error")])
    commit(storage, run, 3, [("g", 1, "ok")], retry=1, interrupted=True)  # records rewritten
    commit(storage, run, 4, [("h", 0, "ok")], interrupted=True)

    with FaultProxy(s3_server.endpoint_url) as proxy:
        through = Storage(
            dataclasses.replace(s3_server.settings(), endpoint_url=proxy.endpoint_url)
        )
        status = run_status(RunState(through, run))
        gets = Counter(path.split("?")[0] for _, path, _ in proxy.requests("GET"))
    records_read = sorted(
        path.rsplit("/", 1)[-1]
        for path in gets
        if path.endswith(".parquet") and not path.endswith(MARKER_INDEX)  # no index here: 404
    )
    assert records_read == ["part-000002.parquet", "part-000003.parquet", "part-000004.parquet"]
    assert set(gets.values()) == {1}
    assert_counts_agree(status, row_by_row(storage, run))
    assert (status.items, status.ok, status.failed, status.skipped) == (9, 6, 2, 1)
    interrupted = [ShardPaths(run, 3, 1).tar, ShardPaths(run, 4).records, ShardPaths(run, 4).tar]
    assert status.uncommitted == interrupted and not status.complete
