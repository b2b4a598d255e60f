"""The options of `restyle run` / `restyle plan`, and how they (with a `--config` file) become a
validated `RunRequest`.

Each option fills one field of `pipeline.config.RunRequest` (`OPTION_FIELDS`); its choices
are the config's own vocabularies (`pipeline.config.values`), so `--help` lists them and the
shell completes them; each can also come from its `RESTYLE_*` environment variable. A
`--config run.yaml` holds the run settings of a job spec (`RunFile`,
jobs/schema/run.schema.json); an option given on the command line or in the environment wins.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any

import typer

from pipeline.cli.common import env
from pipeline.config import (
    CaptionSource,
    ConfigError,
    Dtype,
    ImageFormat,
    PathBase,
    RunFile,
    RunRequest,
    key_path,
    validate,
)

# The field of `RunRequest` each option of `restyle run` / `restyle plan` fills.
OPTION_FIELDS = {
    "MANIFEST": "manifest",
    "--out": "output",
    "--run": "run",
    "--model": "model",
    "--weights": "weights",
    "--seed": "seed",
    "--actors": "actors",
    "--capacity-wait": "capacity_wait",
    "--drain-grace": "drain_grace",
    "--lease-ttl": "lease_ttl",
    "--join": "join",
    "--storage-retry-budget": "storage_retry_budget",
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
DEVICES = ["auto", "cpu", "cuda", "cuda:0", "cuda:1"]


def _opt(*decls: str, help: str, **kwargs: Any) -> Any:
    return typer.Option(*decls, help=help, envvar=env(decls[0]), **kwargs)


def _complete_device(incomplete: str) -> list[str]:
    return [device for device in DEVICES if device.startswith(incomplete)]


OptionalManifest = Annotated[
    list[str] | None,
    typer.Argument(
        help="Manifest files, folders, globs or brace ranges; local paths or s3:// URIs "
        "(or `manifest:` in --config).",
        envvar=env("manifest"),
        show_default=False,
    ),
]
OptionalOut = Annotated[
    str | None,
    _opt("--out", "-o", help="Output root (local folder or s3:// URI), or `output:` in --config."),
]
ConfigOpt = Annotated[
    str | None,
    _opt(
        "--config",
        help="A YAML file with the run settings of a job spec (weights, seed, sampling, "
        "options, outputs, scoring, actors) and optionally manifest, output, model, run; "
        "schema: jobs/schema/run.schema.json. Options given here win over the file.",
    ),
]
SeedOpt = Annotated[int, _opt("--seed", help="Run seed; item seed = hash(run seed, item id).")]
WidthOpt = Annotated[int | None, _opt("--width", help="Output width, 16-4096 (model: 1024).")]
HeightOpt = Annotated[int | None, _opt("--height", help="Output height, 16-4096 (model: 1024).")]
StepsOpt = Annotated[int | None, _opt("--steps", help="Denoising steps (model: 25).")]
GuidanceOpt = Annotated[
    float | None, _opt("--guidance", help="Distilled guidance (USO 4.0, Omni 3.5).")
]
ImageFormatOpt = Annotated[ImageFormat, _opt("--image-format", help="Result encoding.")]
QualityOpt = Annotated[int, _opt("--quality", help="JPEG/WebP quality, 1-100.")]
CaptionOpt = Annotated[CaptionSource, _opt("--caption", help="Caption source.")]
CaptionTemplateOpt = Annotated[
    str, _opt("--caption-template", help="str.format template over item fields.")
]
CaptionModelOpt = Annotated[
    str,
    _opt(
        "--caption-model",
        help="Captioning model for --caption model: a transformers folder, an s3:// folder, "
        "hf://owner/repo(@revision), or 'tiny'.",
    ),
]
ActorsOpt = Annotated[
    int,
    _opt(
        "--actors",
        help="Model actors (0 = as many as the cluster can place: one per GPU with a CPU "
        "beside it, or 1 without GPUs).",
    ),
]
CapacityWaitOpt = Annotated[
    float,
    _opt(
        "--capacity-wait",
        help="Seconds queued shards may wait while no actor can be placed before they fail.",
    ),
]
DrainGraceOpt = Annotated[
    float,
    _opt(
        "--drain-grace",
        help="On SIGTERM/SIGINT: seconds the shards in flight get to commit; then exit 75.",
    ),
]
MaxBatchOpt = Annotated[
    int, _opt("--max-batch-size", help="Items of equal token layout per forward.")
]
DtypeOpt = Annotated[Dtype, _opt("--dtype", help="auto = bf16 on CUDA, fp32 on CPU.")]
CompileOpt = Annotated[bool, _opt("--compile", help="torch.compile (changes kernels).")]
Fp8Opt = Annotated[bool, _opt("--fp8", help="fp8 weight storage (changes numerics).")]
OffloadOpt = Annotated[
    bool, _opt("--offload", help="Offload idle components to the CPU (small GPUs).")
]
FuseLoraOpt = Annotated[
    bool, _opt("--fuse-lora", help="Fuse LoRAs into weights (changes bf16 rounding).")
]
DeviceOpt = Annotated[
    str,
    _opt(
        "--device",
        help="auto | cpu | cuda | cuda:N.",
        autocompletion=_complete_device,
    ),
]

StorageRetryBudgetOpt = Annotated[
    float | None,
    _opt(
        "--storage-retry-budget",
        help="Seconds each storage operation keeps retrying transient failures (5xx, "
        "SlowDown, connection errors, timeouts) with jittered exponential backoff before it "
        "fails: an outage shorter than this costs no shard. [default: 300]",
        min=0,
        show_default=False,
    ),
]
LightStorageRetryBudgetOpt = Annotated[
    float | None,
    _opt(
        "--storage-retry-budget",
        help="Seconds each storage operation keeps retrying transient failures (5xx, "
        "SlowDown, connection errors, timeouts) before the command fails with one line. "
        "[default: 20 for this interactive command; 300 for run and eval]",
        min=0,
        show_default=False,
    ),
]
LeaseTtlOpt = Annotated[
    float,
    _opt(
        "--lease-ttl",
        help="Seconds the run lease lasts without renewal (renewed every third): one driver "
        "per run; a killed driver's run is free after at most this.",
        min=1,
    ),
]
JoinOpt = Annotated[
    bool,
    _opt(
        "--join",
        help="When another live driver holds the run, help it (take only unclaimed shards) "
        "instead of being refused (exit 7).",
    ),
]


def run_request(
    options: dict[str, Any], defaults: Collection[str] = (), config_file: str | None = None
) -> RunRequest:
    """The command line's door: option values by option name (None: not given), over the
    settings of `config_file` when there is one (an option left at its default, named in
    `defaults`, gives way to the file), validated as a `RunRequest`; a mistake is one
    `ConfigError` line naming the option, or the file and its key."""
    data: dict[str, Any] = _read_run_file(config_file) if config_file else {}
    given: set[str] = set()
    for option, value in options.items():
        if option not in OPTION_FIELDS or value is None:
            continue
        *sections, key = OPTION_FIELDS[option].split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
        if option in defaults and key in node:
            continue  # the file's value
        node[key] = value
        if option not in defaults:
            given.add(OPTION_FIELDS[option])

    def name(loc: tuple[str | int, ...]) -> str:
        path = key_path(loc)
        if config_file and path not in given and path.split("[")[0] not in given:
            return f"{config_file}: {path}"
        return OPTION_OF_FIELD.get(path, path)

    return validate(RunRequest, data, paths=PathBase(), name=name)


def _read_run_file(path: str) -> dict[str, Any]:
    """The file's settings, relative paths resolved beside it (checked on their own first, so
    a mistake names the file and the key)."""
    import yaml

    from pipeline.storage import Storage

    try:
        text = Storage().read_bytes(path).decode("utf-8")
        data = yaml.safe_load(text)
    except Exception as error:  # missing, unreadable, not UTF-8, not YAML
        raise ConfigError("--config", f"cannot read {path}: {error}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{path}: must be a YAML mapping, got {type(data).__name__}")
    settings = validate(RunFile, data, paths=PathBase(path), origin=path)
    return settings.model_dump(mode="json", exclude_unset=True, exclude_none=True)
