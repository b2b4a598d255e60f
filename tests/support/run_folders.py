"""Run folders made by the real pipeline in this process, without Ray: the driver plans (and
plans retries), `StylizeActor`'s body processes the shards, `ShardCaptioner` captions them.
The same code a Ray run executes, minus the transport, so reader tests stay in the fast lane."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.config import RunConfig
from pipeline.execution.actor import StylizeActor
from pipeline.execution.driver import Runner
from pipeline.jobs.caption import caption_plan
from pipeline.outputs.commit import ShardStats
from pipeline.processing.caption_model import ModelCaptioner
from pipeline.processing.caption_shard import ShardCaptioner
from pipeline.storage import Storage, StorageSettings


def run_in_process(config: RunConfig, retry: bool = False) -> list[ShardStats]:
    """`restyle run` (or `restyle run --retry-failed`) of `config`, shard after shard."""
    settings = StorageSettings()
    runner = Runner(config, settings, show_progress=False)
    plan = runner.plan()
    runner.state.claim(plan.run_json(settings))
    tasks = runner.retry_tasks(plan) if retry else runner.run_tasks(plan)
    actor = StylizeActor(config, settings)
    try:
        return [actor.process(dataclasses.replace(t, seq=i)) for i, t in enumerate(tasks)]
    finally:
        actor.processor.close()


def caption_in_process(run_uri: str, model_spec: str) -> int:
    """`restyle caption <run> --model <spec>`: the number of captions written."""
    storage = Storage(StorageSettings())
    plan = caption_plan(storage, run_uri, model_spec)
    captioner = ShardCaptioner(ModelCaptioner(model_spec, device="cpu"), storage, model_spec)
    rows = sum(captioner.caption_shard(tar, out) for tar, out in plan.todo)
    plan.finish()
    return rows


def status_of(run: str | Path) -> dict:
    """What `restyle status <run> --json` reports (exit 0: complete and all ok, 3: items
    failed, 4: not complete)."""
    result = CliRunner().invoke(app, ["status", str(run), "--json"])
    assert result.exit_code in (0, 3, 4), result.output
    return json.loads(result.stdout)
