"""`restyle status`: what a run has produced so far, from its markers and records."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pipeline.errors import ItemStatus
from pipeline.outputs.run_state import RunState


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
    images_per_s: float = 0.0  # ok images over the span from first shard start to last commit
    model_fraction: float = 0.0  # model time / actor busy time (see `model_fraction`)

    @property
    def complete(self) -> bool:
        return self.shards_committed == self.input_shards and self.failed == 0


def run_status(state: RunState) -> RunStatus:
    run_json = state.read_run_json()
    if run_json is None:
        raise FileNotFoundError(f"{state.run_uri}: no run.json (not a restyle run folder)")
    fingerprint = run_json["fingerprint"]
    commits = [c for c in state.commits() if c.stats.fingerprint == fingerprint]
    main = [c for c in commits if c.retry == 0]
    status = RunStatus(
        state.run_uri,
        fingerprint,
        len(run_json.get("input_shards", [])),
        len(main),
        len(commits) - len(main),
    )
    for records in state.latest_records(fingerprint).values():
        for record in records.values():
            status.items += 1
            if record.status == ItemStatus.OK:
                status.ok += 1
            elif record.status == ItemStatus.SKIPPED:
                status.skipped += 1
            else:
                status.failed += 1
                status.errors[record.status] += 1
    if commits:
        span = max(c.stats.finished_at for c in commits) - min(c.stats.started_at for c in commits)
        status.images_per_s = status.ok / span if span > 0 else 0.0
        status.model_fraction = model_fraction(commits)
    return status


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
