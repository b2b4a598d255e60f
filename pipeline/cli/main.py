"""`restyle`: the command line, one file per command group; this one only assembles the app.

Commands import their heavy dependencies (Ray, and torch only inside actors) inside the
function body, so `--help` and the light commands (`status`, `plan`, `manifest validate`,
`weights list`) start fast and never import torch.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli import evaluate, jobs, outputs, run, status
from pipeline.cli.common import env
from pipeline.cli.usage import RestyleGroup
from pipeline.cli.weights import weights_app
from pipeline.execution.logs import LogFormat, LogLevel, configure_logging

app = typer.Typer(
    cls=RestyleGroup,
    help="Batch stylization of image catalogs with USO and OmniConsistency on Ray.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _version(show: bool) -> None:
    if show:
        from pipeline.config import code_version

        print(code_version())
        raise typer.Exit()


@app.callback()
def main(
    log_level: Annotated[
        LogLevel,
        typer.Option(
            help="Least severe log lines shown (debug also shows Ray's own notices).",
            envvar=env("--log-level"),
        ),
    ] = LogLevel.INFO,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            help="text, or json: one JSON object per line (structured logs).",
            envvar=env("--log-format"),
        ),
    ] = LogFormat.TEXT,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print restyle's version (with its commit) and exit.",
        ),
    ] = False,
) -> None:
    """Batch stylization of image catalogs with USO and OmniConsistency on Ray."""
    configure_logging(log_level.value, log_format.value)


app.command()(run.run)
app.command()(run.plan)
app.command()(status.status)
app.add_typer(status.manifest_app, name="manifest")
app.add_typer(weights_app, name="weights")
app.command("triplets")(jobs.triplets)
app.command("nightly")(jobs.nightly)
app.command("submit")(jobs.submit)
app.command("caption")(jobs.caption)
app.command("migrate")(outputs.migrate)
app.command("eval")(evaluate.eval_command)
app.command("report")(evaluate.report_command)

if __name__ == "__main__":
    app()
