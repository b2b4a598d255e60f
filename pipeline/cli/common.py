"""What every `restyle` command shares: option types, output, and one-line operator errors.

A command prints a table for people or one JSON object for scripts (`emit`), and turns the
errors an operator can fix into one red line and an exit code (`operator_errors`, `fail`)
instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.storage import StorageSettings

console = Console(stderr=True)

Manifest = Annotated[
    list[str],
    typer.Argument(
        help="Manifest files, folders, globs or brace ranges; local paths or s3:// URIs."
    ),
]
Out = Annotated[str, typer.Option("--out", "-o", help="Output root (local folder or s3:// URI).")]
RunName = Annotated[
    str | None,
    typer.Option(
        "--run",
        help="Run name; outputs go to <out>/<run>/. Default: <model>-<config fingerprint>, "
        "so the same command resumes and a changed config gets its own folder.",
    ),
]
Model = Annotated[str, typer.Option("--model", "-m", help="uso | omniconsistency")]
Weights = Annotated[
    str,
    typer.Option(
        "--weights",
        help="'tiny' (tiny random weights: pictures are noise), 'random-full' "
        "(speed benchmarks), 'hf' (Hugging Face Hub, HF_TOKEN), an s3:// mirror "
        "(restyle weights pull --to s3://...), or a local weights folder.",
    ),
]
Endpoint = Annotated[
    str | None,
    typer.Option(
        "--endpoint-url",
        help="S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL).",
    ),
]
Region = Annotated[str | None, typer.Option("--region", help="S3 region.")]
Profile = Annotated[str | None, typer.Option("--profile", help="AWS profile for credentials.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print a JSON object instead of a table.")]
Address = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster address (default: $RAY_ADDRESS inside a Ray job, else a local Ray)."
    ),
]
Progress = Annotated[bool, typer.Option(help="Show a progress bar.")]


def emit(title: str, rows: list[tuple[str, str]], data: dict, as_json: bool) -> None:
    """Print a result for people (a table) or for scripts (one JSON object on stdout)."""
    if as_json:
        print(json.dumps(data, indent=1, sort_keys=True, default=str))
        return
    table = Table(title=title, show_header=False)
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


def storage_settings(
    endpoint: str | None, region: str | None, profile: str | None
) -> StorageSettings:
    """The standard AWS environment, with the command line's overrides."""
    with operator_errors():  # e.g. credentials inside the endpoint URL: refused, never shown
        settings = StorageSettings.from_env()
        return dataclasses.replace(
            settings,
            endpoint_url=endpoint or settings.endpoint_url,
            region=region or settings.region,
            profile=profile or settings.profile,
        )


def fail(message: object, code: int = 2) -> NoReturn:
    """One red line on stderr, then exit with `code`."""
    console.print(f"[red]error:[/red] {escape(str(message))}", soft_wrap=True)  # "[a, b]" is text
    raise typer.Exit(code)


@contextmanager
def operator_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Turn the errors an operator can fix (bad manifest or spec, storage, weights, conflicting
    run, and any `extra` kinds) into one clear line and exit code 2, instead of a traceback."""
    from pipeline.errors import RunError, WeightsError
    from pipeline.storage import StorageError

    handled: tuple[type[BaseException], ...] = (
        RunError,
        StorageError,
        WeightsError,
        FileNotFoundError,
        ValueError,
        *extra,
    )
    try:
        yield
    except handled as error:
        fail(error)
