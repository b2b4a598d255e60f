"""`restyle run | plan | status | manifest validate`: a run from manifests to committed shards.

Thin: options in, a `RunConfig` built by the one config door (`pipeline.config`), library calls
(`execution.driver`, `outputs.status`, `manifests`), a table or `--json` out. The options are
checked before Ray or torch start; a mistake is one line naming the option.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from pipeline.cli.common import (
    AsJson,
    Endpoint,
    Manifest,
    Model,
    Out,
    Profile,
    Region,
    RunName,
    Weights,
    emit,
    operator_errors,
    storage_settings,
)
from pipeline.config import PathBase, RunConfig, RunRequest, key_path, validate
from pipeline.storage import StorageSettings

if TYPE_CHECKING:
    from pipeline.weights.resolve import ResolvedWeights

manifest_app = typer.Typer(help="Manifest tools.", no_args_is_help=True)

# The field of `RunRequest` each option of `restyle run` / `restyle plan` fills.
OPTION_FIELDS = {
    "MANIFEST": "manifest",
    "--out": "output",
    "--run": "run",
    "--model": "model",
    "--weights": "weights",
    "--seed": "seed",
    "--actors": "actors",
    "--width": "sampling.width",
    "--height": "sampling.height",
    "--steps": "sampling.steps",
    "--guidance": "sampling.guidance",
    "--image-format": "outputs.image_format",
    "--quality": "outputs.quality",
    "--caption": "outputs.caption",
    "--caption-template": "outputs.caption_template",
    "--caption-model": "outputs.caption_model",
    "--device": "options.device",
    "--dtype": "options.dtype",
    "--compile": "options.compile",
    "--fp8": "options.fp8",
    "--offload": "options.offload",
    "--fuse-lora": "options.fuse_lora",
    "--max-batch-size": "options.max_batch_size",
}
OPTION_OF_FIELD = {path: option for option, path in OPTION_FIELDS.items()}


def run_request(options: dict[str, Any]) -> RunRequest:
    """The command line's door: option values by option name (None: not given, the default),
    validated as a `RunRequest`; a mistake is one `ConfigError` line naming the option."""
    data: dict[str, Any] = {}
    for option, value in options.items():
        *sections, key = OPTION_FIELDS[option].split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    return validate(RunRequest, data, paths=PathBase(), name=_option_name)


def _option_name(loc: tuple[str | int, ...]) -> str:
    path = key_path(loc)
    return OPTION_OF_FIELD.get(path, path)


def resolve_run(config: RunConfig, settings: StorageSettings) -> tuple[RunConfig, ResolvedWeights]:
    """Resolve the weights once: their sha256s name the run (by default, `<model>-<fingerprint>`)
    and the driver reuses them for run.json and every output's provenance."""
    from pipeline.storage import Storage
    from pipeline.weights.resolve import resolve_weights

    weights = resolve_weights(config.weights, config.model, storage=Storage(settings))
    return config.named(weights.sha256), weights


def run(
    manifest: Manifest,
    out: Out,
    run: RunName = None,
    model: Model = "uso",
    weights: Weights = "tiny",
    seed: Annotated[int, typer.Option(help="Run seed; item seed = hash(run seed, item id).")] = 0,
    width: Annotated[
        int | None, typer.Option(help="Default output width (model default 1024).")
    ] = None,
    height: Annotated[int | None, typer.Option(help="Default output height.")] = None,
    steps: Annotated[int | None, typer.Option(help="Default denoising steps (25).")] = None,
    guidance: Annotated[
        float | None, typer.Option(help="Distilled guidance (USO 4.0, Omni 3.5).")
    ] = None,
    image_format: Annotated[str, typer.Option("--image-format", help="png | jpeg | webp")] = "png",
    quality: Annotated[int, typer.Option(help="JPEG/WebP quality.")] = 95,
    caption: Annotated[
        str, typer.Option(help="Caption source: prompt | template | model.")
    ] = "prompt",
    caption_template: Annotated[
        str, typer.Option(help="str.format template over item fields.")
    ] = "",
    caption_model: Annotated[
        str,
        typer.Option(
            help="Captioning model for --caption model: a transformers folder, an s3:// folder, "
            "or 'tiny'."
        ),
    ] = "",
    actors: Annotated[
        int, typer.Option(help="Model actors (0 = one per GPU, or 1 without GPUs).")
    ] = 0,
    max_batch_size: Annotated[
        int, typer.Option(help="Items of equal token layout per forward.")
    ] = 1,
    dtype: Annotated[
        str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32")
    ] = "auto",
    compile_model: Annotated[
        bool, typer.Option("--compile", help="torch.compile (changes kernels).")
    ] = False,
    fp8: Annotated[bool, typer.Option(help="fp8 weight storage (changes numerics).")] = False,
    offload: Annotated[
        bool, typer.Option(help="Offload idle components to the CPU (small GPUs).")
    ] = False,
    fuse_lora: Annotated[
        bool, typer.Option(help="Fuse LoRAs into weights (changes bf16 rounding).")
    ] = False,
    device: Annotated[str, typer.Option(help="auto | cuda | cuda:N | cpu")] = "auto",
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Re-run only the failed items of a finished run into a new, separate commit.",
        ),
    ] = False,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: start a local Ray).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    as_json: AsJson = False,
) -> None:
    """Stylize every item of the manifest; commit one output shard per input shard."""
    logging.basicConfig(level=logging.WARNING)
    settings = storage_settings(endpoint_url, region, profile)
    with operator_errors():
        request = run_request(
            {
                "MANIFEST": manifest,
                "--out": out,
                "--run": run,
                "--model": model,
                "--weights": weights,
                "--seed": seed,
                "--actors": actors,
                "--width": width,
                "--height": height,
                "--steps": steps,
                "--guidance": guidance,
                "--image-format": image_format,
                "--quality": quality,
                "--caption": caption,
                "--caption-template": caption_template,
                "--caption-model": caption_model,
                "--device": device,
                "--dtype": dtype,
                "--compile": compile_model,
                "--fp8": fp8,
                "--offload": offload,
                "--fuse-lora": fuse_lora,
                "--max-batch-size": max_batch_size,
            }
        )
        config, resolved = resolve_run(request.config(), settings)
        from pipeline.execution.driver import Runner

        runner = Runner(config, settings, address, progress, weights=resolved)
        summary = runner.retry_failed() if retry_failed else runner.run()
    print_summary(summary, as_json)
    raise typer.Exit(summary.exit_code)


def print_summary(summary, as_json: bool = False) -> None:
    rows = [
        ("fingerprint", summary.fingerprint),
        (
            "shards",
            f"{summary.shards_committed} committed, {summary.shards_already_done} "
            f"already done, {len(summary.shards_failed)} failed, "
            f"of {summary.shards_total}",
        ),
        ("items", f"{summary.ok} ok, {summary.failed} failed, {summary.skipped} skipped"),
    ]
    rows += [(f"  {kind}", str(count)) for kind, count in sorted(summary.errors.items())]
    rows += [(f"shard {k} failed", reason) for k, reason in sorted(summary.shards_failed.items())]
    rows.append(("time", f"{summary.wall_s:.1f} s, {summary.images_per_s:.3f} images/s"))
    data = {
        **dataclasses.asdict(summary),
        "errors": dict(summary.errors),
        "images_per_s": summary.images_per_s,
        "exit_code": summary.exit_code,
    }
    emit(f"run {summary.run_uri}", rows, data, as_json)


def plan(
    manifest: Manifest,
    out: Out,
    run: RunName = None,
    model: Model = "uso",
    weights: Weights = "tiny",
    seed: int = 0,
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    seconds_table: Annotated[
        Path | None, typer.Option(help="TOML seconds-per-image table.")
    ] = None,
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    as_json: AsJson = False,
) -> None:
    """Shards total / done / to do, items, and a GPU-hour estimate, without running anything."""
    settings = storage_settings(endpoint_url, region, profile)
    with operator_errors():
        request = run_request(
            {
                "MANIFEST": manifest,
                "--out": out,
                "--run": run,
                "--model": model,
                "--weights": weights,
                "--seed": seed,
                "--width": width,
                "--height": height,
                "--steps": steps,
            }
        )
        config, resolved = resolve_run(request.config(), settings)
        from pipeline.execution.driver import Runner
        from pipeline.execution.estimate import gpu_hours, load_table
        from pipeline.manifests import count_items

        runner = Runner(config, settings, show_progress=False, weights=resolved)
        p = runner.plan()
        todo_items = sum(count_items(s, runner.storage) for s in p.todo)
        done_items = sum(stats.count for stats in p.done.values())
        sampling = config.sampling
        hours = gpu_hours(
            config.model,
            todo_items,
            sampling.width,
            sampling.height,
            sampling.steps,
            load_table(seconds_table),
        )
    rows = [
        ("run", config.run_uri),
        ("fingerprint", p.fingerprint),
        ("shards", f"{len(p.shards)} total, {len(p.done)} done, {len(p.todo)} to do"),
        ("items", f"{done_items} done, {todo_items} to do"),
        ("estimate", f"{hours:.2f} GPU-hours for the items to do"),
    ]
    data = {
        "run_uri": config.run_uri,
        "fingerprint": p.fingerprint,
        "shards_total": len(p.shards),
        "shards_done": len(p.done),
        "shards_todo": len(p.todo),
        "items_done": done_items,
        "items_todo": todo_items,
        "gpu_hours": hours,
    }
    emit(f"plan for {config.model}", rows, data, as_json)


def status(
    run_uri: Annotated[str, typer.Argument(help="The run folder: <out>/<run>.")],
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    as_json: AsJson = False,
) -> None:
    """Totals of a run folder: items from its current records (`part-*.parquet`), shards and
    images/s from its commit markers; objects of interrupted commits."""
    from pipeline.outputs.run_state import RunState
    from pipeline.outputs.status import run_status
    from pipeline.storage import Storage

    storage = Storage(storage_settings(endpoint_url, region, profile))
    with operator_errors():  # a missing run, a layout to migrate first, refused credentials
        s = run_status(RunState(storage, run_uri))
    rows = [
        ("fingerprint", s.fingerprint or "?"),
        (
            "shards",
            f"{s.shards_committed} of {s.input_shards} committed"
            + (f", {s.retry_commits} retry commits" if s.retry_commits else ""),
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
    data = {**dataclasses.asdict(s), "errors": dict(s.errors), "complete": s.complete}
    with operator_errors():
        scores = run_scores(RunState(storage, run_uri))
    if scores:
        data["scores"] = scores
        rows += score_rows(scores)
    emit(f"status of {s.run_uri}", rows, data, as_json)
    raise typer.Exit(0 if s.complete else 1)


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
    check_images: Annotated[bool, typer.Option(help="Also fetch and decode every image.")] = False,
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
) -> None:
    """Check a manifest up front; errors name the file, row and field."""
    from pipeline.manifests import validate_manifest
    from pipeline.storage import Storage

    storage = Storage(storage_settings(endpoint_url, region, profile))
    with operator_errors():  # refused credentials, an unreachable endpoint: one line
        report = validate_manifest(manifest, storage, check_images=check_images)
    Console().print(report.format() if hasattr(report, "format") else str(report))
    raise typer.Exit(0 if report.ok else 1)
