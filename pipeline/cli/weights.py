"""`restyle weights list | pull | verify`: the registry, fetching and mirroring, checking a folder.

Thin: options in, library calls (`registry`, `pull`, `verify`), a rich table (or `--json`) out.
Every `WeightsError` is printed as one line (it names the file or source and what to do) with
exit code 5 (CANNOT_START); `verify` exits 6 (CHECK_FAILED) when a file has a problem. `list`
is a light command: it imports neither torch nor Ray.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline.cli.common import (
    AsJson,
    Endpoint,
    Profile,
    Region,
    console,
    env,
    fail,
    operator_errors,
    print_json,
    storage_settings,
)
from pipeline.errors import ExitCode, WeightsError
from pipeline.models.registry import MODEL_NAMES
from pipeline.wording import counted

weights_app = typer.Typer(
    help="Weight registry, pulling/mirroring and verification.", no_args_is_help=True
)
ModelOrAll = StrEnum(  # type: ignore[misc]  # members from the model registry
    "ModelOrAll", [(name.upper(), name) for name in (*MODEL_NAMES, "all")]
)
Models = Annotated[list[ModelOrAll], typer.Argument(help="Models.", envvar=env("models"))]


def _names(models: list | None) -> list[str]:
    return [getattr(m, "value", m) for m in models or []]


def _size(size: int | None) -> str:
    if size is None:
        return "?"
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.2f} MB"


@weights_app.command("list")
def list_files(models: Models = None, as_json: AsJson = False) -> None:  # type: ignore[assignment]
    """The files each model needs: Hub repo and file, place in the weights root, size, sha256."""
    from pipeline.weights.registry import load_registry

    try:
        registry = load_registry()
        entries = registry.files_for(_names(models) or ["all"])
    except WeightsError as error:
        fail(error, as_json=as_json)
    if as_json:
        print_json(
            {
                "registry": str(registry.source),
                "files": [
                    {
                        "component": e.component,
                        "dest": e.dest,
                        "repo": e.repo,
                        "path": e.path,
                        "size": e.size,
                        "sha256": e.sha256,
                    }
                    for e in entries
                ],
            }
        )
        return
    table = Table(title=f"weight registry ({registry.source})")
    for column in (
        "component",
        "in the weights root",
        "Hub repo",
        "file in the repo",
        "size",
        "sha256",
    ):
        table.add_column(column, overflow="fold")
    for entry in entries:
        table.add_row(
            entry.component,
            entry.dest,
            entry.repo,
            entry.path,
            _size(entry.size),
            entry.sha256[:16] + "..." if entry.sha256 else "?",
        )
    known = sum(e.size or 0 for e in entries)
    unknown = sum(e.size is None for e in entries)
    Console(width=max(Console().width, 160)).print(table)
    Console().print(
        f"{counted(len(entries), 'file')}; known sizes total {_size(known)}"
        + (f", {unknown} sizes not pinned (taken from the Hub at pull time)" if unknown else "")
    )


@weights_app.command()
def pull(
    models: Models,
    source: Annotated[
        str,
        typer.Option(
            "--from",
            help="'hf' (Hugging Face Hub, token from "
            "HF_TOKEN), an s3:// mirror, or a local weights folder.",
            envvar=env("--from"),
        ),
    ] = "hf",
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Local folder or s3:// mirror prefix (default: this node's weight cache).",
            envvar=env("--to"),
        ),
    ] = None,
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    as_json: AsJson = False,
) -> None:
    """Fetch the files MODELS need from a source, verified, into a folder or an s3:// mirror."""
    from pipeline.storage import Storage
    from pipeline.weights.pull import pull as pull_files
    from pipeline.weights.registry import check_models
    from pipeline.weights.resolve import staged_root, weight_cache_dir
    from pipeline.weights.sources import LocalSource, open_source

    storage = Storage(storage_settings(endpoint_url, region, profile))
    try:
        names = check_models(_names(models))
        origin = open_source(source, storage)
        if to is None and isinstance(origin, LocalSource):
            raise WeightsError(
                f"{source} is already a local folder: give --to (a folder or s3:// prefix)"
            )
        target = to or str(staged_root(origin))
        report = pull_files(origin, names, target, storage, weight_cache_dir() / "pull-scratch")
    except (WeightsError, OSError) as error:
        fail(error, as_json=as_json)
    if as_json:
        print_json({"models": names, **dataclasses.asdict(report)})
        return
    table = Table(title=f"pulled {', '.join(names)}", show_header=False)
    table.add_row("from", report.source)
    table.add_row("to", report.target)
    table.add_row(
        "files",
        f"{report.files} ({len(report.copied)} copied, "
        f"{report.files - len(report.copied)} already there)",
    )
    table.add_row("copied", f"{_size(report.bytes_copied)} in {report.seconds:.1f} s")
    table.add_row("use it", f"--weights {report.target}")
    Console().print(table)


@weights_app.command()
def verify(
    folder: Annotated[
        Path, typer.Argument(help="A local weights root.", envvar=env("weights_root"))
    ],
    model: Annotated[
        list[ModelOrAll] | None,
        typer.Option(
            "--model",
            "-m",
            help="Model(s) to check (default: those the folder holds).",
            envvar=env("--verify-models"),
        ),
    ] = None,
    hashes: Annotated[
        bool,
        typer.Option(
            "--hash/--no-hash", help="Also check sha256 (cached per node).", envvar=env("--hash")
        ),
    ] = True,
    as_json: AsJson = False,
) -> None:
    """Check presence, sizes, tensor names/shapes and sha256 of every file; print a table."""
    from pipeline.weights.verify import verify_root

    try:
        report = verify_root(folder, _names(model) or None, check_hashes=hashes)
    except WeightsError as error:
        fail(error, as_json=as_json)
    bad = sum(not row.ok for row in report.rows)
    code = ExitCode.CHECK_FAILED if bad else ExitCode.OK
    if as_json:
        print_json(
            {
                "root": str(report.root),
                "models": report.models,
                "preset": report.preset,
                "files": [dataclasses.asdict(row) for row in report.rows],
                "problems": bad,
                "exit_code": int(code),
            }
        )
        raise typer.Exit(int(code))
    table = Table(
        title=f"verify {report.root} ({', '.join(report.models)}, {report.preset} architecture)"
    )
    for column in ("file", "component", "size", "header", "sha256", "problems"):
        table.add_column(column, overflow="fold")
    for row in report.rows:
        style = None if row.ok else "red"
        table.add_row(
            row.path,
            row.component,
            _size(row.size) if row.size is not None else "-",
            row.header,
            row.sha256,
            "; ".join(row.problems) or "ok",
            style=style,
        )
    Console(width=max(Console().width, 160)).print(table)
    Console().print(
        f"{len(report.rows)} checked, {bad} with problems"
        if bad
        else f"{len(report.rows)} checked, all ok"
    )
    raise typer.Exit(int(code))


@weights_app.command("convert-csd")
def convert_csd_command(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="CSD's checkpoint.pth (learn2phoenix/CSD).", envvar=env("csd_checkpoint")
        ),
    ],
    out: Annotated[
        Path,
        typer.Argument(help="Folder to write (restyle eval --csd FOLDER).", envvar=env("csd_out")),
    ],
    as_json: AsJson = False,
) -> None:
    """Convert the CSD release checkpoint into the folder `restyle eval --csd` loads."""
    from pipeline.weights.csd_convert import convert_csd

    with operator_errors(as_json=as_json):
        folder = convert_csd(checkpoint, out)
    if as_json:
        print_json({"folder": str(folder), "exit_code": int(ExitCode.OK)}, indent=None)
    else:
        console.print(f"CSD folder written: {folder}")
