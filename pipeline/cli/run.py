"""`restyle run | plan`: a run from manifests to committed shards, and its plan.

Thin: options (or a `--config` file with a job spec's run settings) in, a `RunConfig` built by
the one config door (`pipeline.config`), library calls (`execution.driver`), a table or
`--json` out. Everything that can be checked is checked before Ray starts; a mistake is one
line naming the option (or the file and key) and a documented exit code.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.cli.common import (
    Address,
    AsJson,
    Endpoint,
    Model,
    Profile,
    Progress,
    Region,
    RunName,
    Weights,
    emit,
    env,
    operator_errors,
    storage_settings,
)
from pipeline.cli.run_options import (
    ActorsOpt,
    CapacityWaitOpt,
    CaptionModelOpt,
    CaptionOpt,
    CaptionTemplateOpt,
    CompileOpt,
    ConfigOpt,
    DeviceOpt,
    DrainGraceOpt,
    DtypeOpt,
    Fp8Opt,
    FuseLoraOpt,
    GuidanceOpt,
    HeightOpt,
    ImageFormatOpt,
    JoinOpt,
    LeaseTtlOpt,
    LightStorageRetryBudgetOpt,
    MaxBatchOpt,
    OffloadOpt,
    OptionalManifest,
    OptionalOut,
    QualityOpt,
    SeedOpt,
    StepsOpt,
    StorageRetryBudgetOpt,
    WidthOpt,
    run_request,
)
from pipeline.cli.usage import DEFAULT
from pipeline.config import (
    CaptionSource,
    Dtype,
    ImageFormat,
    ModelName,
    RunConfig,
)
from pipeline.storage import StorageSettings
from pipeline.wording import counted

DEFAULT_MODEL = ModelName("uso")
RANDOM_NOTE = "RANDOM weights: the pictures are noise"

if TYPE_CHECKING:
    from pipeline.execution.driver import RunSummary
    from pipeline.weights.resolve import ResolvedWeights


def resolve_run(config: RunConfig, settings: StorageSettings) -> tuple[RunConfig, ResolvedWeights]:
    """Resolve the weights once: their sha256s name the run (by default, `<model>-<fingerprint>`)
    and the driver reuses them for run.json and every output's provenance."""
    from pipeline.storage import Storage
    from pipeline.weights.resolve import resolve_weights

    weights = resolve_weights(config.weights, config.model, storage=Storage(settings))
    return config.named(weights.sha256), weights


def given_options(ctx: typer.Context) -> tuple[dict[str, Any], set[str]]:
    """The options of the running command by option name ("--width", "MANIFEST"), and the
    names of those left at their default (a --config file's value replaces those)."""
    values: dict[str, Any] = {}
    defaults: set[str] = set()
    for param in ctx.command.params:
        name = param.opts[0] if param.param_type_name == "option" else "MANIFEST"
        if param.name is None or param.name not in ctx.params:
            continue
        value = ctx.params[param.name]
        values[name] = value.value if hasattr(value, "value") else value
        if ctx.get_parameter_source(param.name) == DEFAULT:
            defaults.add(name)
    return values, defaults


def run(
    ctx: typer.Context,
    manifest: OptionalManifest = None,
    out: OptionalOut = None,
    run: RunName = None,
    model: Model = DEFAULT_MODEL,
    weights: Weights = "tiny",
    config: ConfigOpt = None,
    seed: SeedOpt = 0,
    width: WidthOpt = None,
    height: HeightOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    image_format: ImageFormatOpt = ImageFormat.PNG,
    quality: QualityOpt = 95,
    caption: CaptionOpt = CaptionSource.PROMPT,
    caption_template: CaptionTemplateOpt = "",
    caption_model: CaptionModelOpt = "",
    actors: ActorsOpt = 0,
    capacity_wait: CapacityWaitOpt = 900.0,
    drain_grace: DrainGraceOpt = 60.0,
    max_batch_size: MaxBatchOpt = 1,
    dtype: DtypeOpt = Dtype.AUTO,
    compile_model: CompileOpt = False,
    fp8: Fp8Opt = False,
    offload: OffloadOpt = False,
    fuse_lora: FuseLoraOpt = False,
    device: DeviceOpt = "auto",
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Re-run only the failed items of a finished run into a new, separate commit.",
            envvar=env("--retry-failed"),
        ),
    ] = False,
    address: Address = None,
    progress: Progress = True,
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    storage_retry_budget: StorageRetryBudgetOpt = None,
    lease_ttl: LeaseTtlOpt = 60.0,
    join: JoinOpt = False,
    as_json: AsJson = False,
) -> None:
    """Stylize every item of the manifest; commit one output shard per input shard.

    Exit codes: 0 every item ok; 3 items failed (rerun with --retry-failed); 4 shards not
    committed (rerun the same command); 2 a wrong option; 5 an input that cannot be used;
    75 stopped by SIGTERM/SIGINT (once the shards in flight committed; rerun to resume);
    7 another driver runs this run (see --join).
    """
    with operator_errors(as_json=as_json):
        request = run_request(*given_options(ctx), config)  # the options over the --config file
        settings = storage_settings(endpoint_url, region, profile, request.storage_retry_budget)
        config_, resolved = resolve_run(request.config(), settings)
        from pipeline.execution.driver import Runner

        driver = request.driver_settings()
        runner = Runner(config_, settings, address, progress, weights=resolved, driver=driver)
        summary = runner.retry_failed() if retry_failed else runner.run()
    print_summary(summary, as_json)
    raise typer.Exit(int(summary.exit_code))


def print_summary(summary: RunSummary, as_json: bool = False) -> None:
    rows = [
        ("fingerprint", summary.fingerprint),
        ("weights", summary.weights + (f"  ({RANDOM_NOTE})" if summary.random_weights else "")),
        (
            "shards",
            f"{summary.shards_committed} committed now, {summary.shards_already_done} "
            f"already done, {len(summary.shards_failed)} failed, of {summary.shards_total}",
        ),
        ("items", f"{summary.ok} ok, {summary.failed} failed, {summary.skipped} skipped"),
    ]
    if summary.items_retried:
        rows.append(("retried", f"{counted(summary.items_retried, 'failed item')} re-run"))
    rows += [(f"  {kind}", str(count)) for kind, count in sorted(summary.errors.items())]
    rows += [(f"shard {k} failed", reason) for k, reason in sorted(summary.shards_failed.items())]
    rows.append(("throughput", f"{summary.images_per_s:.3f} images/s"))
    rows.append(("time", f"{summary.wall_s:.1f} s (Ray and model start included)"))
    advice = summary.advice()
    if advice:
        rows.append(("next", advice))
    data = {
        **dataclasses.asdict(summary),
        "errors": dict(summary.errors),
        "exit_code": int(summary.exit_code),
        "next": advice,
    }
    emit(f"run {summary.run_uri}", rows, data, as_json)


def plan(
    ctx: typer.Context,
    manifest: OptionalManifest = None,
    out: OptionalOut = None,
    run: RunName = None,
    model: Model = DEFAULT_MODEL,
    weights: Weights = "tiny",
    config: ConfigOpt = None,
    seed: SeedOpt = 0,
    width: WidthOpt = None,
    height: HeightOpt = None,
    steps: StepsOpt = None,
    seconds_table: Annotated[
        Path | None,
        typer.Option(help="TOML seconds-per-image table.", envvar=env("--seconds-table")),
    ] = None,
    endpoint_url: Endpoint = None,
    region: Region = None,
    profile: Profile = None,
    storage_retry_budget: LightStorageRetryBudgetOpt = None,
    as_json: AsJson = False,
) -> None:
    """Shards total / done / to do, items, the weights and a GPU-hour estimate, without running
    anything; refused as `run` would refuse it (a --run folder of another configuration)."""
    with operator_errors(as_json=as_json):
        request = run_request(*given_options(ctx), config)
        budget = request.storage_retry_budget  # the option's, else the --config file's
        settings = storage_settings(endpoint_url, region, profile, budget, light=True)
        config_, resolved = resolve_run(request.config(), settings)
        from pipeline.execution.driver import Runner
        from pipeline.execution.estimate import gpu_hours, load_table
        from pipeline.manifests import count_all_items

        runner = Runner(config_, settings, show_progress=False, weights=resolved)
        p = runner.plan()
        runner.conflict(p)
        todo_items = count_all_items(p.todo, runner.storage)
        done_items = sum(stats.count for stats in p.done.values())
        sampling = config_.sampling
        hours = gpu_hours(
            config_.model,
            todo_items,
            sampling.width,
            sampling.height,
            sampling.steps,
            load_table(seconds_table),
        )
    rows = [
        ("run", config_.run_uri),
        ("fingerprint", p.fingerprint),
        ("weights", resolved.describe()),
        ("shards", f"{len(p.shards)} total, {len(p.done)} done, {len(p.todo)} to do"),
        ("items", f"{done_items} done, {todo_items} to do"),
        ("estimate", f"{hours:.2f} GPU-hours for the items to do"),
    ]
    data = {
        "run_uri": config_.run_uri,
        "fingerprint": p.fingerprint,
        "weights": str(resolved.spec),
        "random_weights": resolved.random,
        "shards_total": len(p.shards),
        "shards_done": len(p.done),
        "shards_todo": len(p.todo),
        "items_done": done_items,
        "items_todo": todo_items,
        "gpu_hours": hours,
    }
    emit(f"plan for {config_.model}", rows, data, as_json)
