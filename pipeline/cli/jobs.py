"""The job commands of `restyle`: triplets, nightly, submit, caption.

Registered on the main typer app by `pipeline/cli/main.py`. Each
command reads a job spec (jobs/*.yaml, see `pipeline.jobs.specs`) or a run folder, calls the
library, prints a table (or `--json`) and exits 0 when everything came out ok, 1 when items
failed, 2 when the job could not run or shards failed.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated

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
    fail,
    operator_errors,
    storage_settings,
)

SpecArg = Annotated[
    str | None,
    typer.Argument(
        help="Job spec (local path or s3:// URI). Default: the spec in $RESTYLE_JOB_SPEC, which "
        "`restyle submit` sets for the job it starts."
    ),
]
Night = Annotated[
    str | None,
    typer.Option(
        help="Night label, normally the date (default: today, UTC). Names the run folder and the "
        "submission id."
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
    from pipeline.jobs.triplets import TripletError, TripletJob, TripletSpec

    logging.basicConfig(level=logging.WARNING)
    settings = storage_settings(endpoint_url, region, profile)
    with operator_errors(TripletError):
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

    logging.basicConfig(level=logging.WARNING)
    settings = storage_settings(endpoint_url, region, profile)
    with operator_errors(NightlyError):
        job = NightlyJob(
            NightlySpec.parse(_load(spec, "nightly", settings)), settings, night, address, progress
        )
        summary = job.run()
    rows = [
        ("night", summary.night),
        ("fingerprint", summary.fingerprint),
        (
            "catalog",
            f"{summary.catalog_rows} rows read, {summary.already_done} already done, "
            f"{summary.other_model} for another model, "
            f"{len(summary.rejected)} left out",
        ),
        (
            "this night",
            "nothing new: no-op"
            if summary.noop
            else f"{summary.new} rows"
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
    spec: Annotated[str, typer.Argument(help="Job spec file (nightly or triplets).")],
    address: Annotated[
        str | None,
        typer.Option(help="Ray job API address, e.g. http://head:8265 (default: $RAY_ADDRESS)."),
    ] = None,
    night: Night = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Stream the job's logs until it ends.")
    ] = False,
    runtime_env: Annotated[
        str,
        typer.Option(
            "--runtime-env",
            help="project (upload restyle + pip its dependencies, not torch) | "
            "source (upload restyle only) | cluster (the image has restyle).",
        ),
    ] = "project",
    submission_id: Annotated[
        str | None,
        typer.Option(
            help="Override the deterministic id <name>-<night> (for a deliberate re-run)."
        ),
    ] = None,
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    as_json: AsJson = False,
) -> None:
    """Submit a job spec to a Ray cluster; refused if this job already ran for this night."""
    from pipeline.jobs.nightly import check_night, today
    from pipeline.jobs.specs import read_spec
    from pipeline.jobs.submit import (
        DuplicateSubmissionError,
        SubmissionError,
        build_submission,
        client_for,
        follow,
    )
    from pipeline.jobs.submit import submit as submit_job
    from pipeline.storage import Storage

    try:
        source = read_spec(spec, Storage(storage_settings(endpoint_url, region, profile)))
        plan = build_submission(source, check_night(night or today()), runtime_env, submission_id)
        client = client_for(address)
        job_id = submit_job(client, plan)
    except DuplicateSubmissionError as error:
        fail(str(error), code=3)
    except (SubmissionError, ValueError) as error:
        fail(str(error))
    emit(
        "submitted",
        [("submission id", job_id), ("entrypoint", plan.entrypoint)],
        {"submission_id": job_id, "entrypoint": plan.entrypoint},
        as_json,
    )
    if wait:
        status = follow(client, job_id)
        console.print(f"job {job_id}: {status}")
        raise typer.Exit(0 if status == "SUCCEEDED" else 1)


def caption(
    run_uri: Annotated[str, typer.Argument(help="A run folder: <out>/<run>.")],
    model: Annotated[
        str,
        typer.Option(help="Captioning model: a transformers folder, an s3:// folder, or 'tiny'."),
    ],
    actors: Annotated[int, typer.Option(help="Caption actors (0 = one per GPU, or 1).")] = 0,
    device: Annotated[str, typer.Option(help="auto | cuda | cpu")] = "auto",
    address: Address = None,
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    as_json: AsJson = False,
) -> None:
    """Caption a finished run's results as a separate stage (sidecar parquet per shard)."""
    from pipeline.jobs.caption import caption_run

    logging.basicConfig(level=logging.WARNING)
    with operator_errors():
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
