"""What every `restyle` command shares: option types, output, and one-line operator errors.

A command prints a table for people or one JSON object for scripts (`emit`, `print_json`), and
turns the errors an operator can fix into one red line and a documented exit code
(`operator_errors`, `fail`, `pipeline.errors.ExitCode`) instead of a traceback. Under `--json`
stdout holds that object and nothing else (`json_stdout`, entered by the option itself). Every
option can also come from a `RESTYLE_<OPTION>` environment variable (shown in `--help`);
choices are enums, so `--help` lists them and the shell completes them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn, TextIO

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.config import ModelName
from pipeline.errors import ExitCode
from pipeline.execution.logs import STDERR
from pipeline.storage import StorageSettings
from pipeline.storage.settings import RETRY_BUDGET_ENV

console = STDERR
# The storage retry budget of the interactive commands, unless set (a run's is 300 s).
LIGHT_RETRY_BUDGET_S = 20.0


def env(option: str) -> str:
    """The environment variable of an option: `--caption-model` -> RESTYLE_CAPTION_MODEL."""
    return "RESTYLE_" + option.lstrip("-").replace("-", "_").upper()


Manifest = Annotated[
    list[str],
    typer.Argument(
        help="Manifest files, folders, globs or brace ranges; local paths or s3:// URIs.",
        envvar=env("manifest"),
    ),
]
Out = Annotated[
    str,
    typer.Option(
        "--out", "-o", help="Output root (local folder or s3:// URI).", envvar=env("--out")
    ),
]
RunName = Annotated[
    str | None,
    typer.Option(
        "--run",
        help="Run name; outputs go to <out>/<run>/. Default: <model>-<config fingerprint>, "
        "so the same command resumes and a changed config gets its own folder.",
        envvar=env("--run"),
    ),
]
Model = Annotated[ModelName, typer.Option("--model", "-m", help="Model.", envvar=env("--model"))]
Weights = Annotated[
    str,
    typer.Option(
        "--weights",
        help="'tiny' (tiny random weights: pictures are noise), 'random-full' "
        "(speed benchmarks), 'hf' (Hugging Face Hub, HF_TOKEN), an s3:// mirror "
        "(restyle weights pull --to s3://...), or a local weights folder.",
        envvar=env("--weights"),
    ),
]
Endpoint = Annotated[
    str | None,
    typer.Option(
        "--endpoint-url",
        help="S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL).",
        envvar=env("--endpoint-url"),
    ),
]
Region = Annotated[str | None, typer.Option("--region", help="S3 region.", envvar=env("--region"))]
Profile = Annotated[
    str | None,
    typer.Option("--profile", help="AWS profile for credentials.", envvar=env("--profile")),
]
_json_stream: TextIO | None = None  # where restyle's JSON goes while `json_stdout` holds stdout


def _process_stdout() -> bool:
    """True when `sys.stdout` writes to this process's file descriptor 1 (not a test runner's
    in-memory capture)."""
    try:
        return sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):
        return False


def _ray_running() -> bool:
    ray = sys.modules.get("ray")  # never imported here: light commands stay without Ray
    return bool(ray is not None and ray.is_initialized())


@contextmanager
def json_stdout() -> Iterator[TextIO]:
    """Keep stdout for restyle's one JSON object: a private duplicate of fd 1 becomes the stream
    `print_json` writes to, and fd 1 and `sys.stdout` point at stderr, so whatever else prints
    (Ray's log monitor: "(raylet) Raylet is terminated ...", actors' forwarded prints, C++ code,
    a library) lands on stderr and `restyle ... --json | jq` always reads one object.

    At the end stdout comes back, except while Ray runs in this process: its log forwarding goes
    on until its own shutdown at exit, so there stdout stays on stderr and the kept duplicate is
    closed (the reader sees the object's end at once). Under an in-memory capture (no fd 1)
    only `sys.stdout` is swapped."""
    global _json_stream
    sys.stdout.flush()
    real = _process_stdout()
    # os.dup's copy is not inheritable: processes started meanwhile (Ray's) never hold it open
    kept = os.fdopen(os.dup(1), "w", encoding="utf-8") if real else sys.stdout
    if real:
        os.dup2(2, 1)
    saved, sys.stdout, _json_stream = sys.stdout, sys.stderr, kept
    try:
        yield kept
    finally:
        kept.flush()
        _json_stream = None
        if not real:
            sys.stdout = saved
        elif _ray_running():
            kept.close()
        else:
            sys.stdout.flush()
            os.dup2(kept.fileno(), 1)
            kept.close()
            sys.stdout = saved


def _json_only(ctx: typer.Context, value: bool) -> bool:
    """`--json`'s callback: the command's stdout is kept for its JSON until the command ends."""
    if value and not ctx.resilient_parsing:
        ctx.with_resource(json_stdout())
    return value


def print_json(data: object, indent: int | None = 1) -> None:
    """Restyle's JSON answer: to the stream `json_stdout` kept (else stdout), flushed at once
    (the cluster watch may end the process right after)."""
    stream = _json_stream or sys.stdout
    stream.write(json.dumps(data, indent=indent, sort_keys=True, default=str) + "\n")
    stream.flush()


AsJson = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON object on stdout instead of a table; everything else goes to stderr.",
        envvar=env("--json"),
        callback=_json_only,
    ),
]
Address = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster address: host:port, ray://host:10001 or auto (default: $RAY_ADDRESS "
        "inside a Ray job, else a local Ray). Checked before anything starts.",
        envvar=env("--address"),
    ),
]
Progress = Annotated[
    bool,
    typer.Option(
        help="Show progress: a live display on a terminal, else an INFO line every 30 s.",
        envvar=env("--progress"),
    ),
]


def emit(title: str, rows: list[tuple[str, str]], data: dict, as_json: bool) -> None:
    """Print a result for people (a table) or for scripts (one JSON object on stdout)."""
    if as_json:
        print_json(data)
        return
    table = Table(title=title, show_header=False)
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


def storage_settings(
    endpoint: str | None,
    region: str | None,
    profile: str | None,
    retry_budget_s: float | None = None,
    *,
    light: bool = False,
) -> StorageSettings:
    """The standard AWS environment (and RESTYLE_STORAGE_RETRY_BUDGET), with the command
    line's overrides.

    `light`: an interactive command (`status`, `plan`, `manifest validate`) whose operator
    waits at the terminal: unless `--storage-retry-budget` or its variable says otherwise, it
    gives up on an unreachable store after `LIGHT_RETRY_BUDGET_S`, not the 300 s that let a
    run ride out an outage."""
    with operator_errors():  # e.g. credentials inside the endpoint URL: refused, never shown
        settings = StorageSettings.from_env()
        if light and retry_budget_s is None and not os.environ.get(RETRY_BUDGET_ENV):
            retry_budget_s = LIGHT_RETRY_BUDGET_S
        return dataclasses.replace(
            settings,
            endpoint_url=endpoint or settings.endpoint_url,
            region=region or settings.region,
            profile=profile or settings.profile,
            retry_budget_s=settings.retry_budget_s if retry_budget_s is None else retry_budget_s,
        )


def error_line(message: object) -> None:
    """One red line on stderr ("error: ..."); the text is printed as written."""
    first = str(message).strip().splitlines() or [""]
    console.print(f"[red]error:[/red] {escape(first[0])}", soft_wrap=True)  # "[a, b]" is text


def report(message: object, code: int, as_json: bool = False) -> None:
    """One red line on stderr; with `as_json` also one JSON object on stdout (`{"error",
    "exit_code", "exit_name"}`), so a script reading `--json` output always gets an object,
    whichever way the command ended."""
    error_line(message)
    if as_json:
        line = (str(message).strip().splitlines() or [""])[0]
        exit_name = ExitCode(int(code)).name if int(code) in set(ExitCode) else ""
        print_json({"error": line, "exit_code": int(code), "exit_name": exit_name}, indent=None)
    sys.stdout.flush()


def fail(message: object, code: int = ExitCode.CANNOT_START, as_json: bool = False) -> NoReturn:
    """`report` the error, then exit with `code`."""
    report(message, code, as_json)
    raise typer.Exit(int(code))


@contextmanager
def operator_errors(*extra: type[BaseException], as_json: bool = False) -> Iterator[None]:
    """Turn the errors an operator can fix into one clear line instead of a traceback: a wrong
    option, --config file or spec (`ConfigError`, exit USAGE); an unusable manifest, storage,
    weights, Ray address or run folder, and any `extra` kinds (exit CANNOT_START); a run another
    driver holds (exit ALREADY_SUBMITTED); a Ray cluster lost mid-run (exit INCOMPLETE, also
    when its watch ends the process from another thread); SIGTERM/SIGINT outside a run's drain
    (exit INTERRUPTED). With `as_json` (a command's `--json`) the error is also one JSON object
    on stdout."""
    from pipeline.errors import (
        ClusterLostError,
        ConfigError,
        Interrupted,
        RunError,
        RunLeaseHeldError,
        WeightsError,
    )
    from pipeline.execution.cluster_watch import reporting_with
    from pipeline.execution.drain import stop_on_signals
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
        with (
            stop_on_signals(),
            reporting_with(lambda line: report(line, ExitCode.INCOMPLETE, as_json)),
        ):
            yield
    except Interrupted as error:  # nothing in flight: what was committed is kept
        fail(error, ExitCode.INTERRUPTED, as_json)
    except ConfigError as error:
        fail(error, ExitCode.USAGE, as_json)
    except ClusterLostError as error:  # the shards committed are kept: rerun to resume
        fail(error, ExitCode.INCOMPLETE, as_json)
    except RunLeaseHeldError as error:  # another driver runs it: like a job already submitted
        fail(error, ExitCode.ALREADY_SUBMITTED, as_json)
    except handled as error:
        fail(error, ExitCode.CANNOT_START, as_json)
