"""`restyle status | manifest validate`: the light commands that read what is on disk.

They import neither torch nor Ray (a test holds them to it): they answer in a fraction of a
second, and their exit code is always the documented one (torch and pyarrow in one
interpreter could abort it at exit with 134).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from pipeline.cli.common import (
    AsJson,
    Endpoint,
    Manifest,
    Profile,
    Region,
    emit,
    env,
    fail,
    operator_errors,
    storage_settings,
)
from pipeline.cli.run_options import LightStorageRetryBudgetOpt
from pipeline.errors import ExitCode
from pipeline.wording import counted

RANDOM_NOTE = "RANDOM weights: the pictures are noise"

manifest_app = typer.Typer(help="Manifest tools.", no_args_is_help=True)


def status(
    run_uri: Annotated[
        str, typer.Argument(help="The run folder: <out>/<run>.", envvar=env("run_uri"))
    ],
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    storage_retry_budget: LightStorageRetryBudgetOpt = None,
    as_json: AsJson = False,
) -> None:
    """Totals of a run folder: items as its current records (`part-*.parquet`) hold them,
    counted from its commit markers (a records file is read only where no marker holds its
    counts), shards and images/s, the weights, objects of interrupted commits. Exits with
    the code the run would: 0 complete and all ok, 3 items failed, 4 shards missing."""
    from pipeline.errors import RunError
    from pipeline.outputs.run_state import RunState
    from pipeline.outputs.status import run_status
    from pipeline.storage import Storage, StorageError

    storage = Storage(
        storage_settings(endpoint_url, region, profile, storage_retry_budget, light=True)
    )
    try:
        s = run_status(RunState(storage, run_uri))
    except (FileNotFoundError, StorageError, RunError) as error:  # RunError: a layout to migrate
        fail(str(error), as_json=as_json)
    rows = [
        ("fingerprint", s.fingerprint or "?"),
        (
            "weights",
            s.weights + ("  (RANDOM weights: the pictures are noise)" if s.random_weights else ""),
        ),
        (
            "shards",
            f"{s.shards_committed} of {s.input_shards} committed"
            + (f", {counted(s.retry_commits, 'retry commit')}" if s.retry_commits else ""),
        ),
        ("items", f"{s.ok} ok, {s.failed} failed, {s.skipped} skipped, of {s.items}"),
    ]
    rows += [(f"  {kind}", str(count)) for kind, count in sorted(s.errors.items())]
    rows += [("uncommitted (interrupted; rerun)", uri) for uri in s.uncommitted]
    rows.append(
        (
            "throughput",
            f"{s.images_per_s:.3f} images/s, model busy {s.model_fraction:.0%} of actor time",
        )
    )
    if s.shards_missing:
        missing = counted(s.shards_missing, "shard")
        rows.append(("next", f"{missing} not committed: rerun the run"))
    elif s.failed:
        rows.append(("next", "rerun the run with --retry-failed to redo the failed items"))
    data = {
        **dataclasses.asdict(s),
        "errors": dict(s.errors),
        "complete": s.complete,
        "exit_code": int(s.exit_code),
    }
    with operator_errors(as_json=as_json):  # a score file that cannot be read or reached: one line
        scores = run_scores(RunState(storage, run_uri))
    if scores:
        data["scores"] = scores
        rows += score_rows(scores)
    emit(f"status of {s.run_uri}", rows, data, as_json)
    raise typer.Exit(int(s.exit_code))


def run_scores(state) -> dict:
    """The run's eval results, when `restyle eval` has scored it: per-metric summaries of the
    current scores and the set figures of its summary (numpy and pyarrow only: no torch)."""
    from pipeline.outputs.score_stats import current_scores, read_summary, summarise

    metrics = summarise(current_scores(state))
    summary = read_summary(state) or {}
    if not metrics and not summary:
        return {}
    return {"metrics": metrics, "sets": summary.get("sets", {}), "eval": summary.get("eval")}


def score_rows(scores: dict) -> list[tuple[str, str]]:
    rows = [
        (f"  {name}", f"median {m['median']:.4f}, mean {m['mean']:.4f} (n={m['n']})")
        for name, m in scores["metrics"].items()
    ]
    rows += [
        (f"  {name}", f"{value:.4f}")
        for name, value in scores.get("sets", {}).items()
        if name in ("fid", "cmmd")
    ]
    return [("scores", f"eval {scores.get('eval') or '?'}"), *rows]


@manifest_app.command("validate")
def manifest_validate(
    manifest: Manifest,
    check_images: Annotated[
        bool,
        typer.Option(help="Also fetch and decode every image.", envvar=env("--check-images")),
    ] = False,
    local_root: Annotated[
        list[str] | None,
        typer.Option(
            "--local-root",
            help="Allowed local folder (repeatable; the run's limits.local_roots): local "
            "manifests and images outside every one are refused.",
            envvar=env("--local-root"),
        ),
    ] = None,
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    storage_retry_budget: LightStorageRetryBudgetOpt = None,
    as_json: AsJson = False,
) -> None:
    """Check a manifest up front; errors name the file, row and field (exit 6 when any); a
    local manifest outside every --local-root is refused in one line (exit 5)."""
    from pipeline.config import InputLimits
    from pipeline.manifests import validate_manifest
    from pipeline.storage import Storage

    storage = Storage(
        storage_settings(endpoint_url, region, profile, storage_retry_budget, light=True)
    )
    with operator_errors(as_json=as_json):  # refused credentials, an unreachable endpoint: one line
        limits = InputLimits(local_roots=tuple(local_root or ()))
        report = validate_manifest(manifest, storage, check_images=check_images, limits=limits)
    code = ExitCode.OK if report.ok else ExitCode.CHECK_FAILED
    if as_json:
        emit(
            "",
            [],
            {
                "ok": report.ok,
                "shards": [shard.uri for shard in report.shards],
                "rows": report.rows,
                "valid_items": report.valid_items,
                "images_checked": report.images_checked,
                "problems": [
                    {
                        "file": e.file,
                        "row": e.row,
                        "field": e.field,
                        "message": e.message,
                        "id": e.item_id,
                    }
                    for e in report.errors
                ],
                "exit_code": int(code),
            },
            as_json=True,
        )
    else:
        print(report.format())
    raise typer.Exit(int(code))
