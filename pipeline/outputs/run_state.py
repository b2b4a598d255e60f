"""What is already in a run folder: run.json, the commits (markers), the current records, and
what a `--retry-failed` has to redo. Names and globs are in `pipeline.outputs.layout`.

An item's current record is its row in `part-<k>.parquet`: the commits keep that file current,
so nothing here (or in a reader) has to pick the newest record among several commits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pipeline.errors import ItemStatus, RunConflictError
from pipeline.outputs.card import write_card
from pipeline.outputs.commit import ShardStats, read_marker
from pipeline.outputs.layout import (
    LAYOUT_VERSION,
    RUN_JSON,
    ShardPaths,
    check_layout,
    parse_marker,
)
from pipeline.outputs.records import ItemRecord, read_records
from pipeline.storage import Storage


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


class RunState:
    def __init__(self, storage: Storage, run_uri: str):
        self.storage = storage
        self.run_uri = run_uri.rstrip("/")

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
        self.storage.write_bytes(
            f"{self.run_uri}/{RUN_JSON}",
            json.dumps(run_json, indent=1, sort_keys=True, default=str).encode(),
        )

    def claim(self, run_json: dict) -> None:
        """Write run.json and the dataset card, or check that an existing run.json has this
        layout and fingerprint."""
        run_json = {**run_json, "layout": LAYOUT_VERSION}
        existing = self.read_run_json()
        if existing is None:
            self.write_run_json(run_json)
            write_card(self.storage, self.run_uri, run_json)
            return
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
    def main_commit(self, shard: int, input_uri: str, fingerprint: str) -> ShardStats | None:
        """The shard's first-run marker if it is committed for this input and fingerprint."""
        stats = read_marker(self.storage, ShardPaths(self.run_uri, shard).marker)
        if stats is None or stats.fingerprint != fingerprint or stats.input_shard != input_uri:
            return None
        return stats

    def commits(self) -> list[Commit]:
        """Every committed shard attempt (first runs and retries), by shard then attempt."""
        found = []
        for uri in self.storage.list(self.run_uri + "/"):
            folder, _, name = uri.rpartition("/")
            parsed = parse_marker(name)
            if parsed is None or folder.rstrip("/") != self.run_uri:
                continue
            paths = ShardPaths(self.run_uri, *parsed)
            found.append(Commit(paths, ShardStats.from_json(self.storage.read_bytes(uri))))
        return sorted(found, key=lambda c: (c.shard, c.retry))

    # ------------------------------------------------------------- records
    def current_records(self, shard: int) -> list[ItemRecord]:
        """The shard's current records (empty when it has none yet)."""
        uri = ShardPaths(self.run_uri, shard).records
        return read_records(self.storage, uri) if self.storage.exists(uri) else []

    def latest_records(self, fingerprint: str) -> dict[int, dict[str, ItemRecord]]:
        """shard -> id -> current record, for the shards first committed under `fingerprint`."""
        shards = {
            c.shard for c in self.commits() if c.retry == 0 and c.stats.fingerprint == fingerprint
        }
        return {k: {r.id: r for r in self.current_records(k)} for k in sorted(shards)}

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
        work = []
        for shard, last in sorted(committed.items()):
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
            if prior:
                work.append(RetryWork(shard, last + 1, frozenset(prior), prior))
        return work
