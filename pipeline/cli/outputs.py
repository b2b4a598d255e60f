"""`restyle migrate`: commands about run folders as datasets (layout in `pipeline.outputs`)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from pipeline.cli.common import (
    AsJson,
    Endpoint,
    Profile,
    Region,
    emit,
    env,
    operator_errors,
    storage_settings,
)
from pipeline.wording import counted


def migrate(
    run_uri: Annotated[
        str, typer.Argument(help="The run folder: <out>/<run>.", envvar=env("run_uri"))
    ],
    relative_to: Annotated[
        str | None,
        typer.Option(
            "--relative-to",
            help="The folder the run was started from: relative local paths in its records and "
            "provenance are made absolute against it (default: the current folder).",
            envvar=env("--relative-to"),
        ),
    ] = None,
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    as_json: AsJson = False,
) -> None:
    """Bring a run folder written by an older restyle to the current output layout, so that
    status, resume, --retry-failed and every dataset reader work on it. Safe to repeat."""
    from pipeline.outputs.migrate import migrate_run
    from pipeline.storage import Storage

    storage = Storage(storage_settings(endpoint_url, region, profile))
    with operator_errors(as_json=as_json):
        report = migrate_run(storage, run_uri, relative_to)
    rows = [
        ("from layout", str(report.from_layout)),
        ("shards", f"{report.shards} migrated, {counted(report.retries, 'retry commit')}"),
        ("samples", f"{counted(report.samples, 'provenance file')} rewritten"),
        ("captions", f"{counted(report.captions, 'sidecar')} moved to captions/"),
        ("scores", f"{counted(report.scores, 'eval score file')} moved to scores/<k>.*"),
        ("removed", counted(len(report.removed), "layout-1 object")),
    ]
    emit(f"migrated {report.run_uri}", rows, dataclasses.asdict(report), as_json)
