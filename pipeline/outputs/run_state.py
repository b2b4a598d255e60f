"""What is already in a run folder: run.json, the commits (markers), the current records, and
what a `--retry-failed` has to redo. Names and globs are in `pipeline.outputs.layout`.

An item's current record is its row in `part-<k>.parquet`: the commits keep that file current,
so nothing here (or in a reader) has to pick the newest record among several commits.

Catalog scale (~10^4 shards on S3): what a folder holds is learnt from one listing of its top
level (`RunListing`), never from one existence check per shard; the objects that must then be
read (markers, records) are read `REQUEST_WORKERS` at a time (`storage.concurrent`). Markers
whose listed version the run's marker index holds are not read at all (`marker_index`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.errors import ItemStatus, RunConflictError
from pipeline.outputs import marker_index
from pipeline.outputs.card import write_card
from pipeline.outputs.commit import ShardStats
from pipeline.outputs.layout import (
    LAYOUT_VERSION,
    RUN_JSON,
    ShardPaths,
    check_layout,
    parse_marker,
    parse_records,
    parse_tar,
)
from pipeline.outputs.records import ItemRecord, read_records
from pipeline.storage import Storage, StorageNotFoundError
from pipeline.storage.concurrent import map_bounded

# A run folder's listing is cut every this many shards (15,000 objects, 15 pages), the ranges
# listed concurrently (`Storage.list_versioned`); folders under it are one listing as before.
# Not smaller: a range's last page runs up to 1,000 keys past its end, parsed and dropped
# (ranges of 1,000 shards cost 1 page in 4, +31% CPU at 2x10^4 shards).
SHARDS_PER_RANGE = 5000


@dataclass(frozen=True)
class Commit:
    paths: ShardPaths
    stats: ShardStats

    @property
    def shard(self) -> int:
        return self.paths.index

    @property
    def retry(self) -> int:
        return self.paths.retry


@dataclass(frozen=True)
class RetryWork:
    """What a `--retry-failed` redoes of one shard, and under which attempt number."""

    shard: int
    retry: int
    only_ids: frozenset[str]
    prior_attempts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RunListing:
    """The shard objects at a run folder's top level, from one listing: markers and tars by
    (shard, attempt), records files by shard."""

    markers: dict[tuple[int, int], str]
    tars: dict[tuple[int, int], str]
    records: dict[int, str]
    # each marker's version as listed (S3 ETag; local inode-mtime-size): the marker index
    # serves a marker only at this version
    marker_versions: dict[tuple[int, int], str] = field(default_factory=dict)


class RunState:
    def __init__(self, storage: Storage, run_uri: str):
        self.storage = storage
        self.run_uri = run_uri.rstrip("/")
        # marker name -> (version, bytes) of every marker this RunState read or took from the
        # index, and the markers (name -> version) of its latest listing: what it writes to
        # the marker index (`index_entries`)
        self._seen: marker_index.Entries = {}
        self._listed: dict[str, str] = {}

    # ------------------------------------------------------------- run.json
    def read_run_json(self, check: bool = True) -> dict | None:
        """run.json, or None when the folder has none; with `check`, a folder of another layout
        is refused (`LayoutError`, naming `restyle migrate`)."""
        uri = f"{self.run_uri}/{RUN_JSON}"
        if not self.storage.exists(uri):
            return None
        run_json = json.loads(self.storage.read_bytes(uri))
        if check:
            check_layout(self.run_uri, run_json)
        return run_json

    def write_run_json(self, run_json: dict) -> None:
        self.storage.write_bytes(f"{self.run_uri}/{RUN_JSON}", _encode(run_json))

    def claim(self, run_json: dict) -> None:
        """Write run.json and the dataset card, or check that an existing run.json has this
        layout and fingerprint. Atomic: run.json is created only if absent (S3 If-None-Match,
        a local exclusive create), so of two drivers claiming at once exactly one writes it
        and the other compares against what it wrote."""
        run_json = {**run_json, "layout": LAYOUT_VERSION}
        if self.storage.create_exclusive(f"{self.run_uri}/{RUN_JSON}", _encode(run_json)):
            write_card(self.storage, self.run_uri, run_json)
            return
        existing = self.read_run_json()
        if existing is None:  # removed between the two calls: claim again
            return self.claim(run_json)
        self._refuse_another_configuration(existing, run_json)
        write_card(self.storage, self.run_uri, existing)

    def check_claim(self, run_json: dict) -> bool:
        """True when the folder is free (no run.json yet); raise `RunConflictError` when it
        holds another fingerprint. `restyle plan` asks this too, so it never reports work for a
        folder that `run` would refuse."""
        existing = self.read_run_json()
        if existing is None:
            return True
        self._refuse_another_configuration(existing, run_json)
        return False

    def _refuse_another_configuration(self, existing: dict, run_json: dict) -> None:
        if existing.get("fingerprint") != run_json["fingerprint"]:
            old = existing.get("fingerprint_fields", {})
            # compared as stored: a tuple in memory is a list in run.json
            new = json.loads(json.dumps(run_json.get("fingerprint_fields", {}), default=str))
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise RunConflictError(
                f"{self.run_uri} already holds a run with fingerprint {existing.get('fingerprint')}, "
                f"this configuration is {run_json['fingerprint']} (changed: {', '.join(changed) or '?'}). "
                "Outputs of different configurations are never mixed: use another --run name."
            )

    # ------------------------------------------------------------- commits
    def listing(self, shards: int = 0) -> RunListing:
        """One listing of the folder's own objects (S3: one paged request per 1000 objects;
        sub-folders such as captions/ and scores/ are not descended into), with the markers'
        versions, which the listing carries at no extra request. `shards`: how many input
        shards the run has, when known: the listing is then cut every `SHARDS_PER_RANGE`
        shards and the ranges listed concurrently (10^5 shards: 300 pages, 16 in sequence)."""
        cuts = [f"part-{k:06d}" for k in range(SHARDS_PER_RANGE, shards, SHARDS_PER_RANGE)]
        markers, tars, records, versions = {}, {}, {}, {}
        listed = self.storage.list_versioned(self.run_uri + "/", recursive=False, cuts=cuts)
        for uri, version in listed:
            folder, _, name = uri.rpartition("/")
            if folder.rstrip("/") != self.run_uri:
                continue
            if (marker := parse_marker(name)) is not None:
                markers[marker] = uri
                versions[marker] = version
            elif (tar := parse_tar(name)) is not None:
                tars[tar] = uri
            elif (shard := parse_records(name)) is not None:
                records[shard] = uri
        self._listed = {uri.rpartition("/")[2]: versions[key] for key, uri in markers.items()}
        return RunListing(markers, tars, records, versions)

    def _read_markers(
        self, listing: RunListing, keys: Iterable[tuple[int, int]]
    ) -> list[ShardStats | None]:
        """The listed markers `keys`, in order; None for one deleted since the listing. A
        marker whose listed version the marker index (or this RunState's earlier reads) holds
        is taken from there, on this thread (10^5 of them cost no thread hand-offs); the
        others are read, concurrently."""
        cached = {**marker_index.load(self.storage, self.run_uri), **self._seen}
        keys = list(keys)
        found: list[ShardStats | None] = [None] * len(keys)
        misses = []
        for position, key in enumerate(keys):
            stats = self._indexed(cached, listing, key)
            if stats is None:
                misses.append(position)
            else:
                found[position] = stats

        def read(key: tuple[int, int]) -> ShardStats | None:
            uri = listing.markers[key]
            try:
                data, version = self.storage.read_versioned(uri)
            except StorageNotFoundError:
                return None
            stats = ShardStats.from_json(data)
            self._seen[uri.rpartition("/")[2]] = (version, data)
            return stats

        read_now = map_bounded(read, [keys[position] for position in misses])
        for position, stats in zip(misses, read_now, strict=True):
            found[position] = stats
        return found

    def _indexed(
        self, cached: marker_index.Entries, listing: RunListing, key: tuple[int, int]
    ) -> ShardStats | None:
        """The listed marker `key` from `cached` when that holds it at its listed version."""
        name = listing.markers[key].rpartition("/")[2]
        hit = cached.get(name)
        if hit is None or hit[0] != listing.marker_versions.get(key):
            return None
        try:
            stats = ShardStats.from_json(hit[1])
        except (ValueError, TypeError):  # a corrupt entry: read the marker instead
            return None
        self._seen[name] = hit
        return stats

    def index_entries(self) -> marker_index.Entries:
        """What the marker index should hold: the markers of the latest listing with the
        content read (or taken from the index) for them."""
        return {
            name: self._seen[name]
            for name, version in self._listed.items()
            if name in self._seen and self._seen[name][0] == version
        }

    def main_commits(
        self, shards: Iterable[tuple[int, str]], fingerprint: str
    ) -> dict[int, ShardStats]:
        """Of `shards` (index, input URI), those whose first-run marker is committed for this
        input and fingerprint: one listing, then only the listed markers are read (through
        the marker index)."""
        shards = list(shards)
        listing = self.listing(max((index + 1 for index, _ in shards), default=0))
        wanted = [(index, uri) for index, uri in shards if (index, 0) in listing.markers]
        stats = self._read_markers(listing, ((index, 0) for index, _ in wanted))
        return {
            index: marker
            for (index, input_uri), marker in zip(wanted, stats, strict=True)
            if marker is not None
            and marker.fingerprint == fingerprint
            and marker.input_shard == input_uri
        }

    def commits(self, listing: RunListing | None = None) -> list[Commit]:
        """Every committed shard attempt (first runs and retries), by shard then attempt; each
        marker is read once (or taken from the marker index). `listing`: one the caller
        already made, so the folder is listed once."""
        listing = listing or self.listing()
        listed = sorted(listing.markers)
        found = []
        stats_of = self._read_markers(listing, listed)
        for key, stats in zip(listed, stats_of, strict=True):
            if stats is not None:
                found.append(Commit(ShardPaths(self.run_uri, *key), stats))
        return found

    def fork(self) -> RunState:
        """Another RunState of the folder that starts from what this one has read: for a
        thread that refreshes the marker index while this one goes on."""
        other = RunState(self.storage, self.run_uri)
        other._seen = dict(self._seen)
        return other

    def refresh_index_entries(self) -> marker_index.Entries:
        """List the folder and read every marker (through the index): the entries to write."""
        self.commits()
        return self.index_entries()

    # ------------------------------------------------------------- records
    def current_records(self, shard: int) -> list[ItemRecord]:
        """The shard's current records (empty when it has none yet)."""
        try:
            return read_records(self.storage, ShardPaths(self.run_uri, shard).records)
        except StorageNotFoundError:
            return []

    def latest_records(self, fingerprint: str) -> dict[int, dict[str, ItemRecord]]:
        """shard -> id -> current record, for the shards first committed under `fingerprint`."""
        shards = sorted(
            {c.shard for c in self.commits() if c.retry == 0 and c.stats.fingerprint == fingerprint}
        )
        records = map_bounded(self.current_records, shards)
        return {k: {r.id: r for r in rs} for k, rs in zip(shards, records, strict=True)}

    def retry_plan(self, fingerprint: str) -> list[RetryWork]:
        """Per committed shard, the items a `--retry-failed` redoes: those whose current record
        failed, plus those an interrupted retry (records written, marker not) had re-run. The
        attempt number is one past the shard's last committed retry, so an interrupted retry is
        redone under its own names and never leaves a second copy of an image behind."""
        committed: dict[int, int] = {}
        for commit in self.commits():
            if commit.stats.fingerprint != fingerprint:
                continue
            if commit.retry == 0:
                committed.setdefault(commit.shard, 0)
            elif commit.shard in committed:
                committed[commit.shard] = max(committed[commit.shard], commit.retry)

        def redo(entry: tuple[int, int]) -> RetryWork | None:
            shard, last = entry
            prior: dict[str, int] = {}
            records = self.current_records(shard)
            # An id with an ok record is done: its failed rows repeat the id, and a retry would
            # only redo the ok row and refuse the repeat again.
            done = {r.id for r in records if r.status == ItemStatus.OK and r.retry <= last}
            for record in records:
                if record.id in done:
                    continue
                if record.retry > last:  # written by the interrupted retry: redo it
                    prior[record.id] = record.attempts - 1
                elif record.failed:
                    prior[record.id] = record.attempts
            return RetryWork(shard, last + 1, frozenset(prior), prior) if prior else None

        return [w for w in map_bounded(redo, sorted(committed.items())) if w is not None]


def _encode(run_json: dict) -> bytes:
    return json.dumps(run_json, indent=1, sort_keys=True, default=str).encode()
