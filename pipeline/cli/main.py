"""`restyle`: the command line, one file per command group; this one only assembles the app.

Commands import their heavy dependencies (torch, Ray) inside the function body, so `--help`
and the light commands start fast.
"""

from __future__ import annotations

import typer

from pipeline.cli import evaluate, jobs, outputs, run
from pipeline.cli.weights import weights_app

app = typer.Typer(
    help="Batch stylization of image catalogs with USO and OmniConsistency on Ray.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command()(run.run)
app.command()(run.plan)
app.command()(run.status)
app.add_typer(run.manifest_app, name="manifest")
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
