"""Scoring a finished run: `restyle eval <run>` (see README "Scoring a run").

Per item, on the same actor machinery as a run (`pipeline.execution`: one actor per GPU, the
backbones loaded once per actor, a dead actor replaced and its shard redone): every committed
shard without a score file of this eval's fingerprint is scored into `<run>/scores/` (resumable
per shard, exactly once: deterministic names, the parquet published last). Per run, on the
driver: FID and CMMD of the current results against a reference set, whose features the
actors compute too; the figures go to `<run>/scores/summary.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import EvalSettings
from pipeline.errors import ExitCode
from pipeline.outputs.run_layout import CommitFiles, committed, summary_uri
from pipeline.outputs.run_state import RunState
from pipeline.outputs.score_stats import current_scores, summarise
from pipeline.outputs.scores import scores_eval
from pipeline.storage import Storage, StorageSettings

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a shard whose actor died is redone on a fresh actor this many times in all
REFERENCE_CHUNK = 256  # reference images per actor task
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class EvalSummary:
    run_uri: str
    fingerprint: str = ""
    shards_scored: int = 0
    shards_kept: int = 0
    items_scored: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # tar URI -> reason
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    sets: dict[str, Any] = field(default_factory=dict)  # fid, cmmd, reference, sizes
    wall_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """INCOMPLETE when shards could not be scored (rerun the same command), else OK."""
        return ExitCode.INCOMPLETE if self.failed else ExitCode.OK

    @property
    def images_per_s(self) -> float:
        return self.items_scored / self.wall_s if self.wall_s else 0.0


def eval_run(
    run_uri: str,
    settings: EvalSettings,
    storage_settings: StorageSettings,
    actors: int = 0,
    device: str = "auto",
    address: str | None = None,
) -> EvalSummary:
    """Score every committed shard not yet scored by this eval; then the run's set metrics."""
    from pipeline.execution.actor import EvalActor
    from pipeline.execution.cluster import connect
    from pipeline.execution.cluster_watch import watching_cluster
    from pipeline.execution.dispatch import dispatch
    from pipeline.execution.pool import ActorPool, ActorSpec, pool_size

    t0 = time.perf_counter()
    storage = Storage(storage_settings)
    state = RunState(storage, run_uri.rstrip("/"))
    if state.read_run_json() is None:
        raise FileNotFoundError(f"{run_uri}: not a run folder (no run.json)")
    summary = EvalSummary(state.run_uri)
    commits = [c for c in committed(state) if c.commit.stats.ok]
    references = reference_images(storage, settings.reference) if settings.reference else []
    with watching_cluster():  # a head node that dies mid-way: one line, exit 4
        connect(address)
        spec = ActorSpec(EvalActor, (settings, device, storage_settings), kind="eval actor")
        pool = ActorPool(spec, pool_size(actors, max(1, len(commits))))
        try:
            summary.fingerprint = pool.wait_ready()["eval"]
            todo = [c for c in commits if scores_eval(storage, c.scores) != summary.fingerprint]
            summary.shards_kept = len(commits) - len(todo)

            def scored(task: CommitFiles, rows: int) -> None:
                summary.shards_scored += 1
                summary.items_scored += rows

            def failed(task: Any, reason: str) -> None:
                summary.failed[task.tar if isinstance(task, CommitFiles) else task[0]] = reason

            dispatch(
                pool,
                todo,
                submit=lambda actor, t, seq: actor.score_shard.remote(
                    t.tar, t.records, t.scores, t.features
                ),
                on_result=scored,
                on_failure=failed,
                max_attempts=MAX_ATTEMPTS,
                describe=lambda t: f"scoring {t.tar}",
            )
            chunks = [
                references[i : i + REFERENCE_CHUNK]
                for i in range(0, len(references), REFERENCE_CHUNK)
            ]
            reference_parts: list[dict] = []
            dispatch(
                pool,
                chunks,
                submit=lambda actor, chunk, seq: actor.reference_features.remote(chunk),
                on_result=lambda chunk, features: reference_parts.append(features),
                on_failure=failed,
                max_attempts=MAX_ATTEMPTS,
                describe=lambda chunk: f"reference images from {chunk[0]}",
            )
        finally:
            pool.shutdown()
    rows = current_scores(state)
    summary.metrics = summarise(rows)
    if references and not summary.failed:
        from pipeline.jobs.set_metrics import set_metrics

        summary.sets = set_metrics(state, rows, reference_parts, settings)
        summary.sets["reference"] = settings.reference
    summary.wall_s = time.perf_counter() - t0
    storage.write_bytes(
        summary_uri(state.run_uri),
        json.dumps(summary_json(summary), indent=1, sort_keys=True).encode(),
    )
    return summary


def summary_json(summary: EvalSummary) -> dict:
    return {
        "eval": summary.fingerprint,
        "items": max((m["n"] for m in summary.metrics.values()), default=0),
        "metrics": summary.metrics,
        "sets": summary.sets,
        "written_at": time.time(),
    }


def reference_images(storage: Storage, reference: str) -> list[str]:
    """Image URIs of a reference set: a run folder's result images are handled by tar (see
    `set_metrics`); a folder of images; or a manifest's subject images."""
    base = reference.rstrip("/")
    if RunState(storage, base).read_run_json() is not None:
        return [f"run:{c.tar}" for c in committed(RunState(storage, base)) if c.commit.stats.ok]
    listed = [u for u in storage.list(base + "/") if u.lower().endswith(IMAGE_SUFFIXES)]
    if listed:
        return listed
    from pipeline.manifests import ManifestItem, list_shards, read_shard

    uris = []
    for shard in list_shards([reference], storage):
        for entry in read_shard(shard, storage):
            if isinstance(entry, ManifestItem) and entry.subject is not None and entry.subject.uri:
                uris.append(entry.subject.uri)
    if not uris:
        raise FileNotFoundError(f"reference {reference}: no images, manifest rows or run found")
    return uris


def sample_ids(ids: list[str], limit: int) -> set[str]:
    """A seeded, order-free sample: the `limit` ids of smallest sha256."""
    return set(sorted(ids, key=lambda i: hashlib.sha256(i.encode()).digest())[:limit])
