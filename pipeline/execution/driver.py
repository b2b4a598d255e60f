"""The driver: plan the run, hand whole shards to model actors, redo what a dead actor lost.

Exactly once: a shard whose marker matches this run's fingerprint is skipped; any other shard is
(re)done whole into deterministic names. An actor that dies mid-shard has that shard handed to
a fresh actor (up to `max_shard_attempts`); a shard whose commit fails (storage errors after
retries) fails alone and the run goes on. Items never fail a shard: they become records.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from pipeline.config import RunConfig, code_version
from pipeline.errors import RunError
from pipeline.execution.actor import SHARDS_IN_FLIGHT_PER_ACTOR, StylizeActor
from pipeline.execution.cluster import connect
from pipeline.execution.dispatch import dispatch
from pipeline.execution.pool import ActorPool, ActorSpec, pool_size
from pipeline.execution.progress import RunProgress
from pipeline.manifests import ManifestShard, list_shards
from pipeline.outputs.commit import ShardStats
from pipeline.outputs.run_state import RunState
from pipeline.processing.run_identity import check_run_identity
from pipeline.processing.shard import ShardTask
from pipeline.storage import Storage, StorageSettings
from pipeline.storage.uris import canonical_uri, public_uri
from pipeline.weights.resolve import ResolvedWeights, resolve_weights
from pipeline.weights.verify import check_before_run

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    run_uri: str
    fingerprint: str
    shards_total: int = 0
    shards_already_done: int = 0
    shards_committed: int = 0
    shards_failed: dict[int, str] = field(default_factory=dict)  # shard index -> reason
    items: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    errors: Counter = field(default_factory=Counter)
    wall_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every item of every shard came out ok; 1 when items failed; 2 when shards did."""
        if self.shards_failed:
            return 2
        return 1 if self.failed else 0

    def add(self, stats: ShardStats) -> None:
        self.shards_committed += 1
        self.items += stats.count
        self.ok += stats.ok
        self.failed += stats.failed
        self.skipped += stats.skipped
        self.errors.update(stats.errors)


@dataclass
class Plan:
    config: RunConfig
    weights: ResolvedWeights
    fingerprint: str
    shards: list[ManifestShard]
    done: dict[int, ShardStats]  # committed shards (index -> marker)

    @property
    def todo(self) -> list[ManifestShard]:
        return [s for s in self.shards if s.index not in self.done]

    def run_json(self, storage_settings: StorageSettings) -> dict:
        return {
            "config": self.config.public_dict(),
            "fingerprint": self.fingerprint,
            "fingerprint_fields": self.config.fingerprint_fields(self.weights.sha256),
            "weights": self.weights.sha256,
            "random_weights": self.weights.random,
            "input_shards": [s.uri for s in self.shards],
            "storage": storage_settings.public_dict(),
            "code_version": code_version(),
            "created_at": time.time(),
        }


class Runner:
    """Plans and runs one `RunConfig`. `weights`: the run's weights when the caller resolved
    them already (to name the run, or for a job fingerprint), so they are resolved once per run."""

    def __init__(
        self,
        config: RunConfig,
        storage_settings: StorageSettings,
        address: str | None = None,
        show_progress: bool = True,
        weights: ResolvedWeights | None = None,
    ):
        self.config = config
        self.settings = storage_settings
        self.storage = Storage(storage_settings)
        self.state = RunState(self.storage, config.run_uri)
        self.address = address
        self.show_progress = show_progress
        self.weights = weights
        self.pool: ActorPool | None = None  # the live actors while a run executes

    # ------------------------------------------------------------------ planning
    def plan(self) -> Plan:
        self.state.read_run_json()  # a folder of another output layout is refused here
        # Canonical (absolute, symlinks resolved): a shard's identity in markers, records and
        # provenance, whatever the spelling of the spec; run folders are never input.
        listed = list_shards(list(self.config.manifest), self.storage, exclude=self.config.run_uri)
        shards = [dataclasses.replace(s, uri=canonical_uri(s.uri)) for s in listed]
        check_run_identity(shards, self.storage)  # one key per item, one item per id
        if self.weights is None:
            self.weights = resolve_weights(
                self.config.weights, self.config.model, storage=self.storage
            )
        weights = self.weights
        if weights.root is not None:  # remote weights are checked where actors stage them
            check_before_run(weights.root, self.config.model)
        fingerprint = self.config.fingerprint(weights.sha256)
        done = {}
        for shard in shards:
            stats = self.state.main_commit(shard.index, shard.uri, fingerprint)
            if stats is not None:
                done[shard.index] = stats
        return Plan(self.config, weights, fingerprint, shards, done)

    # ------------------------------------------------------------------ running
    def run(self) -> RunSummary:
        plan = self.plan()
        self.state.claim(plan.run_json(self.settings))
        summary = RunSummary(
            self.config.run_uri,
            plan.fingerprint,
            shards_total=len(plan.shards),
            shards_already_done=len(plan.done),
        )
        return self._execute(self.run_tasks(plan), summary)

    def run_tasks(self, plan: Plan) -> list[ShardTask]:
        """One task per shard not yet committed: the whole shard, its first attempt."""
        only = None if self.config.only_ids is None else frozenset(self.config.only_ids)
        return [
            ShardTask(
                shard=s,
                folder=public_uri(self.config.run_uri),
                fingerprint=plan.fingerprint,
                weights=plan.weights.sha256,
                random_weights=plan.weights.random,
                only_ids=only,
            )
            for s in plan.todo
        ]

    def retry_failed(self) -> RunSummary:
        """Re-run only failed items of committed shards into a new retry commit per shard."""
        plan = self.plan()
        if self.state.read_run_json() is None:
            raise RunError(f"{self.config.run_uri} has no run.json: nothing to retry")
        self.state.claim(plan.run_json(self.settings))  # same fingerprint, or a clear refusal
        tasks = self.retry_tasks(plan)
        summary = RunSummary(self.config.run_uri, plan.fingerprint, shards_total=len(tasks))
        if not tasks:
            log.info("no failed items in %s", self.config.run_uri)
            return summary
        return self._execute(tasks, summary)

    def retry_tasks(self, plan: Plan) -> list[ShardTask]:
        """One task per committed shard with failed items: those items, its next attempt."""
        shards = {s.index: s for s in plan.shards}
        return [
            ShardTask(
                shard=shards[work.shard],
                folder=public_uri(self.config.run_uri),
                fingerprint=plan.fingerprint,
                weights=plan.weights.sha256,
                random_weights=plan.weights.random,
                only_ids=work.only_ids,
                prior_attempts=work.prior_attempts,
                retry=work.retry,
            )
            for work in self.state.retry_plan(plan.fingerprint)
            if work.shard in shards
        ]

    # ------------------------------------------------------------------ execution
    def _execute(self, tasks: list[ShardTask], summary: RunSummary) -> RunSummary:
        t0 = time.perf_counter()
        if tasks:
            connect(self.address)
            spec = ActorSpec(
                StylizeActor,
                (self.config, self.settings),
                tasks_per_actor=SHARDS_IN_FLIGHT_PER_ACTOR,
                what=f"model actors for {self.config.model!r} (weights "
                f"{str(self.config.weights)!r})",
            )
            self.pool = ActorPool(spec, pool_size(self.config.actors, len(tasks)))
            progress = RunProgress(self.show_progress, total_shards=len(tasks))

            def committed(task: ShardTask, stats: ShardStats) -> None:
                summary.add(stats)
                progress.shard_committed(stats)

            def failed(task: ShardTask, reason: str) -> None:
                summary.shards_failed[task.shard.index] = reason

            def live_progress() -> None:
                live: dict[int, tuple[int, int]] = {}
                for answer in self.pool.poll("progress") if self.pool else []:
                    live.update(answer)
                progress.update_live(live)

            try:
                dispatch(
                    self.pool,
                    tasks,
                    submit=lambda actor, task, seq: actor.process.remote(
                        dataclasses.replace(task, seq=seq)
                    ),
                    on_result=committed,
                    on_failure=failed,
                    max_attempts=self.config.max_shard_attempts,
                    describe=lambda task: f"shard {task.shard.index}",
                    on_tick=live_progress,
                )
            finally:
                progress.close()
                self.pool.shutdown()
                self.pool = None
        summary.wall_s = time.perf_counter() - t0
        return summary
