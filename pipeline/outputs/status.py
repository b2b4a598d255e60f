"""`restyle status`: what a run folder holds, counted from what its readers read.

Item counts are exactly what a reader of the current records (`part-*.parquet`, one row per
item) counts; shard counts and throughput come from the commit markers. Objects without a
marker (an interrupted commit) are listed, and a run with any is not complete. `run_status` is
also how `restyle run` counts its totals when it ends, so the two always agree on items,
failures by class, images/s and the exit code (`ExitCode.of_run`).

Catalog scale (10^7 items in 10^4 shards): the folder is listed once and each marker read once.
Every commit writes into its marker the rows of the shard's records file by status as it left
the file (`ShardStats.shard_counts`; a retry's marker holds the whole shard after its overlay),
so a shard's counts are those of its newest committed marker and no records file is read. A
records file is read (its `status` column only, counted in Arrow) where no marker can say what
it holds: markers written before `shard_counts` existed, records without a first-run marker, and
shards with an interrupted commit (a tar without its marker), whose records may be newer than
the newest marker.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow.compute as pc

from pipeline.errors import ExitCode, ItemStatus
from pipeline.outputs.run_state import Commit, RunListing, RunState
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
    images_per_s: float = 0.0  # see `images_per_second`
    model_fraction: float = 0.0  # model time / actor busy time (see `model_fraction`)
    weights: str = ""  # the weights spec the run used ("tiny", "s3://...", a folder)
    random_weights: bool = False  # the pictures are noise

    @property
    def shards_missing(self) -> int:
        return max(0, self.input_shards - self.shards_committed)

    @property
    def complete(self) -> bool:
        return self.shards_missing == 0 and self.failed == 0 and not self.uncommitted

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.of_run(
            shards_missing=self.shards_missing,
            items_failed=self.failed,
            uncommitted=len(self.uncommitted),
        )


def run_status(state: RunState) -> RunStatus:
    run_json = state.read_run_json()
    if run_json is None:
        raise FileNotFoundError(f"{state.run_uri}: no run.json (not a restyle run folder)")
    fingerprint = run_json["fingerprint"]
    listing = state.listing(len(run_json.get("input_shards", [])))
    every = state.commits(listing)  # by shard, then attempt
    commits = [c for c in every if c.stats.fingerprint == fingerprint]
    main = [c for c in commits if c.retry == 0]
    config = run_json.get("config") or {}
    status = RunStatus(
        state.run_uri,
        fingerprint,
        len(run_json.get("input_shards", [])),
        len(main),
        len(commits) - len(main),
        weights=str(config.get("weights", "")),
        random_weights=bool(run_json.get("random_weights"))
        or str(config.get("weights")) in RANDOM_SPECS,
    )
    committed = {(c.shard, c.retry) for c in commits}
    status.uncommitted = sorted(
        [uri for key, uri in listing.tars.items() if key not in committed]
        + [uri for shard, uri in listing.records.items() if (shard, 0) not in committed]
    )
    from_markers, to_read = shard_sources(listing, every, fingerprint)
    for counts in from_markers:
        _add(status, counts)
    for counts in map_bounded(lambda uri: status_counts(state, uri), to_read):
        _add(status, counts)
    if commits:
        status.images_per_s = images_per_second(status.ok, commits)
        status.model_fraction = model_fraction(commits)
    return status


def shard_sources(
    listing: RunListing, commits: list[Commit], fingerprint: str
) -> tuple[list[dict[str, int]], list[str]]:
    """Per listed records file, where its counts come from: its shard's newest committed marker
    (the shard's last commit wrote the file: attempt numbers only grow), or the file itself
    where no marker can vouch for its content. `commits`: every commit of the folder, whatever
    its fingerprint. Returns (the counts taken from markers, the records files to read)."""
    newest: dict[int, Commit] = {}
    for commit in commits:  # by shard, then attempt
        newest[commit.shard] = commit
    committed = {(c.shard, c.retry) for c in commits if c.stats.fingerprint == fingerprint}
    interrupted = {shard for shard, retry in listing.tars if (shard, retry) not in committed}
    from_markers, to_read = [], []
    for shard, uri in sorted(listing.records.items()):
        last = newest.get(shard)
        if (
            last is None
            or last.stats.shard_counts is None
            or last.stats.fingerprint != fingerprint
            or (shard, 0) not in committed
            or shard in interrupted
        ):
            to_read.append(uri)
        else:
            from_markers.append(last.stats.shard_counts)
    return from_markers, to_read


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


RANDOM_SPECS = ("tiny", "random-full")  # weights specs that are random by construction


def images_per_second(ok: int, commits: Iterable[Commit]) -> float:
    """The one images/s of restyle (status, the run summary and the live progress): ok images
    over the seconds during which shards of the run were being processed, i.e. the union of
    the commits' start-to-commit intervals. Gaps between invocations (a run stopped and
    resumed the next day) and Ray's start-up do not count; overlapping shards count once."""
    spans = sorted((c.stats.started_at, c.stats.finished_at) for c in commits)
    active, end = 0.0, float("-inf")
    for start, finish in spans:
        if finish <= end:
            continue
        active += finish - max(start, end)
        end = finish
    return ok / active if active > 0 else 0.0


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
