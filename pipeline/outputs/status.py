"""`restyle status`: what a run folder holds, counted from what its readers read.

Item counts come from the current records (`part-*.parquet`, one row per item), so they are
exactly what a reader of that glob counts; shard counts and throughput come from the commit
markers. Objects without a marker (an interrupted commit) are listed, and a run with any is
not complete.

Bounded memory at catalog scale (10^7 items in 10^4 record files): the folder is listed once,
each marker read once, and of each records file only the `status` column is decoded and
counted column-wise (`pyarrow.compute.value_counts`), `REQUEST_WORKERS` files at a time; no
per-item Python object is ever made.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow.compute as pc

from pipeline.errors import ItemStatus
from pipeline.outputs.run_state import RunState
from pipeline.storage.concurrent import map_bounded
from pipeline.storage.parquet import table_from_bytes


@dataclass
class RunStatus:
    run_uri: str
    fingerprint: str | None
    input_shards: int
    shards_committed: int
    retry_commits: int
    items: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    errors: Counter = field(default_factory=Counter)
    uncommitted: list[str] = field(default_factory=list)  # tars and records without a marker
    images_per_s: float = 0.0  # ok images over the span from first shard start to last commit
    model_fraction: float = 0.0  # model time / actor busy time (see `model_fraction`)

    @property
    def complete(self) -> bool:
        return (
            self.shards_committed == self.input_shards and self.failed == 0 and not self.uncommitted
        )


def run_status(state: RunState) -> RunStatus:
    run_json = state.read_run_json()
    if run_json is None:
        raise FileNotFoundError(f"{state.run_uri}: no run.json (not a restyle run folder)")
    fingerprint = run_json["fingerprint"]
    listing = state.listing()
    commits = [c for c in state.commits(listing) if c.stats.fingerprint == fingerprint]
    main = [c for c in commits if c.retry == 0]
    status = RunStatus(
        state.run_uri,
        fingerprint,
        len(run_json.get("input_shards", [])),
        len(main),
        len(commits) - len(main),
    )
    committed = {(c.shard, c.retry) for c in commits}
    status.uncommitted = sorted(
        [uri for key, uri in listing.tars.items() if key not in committed]
        + [uri for shard, uri in listing.records.items() if (shard, 0) not in committed]
    )
    records = [uri for _, uri in sorted(listing.records.items())]
    for counts in map_bounded(lambda uri: status_counts(state, uri), records):
        _add(status, counts)
    if commits:
        span = max(c.stats.finished_at for c in commits) - min(c.stats.started_at for c in commits)
        status.images_per_s = status.ok / span if span > 0 else 0.0
        status.model_fraction = model_fraction(commits)
    return status


def status_counts(state: RunState, uri: str) -> dict[str, int]:
    """status -> items in one records file; only that column is decoded, and counted in Arrow."""
    column = table_from_bytes(state.storage.read_bytes(uri), columns=["status"])["status"]
    return {entry["values"].as_py(): entry["counts"].as_py() for entry in pc.value_counts(column)}


def _add(status: RunStatus, counts: dict[str, int]) -> None:
    for value, count in counts.items():
        status.items += count
        if value == ItemStatus.OK:
            status.ok += count
        elif value == ItemStatus.SKIPPED:
            status.skipped += count
        else:
            status.failed += count
            status.errors[value] += count


def model_fraction(commits: list) -> float:
    """Model time over actor busy time. Per actor (worker host+pid), busy time is the span from
    its first shard's start to its last commit: an actor keeps a second shard reading ahead, so
    summing per-shard wall times would count the overlap twice."""
    spans: dict[tuple, list[float]] = {}
    model_s = 0.0
    for commit in commits:
        worker = (commit.stats.worker.get("host"), commit.stats.worker.get("pid"))
        span = spans.setdefault(worker, [commit.stats.started_at, commit.stats.finished_at])
        span[0] = min(span[0], commit.stats.started_at)
        span[1] = max(span[1], commit.stats.finished_at)
        model_s += commit.stats.model_s
    busy = sum(end - start for start, end in spans.values())
    return model_s / busy if busy > 0 else 0.0
