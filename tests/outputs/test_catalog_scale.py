"""A run folder of many shards on S3, read as a catalog-scale run needs it: the folder listed
once, each marker read once, a records file only where no marker holds its counts, many
requests in flight but a bounded number.
Requests are counted at the project's fault proxy, in front of the real S3 server."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from support.committed_run import FINGERPRINT, write_run
from support.fault_proxy import FaultProxy

from pipeline.outputs.layout import MARKER_INDEX, ShardPaths
from pipeline.outputs.records import ItemRecord, read_records, records_to_parquet
from pipeline.outputs.run_state import RunState
from pipeline.outputs.status import run_status
from pipeline.storage import Storage
from pipeline.storage.concurrent import REQUEST_WORKERS


def through(proxy: FaultProxy, s3_server) -> Storage:
    return Storage(dataclasses.replace(s3_server.settings(), endpoint_url=proxy.endpoint_url))


def listings(proxy: FaultProxy) -> list[tuple[str, str, str]]:
    return [r for r in proxy.requests("GET") if "list-type=2" in r[1]]


def gets_of(proxy: FaultProxy, suffix: str) -> Counter:
    """GET requests per object path ending in `suffix` (listings and the marker index, which
    tests/outputs/test_marker_index.py counts, excluded)."""
    return Counter(
        path.split("?")[0]
        for _, path, _ in proxy.requests("GET")
        if path.endswith(suffix) and not path.endswith(MARKER_INDEX)
    )


def test_a_resume_lists_the_run_folder_once_and_reads_only_the_markers_it_finds(
    s3_server, s3_bucket
):
    run = f"{s3_bucket}/out/run"
    write_run(s3_server.storage(), run, {0: ["a"], 2: ["b"], 3: ["c"]}, references=False)
    # 40 input shards; shard 3's marker names another input file, so it is not done for this one
    shards = [(k, "in-other" if k == 3 else f"in-{k}") for k in range(40)]
    with FaultProxy(s3_server.endpoint_url) as proxy:
        done = RunState(through(proxy, s3_server), run).main_commits(shards, FINGERPRINT)
        assert sorted(done) == [0, 2]
        assert done[2].input_shard == "in-2"
        assert proxy.requests("HEAD") == []  # no existence check per shard
        assert len(listings(proxy)) == 1
        assert sorted(gets_of(proxy, ".stats.json").values()) == [1, 1, 1]
        # one listing, the marker index (none here: a 404), one GET per listed marker
        assert len(proxy.requests()) == 1 + 1 + 3
        proxy.log.clear()
        assert RunState(through(proxy, s3_server), run).main_commits(shards, "another") == {}


def test_marker_reads_overlap_yet_stay_within_the_bounded_pool(s3_server, s3_bucket):
    run = f"{s3_bucket}/out/run"
    write_run(s3_server.storage(), run, {k: [f"i{k}"] for k in range(12)}, references=False)
    with FaultProxy(s3_server.endpoint_url, delay_s=0.05) as proxy:  # a far-away store
        commits = RunState(through(proxy, s3_server), run).commits()
    assert [c.shard for c in commits] == list(range(12))
    assert 1 < proxy.max_in_flight <= REQUEST_WORKERS


def test_status_totals_equal_a_row_by_row_count_listing_once_and_reading_each_marker_once(
    s3_server, s3_bucket
):
    run = f"{s3_bucket}/out/run"
    storage = s3_server.storage()
    write_run(
        storage,
        run,
        {0: ["a", "b"], 1: ["c"], 2: ["d", "e", "f"]},
        failed={1: "bad-1", 2: "bad-2"},
        references=False,
    )
    # an interrupted commit of shard 5: its records are written, its marker is not
    interrupted = ShardPaths(run, 5).records
    storage.write_bytes(
        interrupted,
        records_to_parquet(
            [
                ItemRecord(id="g", key="g", status="ok"),
                ItemRecord(id="h", key="h", status="skipped"),
            ]
        ),
    )
    with FaultProxy(s3_server.endpoint_url) as proxy:
        status = run_status(RunState(through(proxy, s3_server), run))
        assert len(listings(proxy)) == 1
        markers, records = gets_of(proxy, ".stats.json"), gets_of(proxy, ".parquet")
        assert len(markers) == 3 and set(markers.values()) == {1}
        # the committed shards' counts are in their markers: only the interrupted file is read
        assert [path.rsplit("/", 1)[-1] for path in records] == ["part-000005.parquet"]
        assert set(records.values()) == {1}

    by_status: Counter = Counter()
    for uri in storage.glob(f"{run}/part-*.parquet"):
        by_status.update(r.status for r in read_records(storage, uri))
    assert status.items == sum(by_status.values()) == 10
    assert (status.ok, status.skipped) == (by_status["ok"], by_status["skipped"]) == (7, 1)
    assert status.failed == by_status["bad_input"] == 2
    assert dict(status.errors) == {"bad_input": 2}
    assert status.uncommitted == [interrupted]
    assert status.shards_committed == 3 and not status.complete


@pytest.mark.parametrize("workers", [1, 3])
def test_map_bounded_keeps_order_and_raises_the_first_error(workers):
    from pipeline.storage.concurrent import map_bounded

    assert list(map_bounded(lambda x: x * x, range(50), workers)) == [x * x for x in range(50)]

    def fail_on_7(x: int) -> int:
        if x == 7:
            raise ValueError("item 7")
        return x

    results = map_bounded(fail_on_7, range(50), workers)
    assert [next(results) for _ in range(7)] == list(range(7))
    with pytest.raises(ValueError, match="item 7"):
        next(results)
