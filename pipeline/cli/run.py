"""`restyle run | plan | status | manifest validate`: a run from manifests to committed shards.

Thin: options in, a `RunConfig` built by the one config door (`pipeline.config`), library calls
(`execution.driver`, `outputs.status`, `manifests`), a table or `--json` out.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Annotated, Optional

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
    fail,
    operator_errors,
    storage_settings,
)
from pipeline.config import OutputOptions, RunConfig, SamplingDefaults
from pipeline.models.base import ModelOptions
from pipeline.storage import StorageSettings

manifest_app = typer.Typer(help="Manifest tools.", no_args_is_help=True)


def build_config(manifest: list[str], out: str, run: str | None, model: str, weights: str,
                 seed: int, width: int | None, height: int | None, steps: int | None,
                 guidance: float | None, image_format: str, quality: int, caption: str,
                 caption_template: str, actors: int, max_batch_size: int, dtype: str,
                 compile_model: bool, fp8: bool, offload: bool, fuse_lora: bool,
                 device: str, triplets: bool = False,
                 settings: StorageSettings | None = None) -> RunConfig:
    config = RunConfig(
        manifest=tuple(manifest), output=out, run=run or "", model=model, weights=weights,
        seed=seed, sampling=SamplingDefaults(width, height, steps, guidance),
        options=ModelOptions(device=device, dtype=dtype, compile=compile_model, fp8=fp8,
                             offload=offload, max_batch_size=max_batch_size, fuse_lora=fuse_lora),
        outputs=OutputOptions(image_format=image_format, quality=quality, caption=caption,
                              caption_template=caption_template, include_references=triplets),
        actors=actors)
    config.outputs.extension  # validates the format early
    if not run:
        from pipeline.storage import Storage
        from pipeline.weights.resolve import resolve_weights

        fingerprint = config.fingerprint(resolve_weights(weights, model, storage=Storage(settings)).sha256)
        config = dataclasses.replace(config, run=f"{model}-{fingerprint}")
    return config


def run(
    manifest: Manifest,
    out: Out,
    run: RunName = None,
    model: Model = "uso",
    weights: Weights = "tiny",
    seed: Annotated[int, typer.Option(help="Run seed; item seed = hash(run seed, item id).")] = 0,
    width: Annotated[Optional[int], typer.Option(help="Default output width (model default 1024).")] = None,
    height: Annotated[Optional[int], typer.Option(help="Default output height.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Default denoising steps (25).")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Distilled guidance (USO 4.0, Omni 3.5).")] = None,
    image_format: Annotated[str, typer.Option("--image-format", help="png | jpeg | webp")] = "png",
    quality: Annotated[int, typer.Option(help="JPEG/WebP quality.")] = 95,
    caption: Annotated[str, typer.Option(help="Caption source: prompt | template | model.")] = "prompt",
    caption_template: Annotated[str, typer.Option(help="str.format template over item fields.")] = "",
    actors: Annotated[int, typer.Option(help="Model actors (0 = one per GPU, or 1 without GPUs).")] = 0,
    max_batch_size: Annotated[int, typer.Option(help="Items of equal token layout per forward.")] = 1,
    dtype: Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32")] = "auto",
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile (changes kernels).")] = False,
    fp8: Annotated[bool, typer.Option(help="fp8 weight storage (changes numerics).")] = False,
    offload: Annotated[bool, typer.Option(help="Offload idle components to the CPU (small GPUs).")] = False,
    fuse_lora: Annotated[bool, typer.Option(help="Fuse LoRAs into weights (changes bf16 rounding).")] = False,
    device: Annotated[str, typer.Option(help="auto | cuda | cpu")] = "auto",
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Re-run only the failed items "
                                               "of a finished run into a new, separate commit.")] = False,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: start a local Ray).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    as_json: AsJson = False,
) -> None:
    """Stylize every item of the manifest; commit one output shard per input shard."""
    from pipeline.execution.driver import Runner

    logging.basicConfig(level=logging.WARNING)
    settings = storage_settings(endpoint_url, region, profile)
    with operator_errors():
        config = build_config(manifest, out, run, model, weights, seed, width, height, steps,
                              guidance, image_format, quality, caption, caption_template, actors,
                              max_batch_size, dtype, compile_model, fp8, offload, fuse_lora,
                              device, settings=settings)
        runner = Runner(config, settings, address, progress)
        summary = runner.retry_failed() if retry_failed else runner.run()
    print_summary(summary, as_json)
    raise typer.Exit(summary.exit_code)


def print_summary(summary, as_json: bool = False) -> None:
    rows = [("fingerprint", summary.fingerprint),
            ("shards", f"{summary.shards_committed} committed, {summary.shards_already_done} "
                       f"already done, {len(summary.shards_failed)} failed, of {summary.shards_total}"),
            ("items", f"{summary.ok} ok, {summary.failed} failed, {summary.skipped} skipped")]
    rows += [(f"  {kind}", str(count)) for kind, count in sorted(summary.errors.items())]
    rows += [(f"shard {k} failed", reason) for k, reason in sorted(summary.shards_failed.items())]
    rows.append(("time", f"{summary.wall_s:.1f} s, {summary.images_per_s:.3f} images/s"))
    data = {**dataclasses.asdict(summary), "errors": dict(summary.errors),
            "images_per_s": summary.images_per_s, "exit_code": summary.exit_code}
    emit(f"run {summary.run_uri}", rows, data, as_json)


def plan(
    manifest: Manifest,
    out: Out,
    run: RunName = None,
    model: Model = "uso",
    weights: Weights = "tiny",
    seed: int = 0,
    width: Optional[int] = None,
    height: Optional[int] = None,
    steps: Optional[int] = None,
    seconds_table: Annotated[Optional[Path], typer.Option(help="TOML seconds-per-image table.")] = None,
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    as_json: AsJson = False,
) -> None:
    """Shards total / done / to do, items, and a GPU-hour estimate, without running anything."""
    from pipeline.execution.driver import Runner
    from pipeline.execution.estimate import gpu_hours, load_table
    from pipeline.manifests import count_items

    settings = storage_settings(endpoint_url, region, profile)
    with operator_errors():
        config = build_config(manifest, out, run, model, weights, seed, width, height, steps, None,
                              "png", 95, "prompt", "", 0, 1, "auto", False, False, False, False,
                              "auto", settings=settings)
        runner = Runner(config, settings, show_progress=False)
        p = runner.plan()
        todo_items = sum(count_items(s, runner.storage) for s in p.todo)
        done_items = sum(stats.count for stats in p.done.values())
        hours = gpu_hours(model, todo_items, width, height, steps, load_table(seconds_table))
    rows = [("run", config.run_uri), ("fingerprint", p.fingerprint),
            ("shards", f"{len(p.shards)} total, {len(p.done)} done, {len(p.todo)} to do"),
            ("items", f"{done_items} done, {todo_items} to do"),
            ("estimate", f"{hours:.2f} GPU-hours for the items to do")]
    data = {"run_uri": config.run_uri, "fingerprint": p.fingerprint, "shards_total": len(p.shards),
            "shards_done": len(p.done), "shards_todo": len(p.todo), "items_done": done_items,
            "items_todo": todo_items, "gpu_hours": hours}
    emit(f"plan for {config.model}", rows, data, as_json)


def status(
    run_uri: Annotated[str, typer.Argument(help="The run folder: <out>/<run>.")],
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    as_json: AsJson = False,
) -> None:
    """Totals from a run's commit markers: ok, failed by class, images/s."""
    from pipeline.outputs.run_state import RunState
    from pipeline.outputs.status import run_status
    from pipeline.storage import Storage

    storage = Storage(storage_settings(endpoint_url, region, profile))
    try:
        s = run_status(RunState(storage, run_uri))
    except FileNotFoundError as error:
        fail(str(error))
    rows = [("fingerprint", s.fingerprint or "?"),
            ("shards", f"{s.shards_committed} of {s.input_shards} committed"
                       + (f", {s.retry_commits} retry commits" if s.retry_commits else "")),
            ("items", f"{s.ok} ok, {s.failed} failed, {s.skipped} skipped, of {s.items}")]
    rows += [(f"  {kind}", str(count)) for kind, count in sorted(s.errors.items())]
    rows.append(("throughput", f"{s.images_per_s:.3f} images/s, model busy "
                               f"{s.model_fraction:.0%} of actor time"))
    data = {**dataclasses.asdict(s), "errors": dict(s.errors), "complete": s.complete}
    emit(f"status of {s.run_uri}", rows, data, as_json)
    raise typer.Exit(0 if s.complete else 1)


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
    report = validate_manifest(manifest, storage, check_images=check_images)
    Console().print(report.format() if hasattr(report, "format") else str(report))
    raise typer.Exit(0 if report.ok else 1)
