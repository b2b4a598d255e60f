"""Captioning a finished run as a separate stage: `restyle caption <run folder>`.

Why separate: the captioner can run on other machines (CPU nodes, smaller GPUs) than FLUX,
after the fact, and be changed without re-rendering anything. For each committed shard, main
or retry, the stage writes a caption sidecar for its tar under `<run>/captions/`
(`pipeline.outputs.caption_sidecars`), then adds the captions to the run's dataset card.
A sidecar made with the same model spec is kept (re-running the stage resumes); another spec
replaces it.

Work goes through the same actor pool and dispatch loop as a run (`pipeline.execution`): one
model load per actor, one GPU each when the cluster has GPUs, a dead actor replaced and its
shard redone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pipeline.errors import ExitCode
from pipeline.outputs.caption_sidecars import sidecar_model, sidecar_uri
from pipeline.outputs.card import write_card
from pipeline.outputs.run_state import RunState
from pipeline.storage import Storage, StorageSettings
from pipeline.storage.concurrent import map_bounded

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a shard whose actor died is redone on a fresh actor this many times in all


@dataclass
class CaptionSummary:
    run_uri: str
    shards_captioned: int = 0
    shards_kept: int = 0
    captions: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # tar URI -> reason

    @property
    def exit_code(self) -> int:
        return ExitCode.INCOMPLETE if self.failed else ExitCode.OK


@dataclass
class CaptionPlan:
    """The shards a caption stage still has to caption: (tar URI, sidecar URI) pairs."""

    storage: Storage
    state: RunState
    run_json: dict
    summary: CaptionSummary
    todo: list[tuple[str, str]] = field(default_factory=list)

    def finish(self) -> None:
        """After captioning: the dataset card lists the captions."""
        write_card(self.storage, self.state.run_uri, self.run_json)


def caption_plan(storage: Storage, run_uri: str, model_spec: str) -> CaptionPlan:
    """Every committed shard (first runs and retries) without a sidecar from `model_spec`."""
    state = RunState(storage, run_uri)
    run_json = state.read_run_json()
    if run_json is None:
        raise FileNotFoundError(f"{run_uri}: not a run folder (no run.json)")
    plan = CaptionPlan(storage, state, run_json, CaptionSummary(run_uri))
    commits = state.commits()
    # One request per sidecar, a bounded number in flight (10^4 commits on S3 at 20 ms each
    # would cost minutes one after another).
    models = map_bounded(lambda commit: sidecar_model(storage, sidecar_uri(commit.paths)), commits)
    for commit, model in zip(commits, models, strict=True):
        if model == model_spec:
            plan.summary.shards_kept += 1
        elif commit.stats.ok:
            plan.todo.append((commit.paths.tar, sidecar_uri(commit.paths)))
    return plan


def caption_run(
    run_uri: str,
    model_spec: str,
    storage_settings: StorageSettings,
    actors: int = 1,
    device: str = "auto",
    address: str | None = None,
) -> CaptionSummary:
    """Caption every committed shard of a run that lacks a sidecar from this model spec."""
    from pipeline.execution.actor import CaptionActor
    from pipeline.execution.cluster import connect
    from pipeline.execution.cluster_watch import watching_cluster
    from pipeline.execution.dispatch import dispatch
    from pipeline.execution.pool import ActorPool, ActorSpec, pool_size

    storage = Storage(storage_settings)
    plan = caption_plan(storage, run_uri, model_spec)
    summary = plan.summary
    if not plan.todo:
        plan.finish()
        return summary
    with watching_cluster():  # a head node that dies mid-way: one line, exit 4
        connect(address)
        spec = ActorSpec(
            CaptionActor,
            (model_spec, device, storage_settings),
            kind="caption actor",
            detail=f"for {model_spec!r}",
        )
        pool = ActorPool(spec, pool_size(actors, len(plan.todo)))

        def captioned(task: tuple[str, str], rows: int) -> None:
            summary.captions += rows
            summary.shards_captioned += 1

        def failed(task: tuple[str, str], reason: str) -> None:
            summary.failed[task[0]] = reason

        try:
            dispatch(
                pool,
                plan.todo,
                submit=lambda actor, task, seq: actor.caption_shard.remote(*task),
                on_result=captioned,
                on_failure=failed,
                max_attempts=MAX_ATTEMPTS,
                describe=lambda task: f"captioning {task[0]}",
            )
        finally:
            pool.shutdown()
    plan.finish()
    return summary
