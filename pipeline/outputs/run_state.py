"""What is already on disk for a run: run.json, commit markers, retry commits, item statuses.

    <out>/<run>/run.json                    the full run config and its fingerprint
    <out>/<run>/part-<k>.{tar,parquet,stats.json}
    <out>/<run>/retry-<n>/part-<k>.{...}    `--retry-failed` commits: only re-run items

An item's current status is its record in the newest commit that contains it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pipeline.errors import RunConflictError
from pipeline.outputs.commit import ItemRecord, ShardPaths, ShardStats, read_marker, read_records
from pipeline.storage import Storage

RUN_JSON = "run.json"
_RETRY = re.compile(r"/retry-(\d+)/part-(\d+)\.stats\.json$")
_MAIN = re.compile(r"/part-(\d+)\.stats\.json$")


@dataclass(frozen=True)
class Commit:
    folder: str
    shard: int
    retry: int  # 0 for the main commit
    stats: ShardStats


class RunState:
    def __init__(self, storage: Storage, run_uri: str):
        self.storage = storage
        self.run_uri = run_uri.rstrip("/")

    # ------------------------------------------------------------- run.json
    def read_run_json(self) -> dict | None:
        uri = f"{self.run_uri}/{RUN_JSON}"
        if not self.storage.exists(uri):
            return None
        return json.loads(self.storage.read_bytes(uri))

    def claim(self, run_json: dict) -> None:
        """Write run.json, or check that an existing one has the same fingerprint."""
        existing = self.read_run_json()
        if existing is None:
            self.storage.write_bytes(
                f"{self.run_uri}/{RUN_JSON}",
                json.dumps(run_json, indent=1, sort_keys=True, default=str).encode(),
            )
            return
        if existing.get("fingerprint") != run_json["fingerprint"]:
            old, new = (
                existing.get("fingerprint_fields", {}),
                run_json.get("fingerprint_fields", {}),
            )
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise RunConflictError(
                f"{self.run_uri} already holds a run with fingerprint {existing.get('fingerprint')}, "
                f"this configuration is {run_json['fingerprint']} (changed: {', '.join(changed) or '?'}). "
                "Outputs of different configurations are never mixed: use another --run name."
            )

    # ------------------------------------------------------------- commits
    def main_commit(self, shard: int, input_uri: str, fingerprint: str) -> ShardStats | None:
        """The shard's marker if it is committed for this input and fingerprint."""
        stats = read_marker(self.storage, ShardPaths(self.run_uri, shard).marker)
        if stats is None or stats.fingerprint != fingerprint or stats.input_shard != input_uri:
            return None
        return stats

    def commits(self) -> list[Commit]:
        """Every committed shard, main and retries, oldest first."""
        found: list[Commit] = []
        for uri in self.storage.list(self.run_uri + "/"):
            if not uri.endswith(".stats.json"):
                continue
            retry = _RETRY.search(uri)
            main = _MAIN.search(uri)
            if retry:
                n, k = int(retry.group(1)), int(retry.group(2))
                folder = f"{self.run_uri}/retry-{n:02d}"
            elif main and uri.rsplit("/", 1)[0] == self.run_uri:
                n, k = 0, int(main.group(1))
                folder = self.run_uri
            else:
                continue
            found.append(Commit(folder, k, n, ShardStats.from_json(self.storage.read_bytes(uri))))
        return sorted(found, key=lambda c: (c.retry, c.shard))

    def next_retry_number(self) -> int:
        return 1 + max((c.retry for c in self.commits()), default=0)

    def latest_records(self, fingerprint: str) -> dict[int, dict[str, ItemRecord]]:
        """shard -> id -> the item's newest record, over main and retry commits."""
        latest: dict[int, dict[str, ItemRecord]] = {}
        for commit in self.commits():
            if commit.stats.fingerprint != fingerprint:
                continue
            records = read_records(self.storage, ShardPaths(commit.folder, commit.shard).records)
            shard_records = latest.setdefault(commit.shard, {})
            for record in records:
                shard_records[record.id] = record
        return latest
