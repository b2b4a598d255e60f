"""The marker index is a cache, never the truth: `restyle status` and a resume give exactly
what reading every marker gives, whether the index is current, stale, partial, foreign or
corrupt; with a current one they read no marker at all. Requests are counted at the fault
proxy in front of the real S3 server."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import pyarrow as pa
import pytest
from support.fault_proxy import FaultProxy
from support.marker_commits import FINGERPRINT, claim, commit, forget_counts

from pipeline.outputs import marker_index
from pipeline.outputs.layout import MARKER_INDEX, ShardPaths
from pipeline.outputs.run_state import RunState
from pipeline.outputs.status import run_status
from pipeline.storage import Storage
from pipeline.storage.parquet import table_to_bytes


def build_run(storage: Storage, run: str) -> None:
    """First runs, a retry overlay, a marker from before the counts, an interrupted commit."""
    claim(storage, run, 5)
    commit(storage, run, 0, [("a", 0, "ok"), ("b", 1, "bad_input"), ("a", 2, "bad_input")])
    commit(storage, run, 0, [("b", 1, "ok")], retry=1)
    commit(storage, run, 1, [("c", 0, "skipped"), ("d", 1, "model_error")])
    commit(storage, run, 2, [("e", 0, "ok")])
    forget_counts(storage, ShardPaths(run, 2).marker)
    commit(storage, run, 3, [("f", 0, "ok"), ("g", 1, "io_error")])
    commit(storage, run, 4, [("h", 0, "ok")], interrupted=True)


def write_index(storage: Storage, run: str) -> None:
    """The index of every marker, as the driver writes it at the end of a run pass."""
    marker_index.write(storage, run, RunState(storage, run).refresh_index_entries())


def status_without_index(storage: Storage, run: str):
    storage.delete(f"{run}/{MARKER_INDEX}")
    return run_status(RunState(storage, run))


def through(proxy: FaultProxy, s3_server) -> Storage:
    return Storage(dataclasses.replace(s3_server.settings(), endpoint_url=proxy.endpoint_url))


def gets(proxy: FaultProxy) -> Counter:
    """Object GETs by file name (listings excluded)."""
    return Counter(
        path.split("?")[0].rsplit("/", 1)[-1]
        for _, path, _ in proxy.requests("GET")
        if "list-type=2" not in path
    )


@pytest.fixture(params=["local", "s3"])
def run_folder(request, tmp_path):
    if request.param == "local":
        return Storage(), str(tmp_path / "run")
    s3_server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return s3_server.storage(), f"{bucket}/out/run"


def test_status_with_the_index_equals_status_without(run_folder):
    storage, run = run_folder
    build_run(storage, run)
    without = run_status(RunState(storage, run))
    write_index(storage, run)
    assert storage.exists(f"{run}/{MARKER_INDEX}")
    with_index = run_status(RunState(storage, run))
    assert with_index == without
    assert (with_index.items, with_index.ok, with_index.failed, with_index.skipped) == (9, 5, 3, 1)
    assert with_index.uncommitted == [ShardPaths(run, 4).records, ShardPaths(run, 4).tar]
    assert with_index.images_per_s == without.images_per_s
    plan = RunState(storage, run).retry_plan(FINGERPRINT)
    assert [w.shard for w in plan] == [1, 3]
    assert status_without_index(storage, run) == with_index
    assert RunState(storage, run).retry_plan(FINGERPRINT) == plan


def test_a_stale_index_costs_reads_never_correctness(run_folder):
    """Markers rewritten after the index (a new retry, a marker rewritten in place), one the
    index lists that is gone: the changed ones are read fresh, the result is unchanged."""
    storage, run = run_folder
    build_run(storage, run)
    write_index(storage, run)
    commit(storage, run, 1, [("d", 1, "ok")], retry=1)  # a new attempt
    commit(storage, run, 3, [("f", 0, "ok"), ("g", 1, "ok")])  # shard 3 redone in place
    storage.delete(ShardPaths(run, 0, 1).marker)  # the index still lists it
    stale = run_status(RunState(storage, run))
    assert stale == status_without_index(storage, run)
    assert (stale.ok, stale.failed) == (7, 1)


@pytest.mark.parametrize(
    "index",
    [
        b"not parquet at all",
        b"PAR1" + b"\0" * 64 + b"PAR1",
        table_to_bytes(pa.table({"name": ["part-000000.stats.json"], "content": ["{}"]})),
    ],
    ids=["garbage", "broken-parquet", "another-schema"],
)
def test_an_unreadable_or_foreign_index_is_ignored(tmp_path, index, caplog):
    storage, run = Storage(), str(tmp_path / "run")
    build_run(storage, run)
    expected = run_status(RunState(storage, run))
    storage.write_bytes(f"{run}/{MARKER_INDEX}", index)
    with caplog.at_level(logging.DEBUG, logger="pipeline.outputs.marker_index"):
        assert run_status(RunState(storage, run)) == expected
    assert "not used" in caplog.text


def test_an_entry_whose_content_is_not_a_marker_is_read_from_the_marker(tmp_path):
    storage, run = Storage(), str(tmp_path / "run")
    build_run(storage, run)
    expected = run_status(RunState(storage, run))
    entries = RunState(storage, run).refresh_index_entries()
    name = "part-000001.stats.json"
    entries[name] = (entries[name][0], b"{not json")
    marker_index.write(storage, run, entries)
    assert run_status(RunState(storage, run)) == expected


def test_with_a_current_index_status_and_resume_read_no_marker(s3_server, s3_bucket):
    run = f"{s3_bucket}/out/run"
    storage = s3_server.storage()
    build_run(storage, run)
    write_index(storage, run)
    expected = status_without_index(storage, run)
    write_index(storage, run)
    with FaultProxy(s3_server.endpoint_url) as proxy:
        status = run_status(RunState(through(proxy, s3_server), run))
        listings = [p for _, p, _ in proxy.requests("GET") if "list-type=2" in p]
        # run.json, the listing, the index, and the records files no marker vouches for (an
        # old marker's shard, an interrupted commit's): no marker
        assert len(listings) == 1
        assert gets(proxy) == Counter(
            {
                "run.json": 1,
                "markers.parquet": 1,
                "part-000002.parquet": 1,
                "part-000004.parquet": 1,
            }
        )
        assert status == expected
        proxy.log.clear()
        shards = [(k, f"in/part-{k}.parquet") for k in range(6)]
        done = RunState(through(proxy, s3_server), run).main_commits(shards, FINGERPRINT)
        assert sorted(done) == [0, 1, 2, 3]
        assert gets(proxy) == Counter({"markers.parquet": 1})
        # a marker rewritten since: read fresh, and only it
        commit(storage, run, 1, [("c", 0, "skipped"), ("d", 1, "ok")])
        proxy.log.clear()
        done = RunState(through(proxy, s3_server), run).main_commits(shards, FINGERPRINT)
        assert gets(proxy) == Counter({"markers.parquet": 1, "part-000001.stats.json": 1})
        assert done[1].shard_counts == {"ok": 1, "skipped": 1}


def test_an_index_that_cannot_be_written_is_a_warning(tmp_path, caplog):
    storage, run = Storage(), str(tmp_path / "run")
    build_run(storage, run)
    (tmp_path / "run" / "index").write_bytes(b"a file where the index folder should be")
    with caplog.at_level(logging.WARNING):
        write_index(storage, run)
    assert "marker index" in caplog.text and "not written" in caplog.text
    assert run_status(RunState(storage, run)).items == 9


def test_the_keeper_rewrites_the_index_mid_run_at_most_every_interval(tmp_path):
    storage, run = Storage(), str(tmp_path / "run")
    build_run(storage, run)
    index = tmp_path / "run" / "index" / "markers.parquet"
    state = RunState(storage, run)
    slow = marker_index.IndexKeeper(storage, run, state.fork().refresh_index_entries, 3600.0)
    slow.committed()
    assert not index.exists()  # the interval has not passed
    eager = marker_index.IndexKeeper(storage, run, state.fork().refresh_index_entries, 0.0)
    eager.committed()  # written in a background thread
    eager.wait()
    assert set(marker_index.load(storage, run)) == {
        "part-000000.stats.json",
        "part-000000.retry-01.stats.json",
        "part-000001.stats.json",
        "part-000002.stats.json",
        "part-000003.stats.json",
    }


def test_the_index_is_reached_by_no_documented_glob(tmp_path):
    storage, run = Storage(), str(tmp_path / "run")
    build_run(storage, run)
    write_index(storage, run)
    for glob in ("part-*.tar", "part-*.parquet"):
        assert storage.glob(f"{run}/{glob}") == storage.glob(f"{run}/**/{glob}")
        assert not any("/index/" in uri[len(run) :] for uri in storage.glob(f"{run}/**/{glob}"))
