"""Where the objects of a run folder live, for the readers added after the run: eval, report.

One small module on purpose: the run folder's layout is changing (per-item records and tars
keep their globs, everything else moves to subfolders), and eval and report find records,
tars and score files only through these functions.

    <run>/part-<k>.tar, part-<k>.parquet, part-<k>.stats.json     main commits
    <run>/retry-<n>/part-<k>.{tar,parquet,stats.json}              retry commits
    <run>/scores/part-<k>.parquet                                  scores of the main commit k
    <run>/scores/retry-<n>/part-<k>.parquet                        scores of a retry commit
    <run>/scores/<same stem>.features.safetensors                  set-metric features
    <run>/scores/summary.json                                      per-run figures (FID, CMMD)
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.outputs.commit import ItemRecord, ShardPaths, read_records
from pipeline.outputs.run_state import Commit, RunState

SCORES_FOLDER = "scores"
SUMMARY = "summary.json"


@dataclass(frozen=True)
class CommitFiles:
    """The objects of one committed shard and of its scores."""

    run_uri: str
    commit: Commit

    @property
    def shard(self) -> ShardPaths:
        return ShardPaths(self.commit.folder, self.commit.shard)

    @property
    def tar(self) -> str:
        return self.shard.tar

    @property
    def records(self) -> str:
        return self.shard.records

    @property
    def _score_stem(self) -> str:
        relative = self.commit.folder[len(self.run_uri) :].strip("/")
        folder = "/".join(p for p in (self.run_uri, SCORES_FOLDER, relative) if p)
        return f"{folder}/part-{self.commit.shard:06d}"

    @property
    def scores(self) -> str:
        return self._score_stem + ".parquet"

    @property
    def features(self) -> str:
        return self._score_stem + ".features.safetensors"


def committed(state: RunState) -> list[CommitFiles]:
    """Every commit of the run's own fingerprint (main and retries), oldest first."""
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
    """The current view: each item id -> its newest record and the commit that holds it."""
    current: dict[str, tuple[ItemRecord, CommitFiles]] = {}
    for files in commits:
        for record in read_records(state.storage, files.records):
            current[record.id] = (record, files)
    return current


def summary_uri(run_uri: str) -> str:
    return f"{run_uri.rstrip('/')}/{SCORES_FOLDER}/{SUMMARY}"
