"""Where the objects eval and report read live in a run folder (layout 2, `outputs.layout`).

    <run>/part-<k>[.retry-<nn>].tar                  the samples of one commit
    <run>/part-<k>.parquet                           shard k's current records (all commits)
    <run>/scores/<k>[.retry-<nn>].parquet            scores of the ok items of that commit's tar
    <run>/scores/<k>[.retry-<nn>].features.safetensors   set-metric features of the same rows
    <run>/scores/summary.json                        per-run figures (FID, CMMD)

Score files are named like the caption sidecars (`captions/<k>.parquet`): no `part-` prefix,
so neither `part-*.parquet` nor `**/part-*.parquet` reaches them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.outputs.layout import ShardPaths
from pipeline.outputs.records import ItemRecord, read_records
from pipeline.outputs.run_state import Commit, RunState
from pipeline.storage.concurrent import map_bounded

SCORES_FOLDER = "scores"
SUMMARY = "summary.json"


@dataclass(frozen=True)
class CommitFiles:
    """The objects of one committed shard attempt and of its scores."""

    run_uri: str
    commit: Commit

    @property
    def shard(self) -> ShardPaths:
        return self.commit.paths

    @property
    def tar(self) -> str:
        return self.shard.tar

    @property
    def records(self) -> str:
        """The shard's current records; the items of this commit are those in its tar."""
        return self.shard.records

    @property
    def _score_stem(self) -> str:
        return f"{self.run_uri}/{SCORES_FOLDER}/{self.shard.name.removeprefix('part-')}"

    @property
    def scores(self) -> str:
        return self._score_stem + ".parquet"

    @property
    def features(self) -> str:
        return self._score_stem + ".features.safetensors"


def committed(state: RunState) -> list[CommitFiles]:
    """Every commit of the run's own fingerprint (main and retries), by shard then attempt."""
    run_json = state.read_run_json() or {}
    fingerprint = run_json.get("fingerprint")
    return [
        CommitFiles(state.run_uri, c)
        for c in state.commits()
        if fingerprint is None or c.stats.fingerprint == fingerprint
    ]


def current_records(
    state: RunState, commits: list[CommitFiles]
) -> dict[str, tuple[ItemRecord, CommitFiles]]:
    """The current view: each item id -> its current record and the commit that holds its
    result (the attempt its `retry` column names; the shard's first commit when none does)."""
    by_attempt = {(c.commit.shard, c.commit.retry): c for c in commits}
    current: dict[str, tuple[ItemRecord, CommitFiles]] = {}
    shards = sorted({c.commit.shard for c in commits})
    # Record files read a bounded number at a time (one round trip each), merged in shard order.
    read = map_bounded(
        lambda shard: read_records(state.storage, ShardPaths(state.run_uri, shard).records), shards
    )
    for shard, records in zip(shards, read, strict=True):
        for record in records:
            files = by_attempt.get((shard, record.retry)) or by_attempt.get((shard, 0))
            if files is not None:
                current[record.id] = (record, files)
    return current


def summary_uri(run_uri: str) -> str:
    return f"{run_uri.rstrip('/')}/{SCORES_FOLDER}/{SUMMARY}"
