"""The driver: plan the run, hand whole shards to model actors, redo what a dead actor lost.

Exactly once: a shard whose marker matches this run's fingerprint is skipped; any other shard is
(re)done whole into deterministic names. An actor that dies mid-shard (killed, or lost with its
node) has that shard handed to another actor (up to `max_shard_attempts`); a shard whose commit
fails (storage errors after retries) fails alone and the run goes on. Items never fail a shard:
they become records. Shards go to actors as each one loads (`pool.ActorPool`); SIGTERM/SIGINT
stops the dispatch and lets the shards in flight commit (`drain`), exit 75.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.config import DriverSettings, RunConfig, code_version
from pipeline.errors import ExitCode, RunError
from pipeline.execution.cluster_watch import watching_cluster
from pipeline.execution.progress import RunProgress
from pipeline.execution.shared_run import SharedRun
from pipeline.manifests import ManifestShard, count_items, list_shards
from pipeline.outputs.commit import ShardStats, abort_stray_uploads
from pipeline.outputs.marker_index import IndexKeeper
from pipeline.outputs.run_state import RunState
from pipeline.outputs.status import RunStatus, run_status
from pipeline.processing.run_identity import check_run_identity
from pipeline.processing.shard import ShardTask
from pipeline.storage import Storage, StorageSettings
from pipeline.storage.concurrent import map_bounded
from pipeline.storage.uris import canonical_uri, public_uri
from pipeline.weights.resolve import ResolvedWeights, resolve_weights
from pipeline.wording import counted

if TYPE_CHECKING:
    from pipeline.execution.pool import ActorPool

log = logging.getLogger(__name__)
COUNT_THREADS = 8  # manifest footers read at once when counting a run's items


@dataclass
class RunSummary:
    """What `restyle run` reports. The item counts, images/s and exit code are the run's totals
    over every commit (`restyle status` computes the very same from the same markers and
    records); the shard counts say what this invocation did."""

    run_uri: str
    fingerprint: str
    weights: str = ""  # the weights spec ("tiny", "s3://...", a folder)
    random_weights: bool = False  # the pictures are noise
    shards_total: int = 0
    shards_already_done: int = 0
    shards_committed: int = 0  # by this invocation
    shards_failed: dict[int, str] = field(default_factory=dict)  # shard index -> reason
    shards_missing: int = 0  # input shards without a commit when the run ended
    uncommitted: int = 0  # objects of an interrupted commit still without a marker
    items: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    errors: Counter = field(default_factory=Counter)
    images_per_s: float = 0.0  # the same figure as `restyle status`
    items_retried: int = 0  # `--retry-failed`: failed items this invocation re-ran
    wall_s: float = 0.0  # this invocation, Ray's start included
    interrupted: bool = False  # SIGTERM/SIGINT stopped the dispatch of shards

    @property
    def exit_code(self) -> ExitCode:
        code = ExitCode.of_run(
            shards_missing=self.shards_missing,
            items_failed=self.failed,
            uncommitted=self.uncommitted,
        )
        return ExitCode.INTERRUPTED if self.interrupted and code == ExitCode.INCOMPLETE else code

    def take_totals(self, status: RunStatus) -> None:
        self.shards_missing = status.shards_missing
        self.uncommitted = len(status.uncommitted)
        self.items, self.ok, self.failed, self.skipped = (
            status.items,
            status.ok,
            status.failed,
            status.skipped,
        )
        self.errors = Counter(status.errors)
        self.images_per_s = status.images_per_s

    def advice(self) -> str | None:
        """What to do next, when something is left to do."""
        if self.shards_missing or self.uncommitted:
            missing = self.shards_missing or self.uncommitted
            why = "stopped by a signal; " if self.interrupted else ""
            them = "it" if missing == 1 else "them"
            return (
                f"{why}{counted(missing, 'shard')} not committed: rerun the same command to "
                f"finish {them}"
            )
        if self.failed:
            them = "it" if self.failed == 1 else "them"
            failed = counted(self.failed, "item")
            return f"{failed} failed: rerun with --retry-failed to redo only {them}"
        return None


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
        driver: DriverSettings | None = None,
    ):
        self.config = config
        self.settings = storage_settings
        self.storage = Storage(storage_settings)
        self.state = RunState(self.storage, config.run_uri)
        # the run lease and shard claims: one driver per run, or helpers without duplicates
        self.sharing = SharedRun(self.storage, config.run_uri, driver or DriverSettings())
        self.address = address
        self.show_progress = show_progress
        self.weights = weights
        self.pool: ActorPool | None = None  # the live actors while a run executes

    # ------------------------------------------------------------------ planning
    def plan(self) -> Plan:
        self.state.read_run_json()  # a folder of another output layout is refused here
        # Canonical (absolute, symlinks resolved): a shard's identity in markers, records and
        # provenance, whatever the spelling of the spec; run folders are never input.
        listed = list_shards(
            list(self.config.manifest),
            self.storage,
            exclude=self.config.run_uri,
            limits=self.config.limits,  # local manifests outside local_roots are refused
        )
        shards = [dataclasses.replace(s, uri=canonical_uri(s.uri)) for s in listed]
        check_run_identity(shards, self.storage)  # one key per item, one item per id
        if self.weights is None:
            self.weights = resolve_weights(
                self.config.weights, self.config.model, storage=self.storage
            )
        weights = self.weights
        fingerprint = self.config.fingerprint(weights.sha256)
        done = self.state.main_commits([(s.index, s.uri) for s in shards], fingerprint)
        return Plan(self.config, weights, fingerprint, shards, done)

    def check_weights(self, plan: Plan) -> None:
        """The checks of `restyle weights verify` (without hashes) on the driver, before any
        actor starts: one line naming the file. After the manifests' checks, because it imports
        torch: a wrong manifest is refused in a light process, and `restyle plan` (a light
        command) leaves this check to `run`."""
        if plan.weights.root is not None:  # remote weights are checked where actors stage them
            from pipeline.weights.verify import check_before_run

            check_before_run(plan.weights.root, self.config.model)

    def conflict(self, plan: Plan) -> None:
        """Refuse, as `run` would, a run folder that holds another configuration."""
        self.state.check_claim(plan.run_json(self.settings))

    def count_items(self, shards: list[ManifestShard]) -> dict[int, int]:
        """Items of each shard (by index) from its footer (or tar headers), a few files at a
        time; a manifest without an `id` column, or with a column of the wrong type, is
        refused here."""
        counts = map_bounded(lambda shard: count_items(shard, self.storage), shards, COUNT_THREADS)
        return {shard.index: n for shard, n in zip(shards, counts, strict=True)}

    # ------------------------------------------------------------------ running
    def run(self) -> RunSummary:
        """Run the shards not yet committed. Everything that can be checked is checked before
        Ray starts: the Ray address, the manifests' columns, the weights, the run folder."""
        from pipeline.execution.cluster import check_address

        check_address(self.address)
        plan = self.plan()
        only = None if self.config.only_ids is None else frozenset(self.config.only_ids)
        shard_items = self.count_items(plan.todo) if only is None else {}
        total_items = sum(shard_items.values()) if only is None else len(only)
        self.check_weights(plan)
        run_json = plan.run_json(self.settings)
        # A folder of another configuration is refused now; run.json is written once Ray is
        # up, so a run that cannot start leaves nothing behind.
        self.state.check_claim(run_json)
        summary = self._summary(plan, shards_already_done=len(plan.done))
        with self.sharing.held():  # a second driver is refused here, before Ray starts
            tasks = self.run_tasks(plan, shard_items)
            return self._execute(tasks, summary, total_items, claim=run_json)

    def run_tasks(self, plan: Plan, shard_items: dict[int, int] | None = None) -> list[ShardTask]:
        """One task per shard not yet committed: the whole shard, its first attempt
        (`shard_items`: the items `count_items` found in each, for the progress figures)."""
        only = None if self.config.only_ids is None else frozenset(self.config.only_ids)
        return [
            ShardTask(
                shard=s,
                folder=public_uri(self.config.run_uri),
                fingerprint=plan.fingerprint,
                weights=plan.weights.sha256,
                random_weights=plan.weights.random,
                only_ids=only,
                items=(shard_items or {}).get(s.index),
            )
            for s in plan.todo
        ]

    def retry_failed(self) -> RunSummary:
        """Re-run only failed items of committed shards into a new retry commit per shard."""
        from pipeline.execution.cluster import check_address

        check_address(self.address)
        plan = self.plan()
        if self.state.read_run_json() is None:
            raise RunError(f"{self.config.run_uri} has no run.json: nothing to retry")
        self.check_weights(plan)
        self.state.claim(plan.run_json(self.settings))  # same fingerprint, or a clear refusal
        with self.sharing.held():
            tasks = self.retry_tasks(plan)
            summary = self._summary(plan, shards_already_done=len(plan.done))
            summary.items_retried = sum(len(t.only_ids or ()) for t in tasks)
            if not tasks:
                log.info("no failed items in %s", self.config.run_uri)
            return self._execute(tasks, summary, summary.items_retried)

    def _summary(self, plan: Plan, shards_already_done: int) -> RunSummary:
        return RunSummary(
            self.config.run_uri,
            plan.fingerprint,
            weights=str(plan.weights.spec),
            random_weights=plan.weights.random,
            shards_total=len(plan.shards),
            shards_already_done=shards_already_done,
        )

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
    def _execute(
        self,
        tasks: list[ShardTask],
        summary: RunSummary,
        total_items: int,
        claim: dict | None = None,
    ) -> RunSummary:
        """Run `tasks` on Ray; `claim`: the run.json to write once Ray is up."""
        t0 = time.perf_counter()
        if summary.random_weights:
            log.warning(
                "weights %r are RANDOM: the pictures will be noise (for real ones: --weights "
                "hf, an s3:// mirror or a weights folder)",
                summary.weights,
            )
        # the marker index: rewritten now and then while shards commit, and at the end
        index = IndexKeeper(
            self.storage, self.config.run_uri, self.state.fork().refresh_index_entries
        )
        if tasks:
            # A pass that fails leaves the index as it was (stale only costs speed): refreshing
            # it then could spend the storage retry budget before the error is reported.
            with watching_cluster():  # a head node that dies mid-run: one line, exit 4
                self._run_on_ray(tasks, summary, total_items, claim, index)
        elif claim is not None:
            self.state.claim(claim)
        summary.take_totals(run_status(self.state))
        index.finish(self.state.index_entries())  # status just read every marker
        if not summary.shards_missing and not summary.uncommitted:
            abort_stray_uploads(self.storage, self.config.run_uri)
        summary.wall_s = time.perf_counter() - t0
        return summary

    def _run_on_ray(
        self,
        tasks: list[ShardTask],
        summary: RunSummary,
        total_items: int,
        claim: dict | None,
        index: IndexKeeper,
    ) -> None:
        from pipeline.execution.actor import SHARDS_IN_FLIGHT_PER_ACTOR, StylizeActor
        from pipeline.execution.cluster import connect
        from pipeline.execution.dispatch import dispatch
        from pipeline.execution.drain import drain_on_signals
        from pipeline.execution.metrics import RunMetrics
        from pipeline.execution.pool import ActorPool, ActorSpec, pool_size

        progress = RunProgress(self.show_progress, len(tasks), total_items)
        try:
            progress.phase("starting Ray")
            connect(self.address)
            if claim is not None:
                self.state.claim(claim)
            metrics = RunMetrics(self.config.model)
            weights = str(self.config.weights)
            spec = ActorSpec(
                StylizeActor,
                (self.config, self.settings),
                tasks_per_actor=SHARDS_IN_FLIGHT_PER_ACTOR,
                kind="model actor",
                detail=f"for {self.config.model!r} (weights {weights!r})",
            )
            # Actors load while shards already go to the first ones ready; `--device cuda`
            # asks Ray for GPUs even before any GPU node has joined (an autoscaler sees it).
            pool = self.pool = ActorPool(
                spec,
                pool_size(self.config.actors, len(tasks)),
                gpu=True if self.config.options.device.startswith("cuda") else None,
                capacity_wait_s=self.config.capacity_wait,
            )
            progress.phase(f"running (weights {weights})")
            finished = 0

            def submit(actor: Any, task: ShardTask, seq: int) -> Any:
                progress.work_started()  # images/s counts from the first shard handed out
                return actor.process.remote(dataclasses.replace(task, seq=seq))

            def committed(task: ShardTask, stats: ShardStats) -> None:
                nonlocal finished
                finished += 1
                summary.shards_committed += 1
                progress.shard_committed(stats)
                metrics.shard_committed(stats)
                index.committed()
                publish()

            def failed(task: ShardTask, reason: str) -> None:
                nonlocal finished
                finished += 1
                summary.shards_failed[task.shard.index] = reason
                metrics.shard_failed()

            live: dict[int, tuple[int, int]] = {}

            def publish() -> None:
                ready = len(self.pool.ready()) if self.pool else 0
                in_flight = min(len(tasks) - finished, ready * SHARDS_IN_FLIGHT_PER_ACTOR)
                metrics.tick(
                    progress.images_per_s(),
                    queued_shards=len(tasks) - finished - in_flight,
                    items_in_flight=sum(done for done, _ in live.values()),
                )

            def live_progress() -> None:
                live.clear()
                for answer in self.pool.poll("progress") if self.pool else []:
                    live.update(answer)
                progress.set_notes(self.pool.notes() if self.pool else [])
                progress.update_live(live)
                publish()

            with drain_on_signals(self.config.drain_grace) as drain:
                self.sharing.dispatch_all(
                    tasks,
                    lambda todo, claim: dispatch(
                        pool,
                        todo,
                        submit=submit,
                        on_result=committed,
                        on_failure=failed,
                        max_attempts=self.config.max_shard_attempts,
                        describe=lambda task: f"shard {task.shard.index}",
                        on_tick=live_progress,
                        drain=drain,
                        claim=claim,
                    ),
                    progress,
                    stopped=lambda: drain.requested,
                )
                summary.interrupted = drain.requested
        finally:
            progress.close()
            if self.pool is not None:
                self.pool.shutdown()
                self.pool = None
