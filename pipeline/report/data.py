"""What a report shows, read from a run folder (local or s3://): the run's configuration and
weights, every item's current record and scores, the commits' timings, the eval figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.metrics.definitions import ITEM_METRICS
from pipeline.outputs.run_layout import CommitFiles, committed, current_records
from pipeline.outputs.run_state import RunState
from pipeline.outputs.score_stats import current_scores, read_summary
from pipeline.outputs.status import model_fraction

EXAMPLES_PER_CLASS = 5


@dataclass
class Item:
    id: str
    key: str
    status: str
    error: str | None
    prompt: str
    caption: str
    scores: dict[str, float]
    commit: CommitFiles
    images: dict[str, str] = field(default_factory=dict)  # role -> thumbnail path in the report


@dataclass
class ReportData:
    run_uri: str
    run_json: dict[str, Any]
    items: list[Item]
    commits: list[CommitFiles]
    summary: dict[str, Any]

    @property
    def ok(self) -> list[Item]:
        return [i for i in self.items if i.status == "ok"]

    def failures(self) -> dict[str, dict[str, Any]]:
        """Error class -> count and a few examples (id, message)."""
        out: dict[str, dict[str, Any]] = {}
        for item in self.items:
            if item.status in ("ok", "skipped"):
                continue
            entry = out.setdefault(item.status, {"count": 0, "examples": []})
            entry["count"] += 1
            if len(entry["examples"]) < EXAMPLES_PER_CLASS:
                entry["examples"].append({"id": item.id, "error": item.error or ""})
        return out

    def metric_names(self) -> list[str]:
        return [m for m in ITEM_METRICS if any(m in i.scores for i in self.items)]

    def throughput(self) -> list[tuple[float, int]]:
        """(seconds since the first shard started, ok images committed so far) per commit."""
        stats = sorted((c.commit.stats for c in self.commits), key=lambda s: s.finished_at)
        if not stats:
            return []
        start = min(s.started_at for s in stats)
        points, done = [(0.0, 0)], 0
        for s in stats:
            done += s.ok
            points.append((s.finished_at - start, done))
        return points

    def model_busy(self) -> float:
        return model_fraction([c.commit for c in self.commits])


def read_report_data(state: RunState) -> ReportData:
    run_json = state.read_run_json()
    if run_json is None:
        raise FileNotFoundError(f"{state.run_uri}: no run.json (not a restyle run folder)")
    commits = committed(state)
    scores = current_scores(state)
    items = []
    for record, files in current_records(state, commits).values():
        row = scores.get(record.id, {})
        items.append(
            Item(
                id=record.id,
                key=record.key,
                status=str(record.status),
                error=record.error,
                prompt=record.prompt or "",
                caption=record.caption or "",
                scores={m: row[m] for m in ITEM_METRICS if row.get(m) is not None},
                commit=files,
            )
        )
    return ReportData(state.run_uri, run_json, items, commits, read_summary(state) or {})
