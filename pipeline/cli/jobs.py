"""The job commands of `restyle`: triplets, nightly, submit, caption.

Registered on the main typer app by `pipeline/cli/main.py`. Each
command reads a job spec (jobs/*.yaml, see `pipeline.jobs.specs`) or a run folder, calls the
library, prints a table (or `--json`) and exits with the codes of `restyle run`
(`pipeline.errors.ExitCode`): 0 everything ok, 3 items failed, 4 shards not committed, 2 a
wrong option or spec, 5 an input that cannot be used; `submit` adds 7 (already submitted for
this night) and, with --wait, 8 (the job failed).
"""

from __future__ import annotations

import dataclasses
import json
from enum import StrEnum
from typing import Annotated, Any

import typer

from pipeline.cli.common import (
    Address,
    AsJson,
    Endpoint,
    Profile,
    Progress,
    Region,
    console,
    emit,
    env,
    fail,
    operator_errors,
    print_json,
    storage_settings,
)
from pipeline.errors import ExitCode
from pipeline.wording import counted


class RuntimeEnv(StrEnum):
    """How a submitted job gets restyle (see `pipeline.jobs.submit`)."""

    PROJECT = "project"
    SOURCE = "source"
    CLUSTER = "cluster"


SpecArg = Annotated[
    str | None,
    typer.Argument(
        help="Job spec (local path or s3:// URI). Default: the spec in $RESTYLE_JOB_SPEC, which "
        "`restyle submit` sets for the job it starts.",
        envvar=env("spec"),
    ),
]
Night = Annotated[
    str | None,
    typer.Option(
        help="Night label, normally the date (default: today, UTC). Names the run folder and the "
        "submission id.",
        envvar=env("--night"),
    ),
]


def _load(spec: str | None, kind: str, settings):
    from pipeline.jobs.specs import SpecError, read_spec
    from pipeline.storage import Storage

    source = read_spec(spec, Storage(settings))
    if source.kind != kind:
        raise SpecError(
            source.origin, None, f"is a {source.kind} spec; use `restyle {source.kind}`"
        )
    return source


def triplets(
    spec: SpecArg = None,
    address: Address = None,
    progress: Progress = True,
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    as_json: AsJson = False,
) -> None:
    """Build (style, subject, result) triplet shards from a subject and a style catalog."""
    from pipeline.jobs.triplet_pairing import TripletError
    from pipeline.jobs.triplets import TripletJob, TripletSpec

    settings = storage_settings(endpoint_url, region, profile)
    with operator_errors(TripletError, as_json=as_json):
        job = TripletJob(
            TripletSpec.parse(_load(spec, "triplets", settings)), settings, address, progress
        )
        summary = job.run()
    rows = [
        ("triplets", ", ".join(f"{m}: {n}" for m, n in summary.pairs.items())),
        ("catalog rows left out", str(len(summary.rejected_rows))),
    ]
    for model, run in summary.runs.items():
        rows.append((f"{model}", f"{run.ok} ok, {run.failed} failed; {run.run_uri}"))
    for model, gate in summary.gates.items():
        rows.append(
            (f"{model} gates", f"{gate.kept} kept, {gate.rejected} rejected; {gate.kept_uri}")
        )
    data = {
        "name": summary.name,
        "pairs": summary.pairs,
        "rejected_rows": summary.rejected_rows,
        "exit_code": summary.exit_code,
        "stopped": summary.stopped,
        "runs": {
            m: {**dataclasses.asdict(r), "errors": dict(r.errors), "exit_code": r.exit_code}
            for m, r in summary.runs.items()
        },
        "gates": {m: dataclasses.asdict(g) for m, g in summary.gates.items()},
        "evals": {m: dataclasses.asdict(e) for m, e in summary.evals.items()},
    }
    emit(f"triplets {summary.name}", rows, data, as_json)
    raise typer.Exit(summary.exit_code)


def nightly(
    spec: SpecArg = None,
    night: Night = None,
    address: Address = None,
    progress: Progress = True,
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    as_json: AsJson = False,
) -> None:
    """Restyle the catalog rows not yet produced under this config (a no-op when none)."""
    from pipeline.jobs.nightly import NightlyError, NightlyJob, NightlySpec

    settings = storage_settings(endpoint_url, region, profile)
    with operator_errors(NightlyError, as_json=as_json):
        job = NightlyJob(
            NightlySpec.parse(_load(spec, "nightly", settings)), settings, night, address, progress
        )
        summary = job.run()
    rows = [
        ("night", summary.night),
        ("fingerprint", summary.fingerprint),
        (
            "catalog",
            f"{counted(summary.catalog_rows, 'row')} read, {summary.already_done} already done, "
            f"{summary.other_model} for another model, "
            f"{len(summary.rejected)} left out",
        ),
        (
            "this night",
            "nothing new: no-op"
            if summary.noop
            else counted(summary.new, "row")
            + (" (re-run: resumed the night's manifest)" if summary.resumed else ""),
        ),
    ]
    if summary.run is not None:
        rows += [
            ("run", summary.run_uri),
            ("items", f"{summary.run.ok} ok, {summary.run.failed} failed"),
            ("indexed", f"{summary.indexed} ids added to the done index"),
        ]
    for metric, q in summary.quality.items():
        flag = "REGRESSION" if q["regressed"] else "ok"
        rows.append(
            (
                f"  {metric}",
                f"median {q['median']:.4f} vs {q['baseline']:.4f} over {q['nights']} nights: {flag}",
            )
        )
    emit(f"nightly {summary.name}", rows, summary.public_dict(), as_json)
    raise typer.Exit(summary.exit_code)


def submit(
    spec: Annotated[
        str, typer.Argument(help="Job spec file (nightly or triplets).", envvar=env("spec"))
    ],
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray job API address, e.g. http://head:8265 (default: $RAY_ADDRESS).",
            envvar=env("--job-address"),
        ),
    ] = None,
    night: Night = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Stream the job's logs until it ends.", envvar=env("--wait")),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the submission (id, entrypoint, runtime environment) and submit nothing.",
            envvar=env("--dry-run"),
        ),
    ] = False,
    runtime_env: Annotated[
        RuntimeEnv,
        typer.Option(
            "--runtime-env",
            help="project (upload restyle + pip its dependencies, not torch or Ray) | "
            "source (upload restyle only) | cluster (the image has restyle).",
            envvar=env("--runtime-env"),
        ),
    ] = RuntimeEnv.PROJECT,
    submission_id: Annotated[
        str | None,
        typer.Option(
            help="Override the deterministic id <name>-<night> (for a deliberate re-run).",
            envvar=env("--submission-id"),
        ),
    ] = None,
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    as_json: AsJson = False,
) -> None:
    """Submit a job spec to a Ray cluster; refused if this job already ran for this night."""
    from pipeline.errors import ConfigError
    from pipeline.jobs.nightly import check_night, today
    from pipeline.jobs.specs import read_spec
    from pipeline.jobs.submit import (
        DuplicateSubmissionError,
        SubmissionError,
        build_submission,
        client_for,
    )
    from pipeline.jobs.submit import submit as submit_job
    from pipeline.storage import Storage

    try:
        source = read_spec(spec, Storage(storage_settings(endpoint_url, region, profile)))
        plan = build_submission(
            source, check_night(night or today()), runtime_env.value, submission_id
        )
        if dry_run:
            _print_submission(plan, as_json)
            raise typer.Exit(int(ExitCode.OK))
        client = client_for(address)
        job_id = submit_job(client, plan)
    except DuplicateSubmissionError as error:
        fail(str(error), code=ExitCode.ALREADY_SUBMITTED, as_json=as_json)
    except ConfigError as error:
        fail(str(error), code=ExitCode.USAGE, as_json=as_json)
    except (SubmissionError, ValueError) as error:
        fail(str(error), as_json=as_json)
    emit(
        "submitted",
        [("submission id", job_id), ("entrypoint", plan.entrypoint)],
        {"submission_id": job_id, "entrypoint": plan.entrypoint},
        as_json,
    )
    if wait:
        status = follow_until_stopped(client, job_id, as_json)
        console.print(f"job {job_id}: {status}")
        raise typer.Exit(int(ExitCode.OK if status == "SUCCEEDED" else ExitCode.JOB_FAILED))


def follow_until_stopped(client: Any, job_id: str, as_json: bool) -> str:
    """The job's final status, its logs streamed meanwhile; SIGINT/SIGTERM stops the following,
    not the job (exit INTERRUPTED with a line that says how to follow or stop it)."""
    from pipeline.errors import Interrupted
    from pipeline.execution.drain import stop_on_signals
    from pipeline.jobs.submit import follow

    try:
        with stop_on_signals():
            return follow(client, job_id)
    except Interrupted as stop:
        fail(
            f"stopped following job {job_id} ({stop.signal_name}): the job keeps running; "
            f"`ray job logs --follow {job_id}` follows it, `ray job stop {job_id}` stops it",
            ExitCode.INTERRUPTED,
            as_json,
        )


def _print_submission(plan, as_json: bool) -> None:
    """What `submit` would send: the id, the entrypoint and the runtime environment."""
    data = {
        "submission_id": plan.submission_id,
        "entrypoint": plan.entrypoint,
        "runtime_env": plan.runtime_env,
        "metadata": plan.metadata,
    }
    if as_json:
        print_json(data)
        return
    env_vars = dict(plan.runtime_env.get("env_vars", {}))
    shown = {k: (f"<{len(v)} characters>" if "\n" in v else v) for k, v in env_vars.items()}
    emit(
        "submission (dry run: nothing submitted)",
        [
            ("submission id", plan.submission_id),
            ("entrypoint", plan.entrypoint),
            ("runtime env", json.dumps({**plan.runtime_env, "env_vars": shown}, indent=1)),
        ],
        data,
        as_json=False,
    )


def caption(
    run_uri: Annotated[
        str, typer.Argument(help="A run folder: <out>/<run>.", envvar=env("run_uri"))
    ],
    model: Annotated[
        str,
        typer.Option(
            help="Captioning model: a transformers folder, an s3:// folder, "
            "hf://owner/repo(@revision), or 'tiny'.",
            envvar=env("--caption-model"),
        ),
    ],
    actors: Annotated[
        int,
        typer.Option(
            help="Caption actors (0 = one per GPU that can be placed, or 1).",
            envvar=env("--actors"),
        ),
    ] = 0,
    device: Annotated[
        str, typer.Option(help="auto | cuda | cuda:N | cpu", envvar=env("--device"))
    ] = "auto",
    address: Address = None,
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    as_json: AsJson = False,
) -> None:
    """Caption a finished run's results as a separate stage (sidecar parquet per shard)."""
    from pipeline.jobs.caption import caption_run

    with operator_errors(as_json=as_json):
        summary = caption_run(
            run_uri, model, storage_settings(endpoint_url, region, profile), actors, device, address
        )
    rows = [
        (
            "shards",
            f"{summary.shards_captioned} captioned, {summary.shards_kept} kept, "
            f"{len(summary.failed)} failed",
        ),
        ("captions", str(summary.captions)),
    ]
    rows += [(f"failed {uri}", reason) for uri, reason in summary.failed.items()]
    emit(f"captions of {run_uri}", rows, dataclasses.asdict(summary), as_json)
    raise typer.Exit(summary.exit_code)
