"""`restyle eval | report`: score a finished run with the papers' metrics, compare two runs,
and write a run's HTML report.

Exit codes: 0 done; 2 the eval could not run or shards failed (the reasons are printed).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pipeline.cli.common import (
    Address,
    AsJson,
    Endpoint,
    Profile,
    Region,
    emit,
    env,
    operator_errors,
    storage_settings,
)


def _backbone(name: str) -> Any:
    """The option of one backbone folder (each with its own RESTYLE_* variable)."""
    return typer.Option(
        help="Backbone folder (local or s3://), hf://owner/repo(@revision) or 'tiny'.",
        envvar=env(f"--{name}"),
    )


# The papers' tables: (column title, metric) in their order.
USO_BENCH = (("CLIP-I", "clip_i"), ("DINO", "dino"), ("CSD", "csd"), ("CLIP-T", "clip_t"))
OMNI_TABLE1 = (
    ("style FID", "fid"),
    ("CMMD", "cmmd"),
    ("DreamSim", "dreamsim_style"),
    ("CLIP-I", "clip_i_style"),
    ("content DreamSim", "dreamsim"),
    ("CLIP-I", "clip_i"),
    ("CLIP-S", "clip_t"),
)


def eval_command(
    run_uri: Annotated[
        str, typer.Argument(help="A run folder: <out>/<run>.", envvar=env("run_uri"))
    ],
    compare: Annotated[
        str | None,
        typer.Option(
            help="Another run: print per-metric deltas (it minus RUN) with 95% CIs.",
            envvar=env("--compare"),
        ),
    ] = None,
    metrics: Annotated[
        str,
        typer.Option(
            help="Comma-separated metrics (default: every one with a backbone).",
            envvar=env("--metrics"),
        ),
    ] = "",
    models: Annotated[
        str,
        typer.Option(
            help="'tiny': tiny random backbones for every kind that has one.",
            envvar=env("--models"),
        ),
    ] = "",
    clip: Annotated[str, _backbone("clip")] = "",
    dino: Annotated[str, _backbone("dino")] = "",
    csd: Annotated[str, _backbone("csd")] = "",
    dreamsim: Annotated[str, _backbone("dreamsim")] = "",
    fid: Annotated[str, _backbone("fid")] = "",
    cmmd: Annotated[str, _backbone("cmmd")] = "",
    reference: Annotated[
        str | None,
        typer.Option(
            help="FID/CMMD reference: image folder, manifest or run.", envvar=env("--reference")
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Items per forward pass.", envvar=env("--batch-size"))
    ] = 16,
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples for --compare.", envvar=env("--bootstrap"))
    ] = 1000,
    actors: Annotated[
        int,
        typer.Option(
            help="Eval actors (0 = one per GPU that can be placed, or 1).", envvar=env("--actors")
        ),
    ] = 0,
    device: Annotated[str, typer.Option(help="auto | cuda | cpu", envvar=env("--device"))] = "auto",
    address: Address = None,
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    as_json: AsJson = False,
) -> None:
    """Score a run per item (CLIP-I, CLIP-T, DINO, CSD, DreamSim) and per set (FID, CMMD)."""
    settings_ = storage_settings(endpoint_url, region, profile)
    if compare is not None:
        _compare(run_uri, compare, settings_, bootstrap, as_json)
        return
    from pipeline.config import EvalSettings, MetricModels, PathBase, validate

    logging.basicConfig(level=logging.WARNING)
    given = {"clip": clip, "dino": dino, "csd": csd, "dreamsim": dreamsim, "fid": fid, "cmmd": cmmd}
    base = MetricModels.all_tiny().model_dump() if models == "tiny" else {}
    data = {
        "metrics": [m for m in metrics.split(",") if m],
        "models": {**base, **{k: v for k, v in given.items() if v}},
        "reference": reference,
        "batch_size": batch_size,
        "bootstrap": bootstrap,
    }
    with operator_errors(as_json=as_json):
        if models not in ("", "tiny"):
            raise ValueError(f"--models: only 'tiny' is a shortcut, got {models!r}")
        settings = validate(EvalSettings, data, paths=PathBase(None), name=_option_name)
        from pipeline.jobs.eval import eval_run

        summary = eval_run(run_uri, settings, settings_, actors, device, address)
    rows = [
        ("eval", summary.fingerprint),
        (
            "shards",
            f"{summary.shards_scored} scored, {summary.shards_kept} kept, {len(summary.failed)} failed",
        ),
        ("items scored", f"{summary.items_scored} ({summary.images_per_s:.2f} images/s)"),
    ]
    rows += [(f"failed {uri}", reason) for uri, reason in summary.failed.items()]
    rows += [
        (name, f"median {m['median']:.4f}, mean {m['mean']:.4f} (n={m['n']})")
        for name, m in summary.metrics.items()
    ]
    rows += [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in summary.sets.items()]
    emit(f"eval of {summary.run_uri}", rows, dataclasses.asdict(summary), as_json)
    if not as_json:
        print_paper_tables(summary.metrics, summary.sets)
    raise typer.Exit(summary.exit_code)


def _option_name(loc: tuple) -> str:
    names = {"models": "", "reference": "--reference", "metrics": "--metrics"}
    if loc and loc[0] == "models" and len(loc) > 1:
        return f"--{loc[1]}"
    return names.get(str(loc[0]), str(loc[0])) if loc else ""


def print_paper_tables(metrics: dict, sets: dict) -> None:
    """The run's means in the layout of USO's USO-Bench table and OmniConsistency's Table 1."""
    for title, columns in (("USO-Bench", USO_BENCH), ("OmniConsistency Table 1", OMNI_TABLE1)):
        table = Table(title=title)
        values = []
        for header, metric in columns:
            table.add_column(header, justify="right")
            value = (
                sets.get(metric)
                if metric in ("fid", "cmmd")
                else metrics.get(metric, {}).get("mean")
            )
            values.append("-" if value is None else f"{value:.3f}")
        table.add_row(*values)
        Console().print(table)


def _compare(run_a: str, run_b: str, settings, resamples: int, as_json: bool) -> None:
    from pipeline.outputs.run_state import RunState
    from pipeline.outputs.score_stats import compare, current_scores
    from pipeline.storage import Storage

    storage = Storage(settings)
    with operator_errors(as_json=as_json):
        rows_a, rows_b = (current_scores(RunState(storage, r.rstrip("/"))) for r in (run_a, run_b))
        if not rows_a or not rows_b:
            empty = run_a if not rows_a else run_b
            raise FileNotFoundError(f"{empty}: no scores (run `restyle eval {empty}` first)")
        deltas = compare(rows_a, rows_b, resamples)
    rows = [
        (
            d.metric,
            f"{d.mean_a:.4f} -> {d.mean_b:.4f}: {d.delta:+.4f} [{d.low:+.4f}, {d.high:+.4f}] "
            f"({'paired, ' if d.paired else ''}n={d.n_a}/{d.n_b})",
        )
        for d in deltas
    ]
    data = {
        "a": run_a,
        "b": run_b,
        "confidence": 0.95,
        "deltas": [dataclasses.asdict(d) | {"delta": d.delta} for d in deltas],
    }
    emit(f"{run_b} vs {run_a} (95% bootstrap CI)", rows, data, as_json)


def report_command(
    run_uri: Annotated[
        str,
        typer.Argument(help="A run folder: <out>/<run> (local or s3://).", envvar=env("run_uri")),
    ],
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            help="Report folder (default: <run>/report/).",
            envvar=env("--report-out"),
        ),
    ] = None,
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    as_json: AsJson = False,
) -> None:
    """Write a static HTML report of a run: contact sheet, score histograms, failures,
    throughput, configuration and weights (index.html + thumbs/)."""
    from pipeline.report.build import write_report
    from pipeline.storage import Storage

    with operator_errors(as_json=as_json):
        summary = write_report(
            Storage(storage_settings(endpoint_url, region, profile)), run_uri, out
        )
    emit(
        "report",
        [
            ("index", summary.index),
            ("items", str(summary.items)),
            ("thumbnails", str(summary.thumbnails)),
        ],
        dataclasses.asdict(summary),
        as_json,
    )
