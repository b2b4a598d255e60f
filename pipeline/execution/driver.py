"""The driver: plan the run, hand whole shards to model actors, redo what a dead actor lost.

Exactly once: a shard whose marker matches this run's fingerprint is skipped; any other shard is
(re)done whole into deterministic names. An actor that dies mid-shard has that shard handed to
a fresh actor (up to `max_shard_attempts`); a shard whose commit fails (storage errors after
retries) fails alone and the run goes on. Items never fail a shard: they become records.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, WorkerCrashedError

from pipeline.config import RunConfig, code_version
from pipeline.errors import RunError
from pipeline.execution.actor import SHARDS_IN_FLIGHT_PER_ACTOR, actor_class
from pipeline.execution.progress import RunProgress
from pipeline.manifests import ManifestShard, list_shards
from pipeline.outputs.commit import ShardStats
from pipeline.outputs.run_state import RunState
from pipeline.processing.shard import ShardTask
from pipeline.storage import Storage, StorageSettings
from pipeline.weights.resolve import ResolvedWeights, resolve_weights

log = logging.getLogger(__name__)

ACTOR_LOST = (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError)
CPU_ACTOR_CPUS = 0.5  # CPU-only actors take half a CPU, so Ray never starves its own tasks
GPU_ACTOR_CPUS = 1.0


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
        self.failed += stats.failed - stats.errors.get("skipped", 0)
        self.skipped += stats.errors.get("skipped", 0)
        self.errors.update({k: v for k, v in stats.errors.items() if k != "skipped"})


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

    def __init__(self, config: RunConfig, storage_settings: StorageSettings,
                 address: str | None = None, show_progress: bool = True,
                 weights: ResolvedWeights | None = None):
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
        shards = list_shards(list(self.config.manifest), self.storage)
        if self.weights is None:
            self.weights = resolve_weights(self.config.weights, self.config.model,
                                           storage=self.storage)
        weights = self.weights
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
        only = None if self.config.only_ids is None else frozenset(self.config.only_ids)
        tasks = [ShardTask(shard=s, folder=self.config.run_uri, fingerprint=plan.fingerprint,
                           weights=plan.weights.sha256, random_weights=plan.weights.random,
                           only_ids=only)
                 for s in plan.todo]
        summary = RunSummary(self.config.run_uri, plan.fingerprint, shards_total=len(plan.shards),
                             shards_already_done=len(plan.done))
        return self._execute(tasks, summary)

    def retry_failed(self) -> RunSummary:
        """Re-run only failed items of committed shards into a new retry commit."""
        plan = self.plan()
        existing = self.state.read_run_json()
        if existing is None:
            raise RunError(f"{self.config.run_uri} has no run.json: nothing to retry")
        self.state.claim(plan.run_json(self.settings))  # same fingerprint, or a clear refusal
        latest = self.state.latest_records(plan.fingerprint)
        folder = f"{self.config.run_uri}/retry-{self.state.next_retry_number():02d}"
        tasks = []
        for shard in plan.shards:
            failed = {i: r for i, r in latest.get(shard.index, {}).items()
                      if not r.ok and r.status != "skipped"}
            if failed:
                tasks.append(ShardTask(
                    shard=shard, folder=folder, fingerprint=plan.fingerprint,
                    weights=plan.weights.sha256, random_weights=plan.weights.random,
                    only_ids=frozenset(failed),
                    prior_attempts={i: r.attempts for i, r in failed.items()},
                    retry_of=(shard.index,)))
        summary = RunSummary(self.config.run_uri, plan.fingerprint, shards_total=len(tasks))
        if not tasks:
            log.info("no failed items in %s", self.config.run_uri)
            return summary
        return self._execute(tasks, summary)

    # ------------------------------------------------------------------ execution
    def _execute(self, tasks: list[ShardTask], summary: RunSummary) -> RunSummary:
        t0 = time.perf_counter()
        if tasks:
            self._init_ray()
            self.pool = ActorPool(self.config, self.settings, len(tasks))
            try:
                self._dispatch(self.pool, tasks, summary)
            finally:
                self.pool.shutdown()
                self.pool = None
        summary.wall_s = time.perf_counter() - t0
        return summary

    def _dispatch(self, pool: ActorPool, tasks: list[ShardTask], summary: RunSummary) -> None:
        queue = deque((task, 1) for task in tasks)
        in_flight: dict[ray.ObjectRef, tuple[int, object, ShardTask, int]] = {}
        progress = RunProgress(self.show_progress, total_shards=len(tasks))
        seq = 0
        try:
            while queue or in_flight:
                for slot in pool.free_slots(in_flight):
                    if not queue:
                        break
                    task, attempt = queue.popleft()
                    seq += 1
                    task = _with_seq(task, seq)
                    handle = pool.actors[slot]
                    in_flight[handle.process.remote(task)] = (slot, handle, task, attempt)
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
                progress.update_live(pool.live_progress())
                for ref in ready:
                    slot, handle, task, attempt = in_flight.pop(ref)
                    try:
                        stats: ShardStats = ray.get(ref)
                    except ACTOR_LOST as error:
                        pool.replace_if_current(slot, handle)
                        if attempt < self.config.max_shard_attempts:
                            log.warning("actor died on shard %d (attempt %d): %s; retrying on a "
                                        "fresh actor", task.shard.index, attempt, error)
                            queue.append((task, attempt + 1))
                        else:
                            summary.shards_failed[task.shard.index] = f"actor died {attempt} times: {error}"
                        continue
                    except ray.exceptions.RayTaskError as error:
                        cause = error.cause if getattr(error, "cause", None) else error
                        log.error("shard %d failed: %s", task.shard.index, cause)
                        summary.shards_failed[task.shard.index] = f"{type(cause).__name__}: {cause}"
                        continue
                    summary.add(stats)
                    progress.shard_committed(stats)
        finally:
            progress.close()

    def _init_ray(self) -> None:
        if ray.is_initialized():
            return
        if self.address:
            ray.init(address=self.address, log_to_driver=True)
        else:
            ray.init(include_dashboard=False, log_to_driver=True)


class ActorPool:
    """The model actors of one run; replaces dead ones, surfaces load errors up front."""

    def __init__(self, config: RunConfig, settings: StorageSettings, shards: int):
        self.config = config
        self.settings = settings
        gpus = int(ray.cluster_resources().get("GPU", 0))
        self.gpu = gpus > 0
        wanted = config.actors or max(1, gpus)
        self.size = max(1, min(wanted, shards))
        self.cls = actor_class(num_gpus=1 if self.gpu else 0,
                               num_cpus=GPU_ACTOR_CPUS if self.gpu else CPU_ACTOR_CPUS)
        self.actors = [self._start() for _ in range(self.size)]
        self._check_loaded(self.actors)

    def _start(self):
        return self.cls.remote(self.config, self.settings)

    def _check_loaded(self, actors: list) -> None:
        try:
            infos = ray.get([a.info.remote() for a in actors])
        except ACTOR_LOST as error:
            raise RunError(f"model actors could not load {self.config.model!r} from "
                           f"weights {str(self.config.weights)!r}: {error}") from error
        for info in infos:
            log.info("actor ready: %s", info)

    def free_slots(self, in_flight: dict) -> list[int]:
        busy = Counter(slot for slot, *_ in in_flight.values())
        return [i for i in range(self.size)
                for _ in range(SHARDS_IN_FLIGHT_PER_ACTOR - busy[i])]

    def replace_if_current(self, slot: int, handle) -> None:
        """Start a fresh actor in `slot` unless that dead handle was already replaced."""
        if self.actors[slot] is not handle:
            return
        try:
            ray.kill(handle, no_restart=True)
        except Exception:  # already gone
            pass
        self.actors[slot] = self._start()
        self._check_loaded([self.actors[slot]])

    def live_progress(self) -> dict[int, tuple[int, int]]:
        refs = [a.progress.remote() for a in self.actors]
        live: dict[int, tuple[int, int]] = {}
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.2)
        for ref in ready:
            try:
                live.update(ray.get(ref))
            except ACTOR_LOST:
                pass
        return live

    def shutdown(self) -> None:
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:
                pass


def _with_seq(task: ShardTask, seq: int) -> ShardTask:
    from dataclasses import replace

    return replace(task, seq=seq)
