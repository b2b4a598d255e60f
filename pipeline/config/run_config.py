"""The run configuration, its fingerprint, and per-item seeds.

A run is identified on disk by `<out>/<run>/`. Its fingerprint is a hash of everything that
changes output bytes (model, weight sha256s, sampling defaults, run seed, numerics options,
image encoding, captions). A shard committed under one fingerprint is never mixed with another:
`restyle run` refuses to reuse a run folder whose `run.json` carries a different fingerprint.

`RunSettings` is what an operator chooses, filled by both doors (the `restyle run` options and
a job spec's run keys); `RunSettings.run_config` is the one builder of a `RunConfig`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from pipeline import __version__
from pipeline.config.driver_settings import DEFAULT_LEASE_TTL_S, DriverSettings
from pipeline.config.input_limits import InputLimits
from pipeline.config.problems import ConfigProblem
from pipeline.config.values import (
    AtLeastOne,
    AuxModelPath,
    CaptionChoice,
    CaptionSource,
    Count,
    DeviceName,
    DtypeChoice,
    Flag,
    FormatTemplate,
    Guidance,
    ImageFormat,
    ImageFormatName,
    LeaseSeconds,
    Metrics,
    ModelChoice,
    PathRef,
    PathRefs,
    Quality,
    RunNameText,
    Seconds,
    Seed,
    Side,
    Steps,
    Text,
)
from pipeline.config.weights_spec import TINY_WEIGHTS, WeightsSpec
from pipeline.models.base import ModelOptions


class ConfigModel(BaseModel):
    """Every configuration model: frozen, unknown keys refused, null meaning "the default", and
    the field docstrings published in the JSON Schemas."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {key: value for key, value in data.items() if value is not None}
        return data


class SamplingDefaults(ConfigModel):
    """Run-wide sampling parameters; a manifest row may override each one. None = the model's."""

    width: Side | None = None
    """Output width in pixels (the model's default: 1024)."""
    height: Side | None = None
    """Output height in pixels (the model's default: 1024)."""
    steps: Steps | None = None
    """Denoising steps (the model's default: 25)."""
    guidance: Guidance | None = None
    """Distilled guidance (the model's default: USO 4.0, OmniConsistency 3.5)."""


class OutputSettings(ConfigModel):
    """How results are encoded and captioned: what an operator chooses."""

    image_format: ImageFormatName = "png"
    """png | jpeg | webp ("jpg" is the same as "jpeg")."""
    quality: Quality = 95
    """JPEG/WebP quality, 1-100."""
    caption: CaptionChoice = CaptionSource.PROMPT.value
    """Caption source: prompt | template | model."""
    caption_template: FormatTemplate = ""
    """str.format template over the item's fields (id, prompt, model, style_lora, any extra
    column), when caption is template."""
    caption_model: AuxModelPath = ""
    """Captioning model (a transformers folder, an s3:// folder, hf://owner/repo[@revision], or
    'tiny'), when caption is model."""

    @model_validator(mode="after")
    def _caption_source_is_complete(self) -> OutputSettings:
        if self.caption == CaptionSource.TEMPLATE and not self.caption_template:
            raise ConfigProblem(
                "caption_template", "is required when {caption} is template", refs=("caption",)
            )
        if self.caption == CaptionSource.MODEL and not self.caption_model:
            raise ConfigProblem(
                "caption_model",
                "is required when {caption} is model (a "
                "captioner folder, an s3:// folder, hf://owner/repo or 'tiny')",
                refs=("caption",),
            )
        return self

    @property
    def extension(self) -> str:
        return ImageFormat(self.image_format.lower()).extension


class OutputOptions(OutputSettings):
    """How a run's results are encoded and captioned, and whether samples carry references."""

    include_references: Flag = False
    """Also store subject/style images in each sample (set by the triplet job)."""


class ScoringOptions(ConfigModel):
    """Optional quality scores per result, written to records and provenance (see
    `pipeline.processing.scoring`): e.g. "clip_t" (result vs prompt), "style" (result vs style
    image)."""

    metrics: Metrics = ()
    """Scores per result: clip_t (result vs prompt), style (result vs first style image)."""
    model: AuxModelPath = ""
    """A CLIP-family transformers folder (local, s3:// or hf://owner/repo[@revision]), or
    'tiny'."""

    @model_validator(mode="after")
    def _metrics_have_a_model(self) -> ScoringOptions:
        if self.metrics and not self.model:
            raise ConfigProblem(
                "model",
                "is required when {metrics} is set (a CLIP folder, an s3:// folder, "
                "hf://owner/repo or 'tiny')",
                refs=("metrics",),
            )
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.metrics)


class ExecutionOptions(ConfigModel):
    """How the model runs: the operator's part of `ModelOptions` (its model-specific `extra`
    switches are not an operator setting). Everything that changes numerics is off by default."""

    device: DeviceName = ModelOptions.device
    """auto | cpu | cuda | cuda:N (auto: the GPU Ray pinned the actor to, else the CPU)."""
    dtype: DtypeChoice = ModelOptions.dtype
    """auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32 | ..."""
    compile: Flag = ModelOptions.compile
    """torch.compile the transformer (changes kernels)."""
    fp8: Flag = ModelOptions.fp8
    """fp8 weight storage (changes numerics)."""
    offload: Flag = ModelOptions.offload
    """Offload idle components to the CPU (small GPUs)."""
    max_batch_size: AtLeastOne = ModelOptions.max_batch_size
    """Items of equal token layout per forward."""
    fuse_lora: Flag = ModelOptions.fuse_lora
    """Fuse LoRAs into the weights (changes bf16 rounding)."""

    def model_options(self) -> ModelOptions:
        return ModelOptions(**self.model_dump())

    @classmethod
    def check(cls, options: ModelOptions) -> ModelOptions:
        """`options` held to the same rules (whoever built them)."""
        cls.model_validate({name: getattr(options, name) for name in cls.model_fields})
        return options


CheckedModelOptions = Annotated[ModelOptions, AfterValidator(ExecutionOptions.check)]


class RunSettings(ConfigModel):
    """The run choices both doors fill: `restyle run`'s options and a job spec's run keys."""

    weights: WeightsSpec = Field(TINY_WEIGHTS, json_schema_extra={"default": str(TINY_WEIGHTS)})
    """Where the weights come from: 'tiny' (tiny random weights), 'random-full' (speed
    benchmarks), 'hf' (the Hugging Face Hub), an s3:// mirror, or a local weights folder."""
    seed: Seed = 0
    """Run seed; item seed = hash(run seed, item id) unless the row gives one."""
    sampling: SamplingDefaults = SamplingDefaults()
    options: ExecutionOptions = ExecutionOptions()
    outputs: OutputSettings = OutputSettings()
    scoring: ScoringOptions = ScoringOptions()
    actors: Count = 0
    """Model actors (0 = as many as the cluster can place: one per GPU with a CPU free beside
    it, or 1 without GPUs)."""
    capacity_wait: Seconds = 900.0
    """Seconds queued shards may wait while no actor can be placed (the cluster has no room
    for one) before they fail with that reason."""
    drain_grace: Seconds = 60.0
    """On SIGTERM or SIGINT: seconds the shards in flight get to commit before the run stops
    (exit 75; rerun the same command to resume)."""
    lease_ttl: LeaseSeconds = DEFAULT_LEASE_TTL_S
    """Seconds the run lease (and each driver's heartbeat) lasts without renewal; renewed every
    third of it, so a killed driver's run is free after at most this. Not in run.json."""
    join: Flag = False
    """When another live driver holds the run, help it (take only unclaimed shards) instead of
    being refused (exit 7). Not in run.json."""
    storage_retry_budget: Seconds | None = None
    """Seconds each storage operation keeps retrying transient failures (5xx, SlowDown,
    connection errors, timeouts) before it fails; null: RESTYLE_STORAGE_RETRY_BUDGET, else 300
    (20 for restyle plan). Not in run.json."""
    limits: InputLimits = InputLimits()
    """Budgets for what a manifest makes an actor read (bytes, pixels, local roots)."""

    def driver_settings(self) -> DriverSettings:
        """How this driver shares its run (lease TTL, join): beside the run's configuration,
        never in its fingerprint or run.json, so a helper joins whatever these say."""
        return DriverSettings(lease_ttl_s=self.lease_ttl, join=self.join)

    def run_config(
        self,
        *,
        manifest: Sequence[str],
        output: str,
        model: str,
        run: str = "",
        include_references: bool = False,
    ) -> RunConfig:
        """The one builder: these settings plus what the caller (a command, a job) supplies.
        An empty `run` is named later from the fingerprint (`RunConfig.named`)."""
        return RunConfig(
            manifest=tuple(manifest),
            output=output,
            run=run,
            model=model,
            weights=self.weights,
            seed=self.seed,
            sampling=self.sampling,
            options=self.options.model_options(),
            outputs=OutputOptions(
                **self.outputs.model_dump(), include_references=include_references
            ),
            scoring=self.scoring,
            actors=self.actors,
            capacity_wait=self.capacity_wait,
            drain_grace=self.drain_grace,
            limits=self.limits,
        )


def _at_least_one_manifest(values: tuple[str, ...]) -> tuple[str, ...]:
    if not values or not all(values):
        raise ValueError(f"must name at least one manifest, got {list(values)!r}")
    return values


class RunRequest(RunSettings):
    """A run asked for directly (`restyle run`, `restyle plan`): the settings plus what a job
    would otherwise supply (manifests, output root, model, run name)."""

    manifest: Annotated[tuple[Text, ...], AfterValidator(_at_least_one_manifest)]
    output: Text
    model: ModelChoice
    run: RunNameText = ""

    def config(self) -> RunConfig:
        return self.run_config(
            manifest=self.manifest, output=self.output, model=self.model, run=self.run
        )


class RunFile(RunSettings):
    """`restyle run --config run.yaml`: the run settings of a job spec (same keys, rules and
    messages), plus what the command line otherwise gives. Relative paths resolve beside the
    file; an option given on the command line (or in its RESTYLE_* variable) wins over the
    file. Published as jobs/schema/run.schema.json."""

    manifest: PathRefs | None = None
    """Manifest files, folders, globs or brace ranges (one, or a list); local or s3://."""
    output: PathRef | None = None
    """Output root (a local folder or an s3:// URI); the run goes to <output>/<run>/."""
    model: ModelChoice | None = None
    """The model every row runs with (rows for another model are skipped)."""
    run: Text | None = None
    """Run folder name (default: <model>-<config fingerprint>)."""


class RunConfig(ConfigModel):
    """Everything a run needs; `public_dict()` is what goes to run.json (no credentials)."""

    manifest: tuple[Text, ...]
    output: Text  # output root (local path or s3:// URI)
    run: RunNameText  # run name: outputs go to <output>/<run>/ ("" until `named`)
    model: ModelChoice
    weights: WeightsSpec = TINY_WEIGHTS
    seed: Seed = 0  # run seed; item seed = derive_seed(seed, id) unless the row gives one
    sampling: SamplingDefaults = SamplingDefaults()
    options: CheckedModelOptions = ModelOptions()
    outputs: OutputOptions = OutputOptions()
    scoring: ScoringOptions = ScoringOptions()
    actors: Count = 0  # 0 = as many as the cluster can place (or 1 without GPUs)
    capacity_wait: Seconds = 900.0  # queued shards fail after this long with no actor placed
    drain_grace: Seconds = 60.0  # SIGTERM/SIGINT: time the shards in flight get to commit
    limits: InputLimits = InputLimits()  # input budgets: not in the fingerprint
    prefetch_items: AtLeastOne = 8  # decoded items buffered ahead of the model, per shard
    max_shard_attempts: AtLeastOne = 3  # an actor that dies mid-shard: retried elsewhere
    only_ids: tuple[Text, ...] | None = None  # restrict to these ids (retry-failed, nightly)

    @property
    def run_uri(self) -> str:
        return self.output.rstrip("/") + "/" + self.run

    def named(self, weight_sha256: dict[str, str]) -> RunConfig:
        """This config, named `<model>-<fingerprint>` unless it has a name: the same command
        resumes its run, and a changed config gets a folder of its own."""
        if self.run:
            return self
        return self.model_copy(update={"run": f"{self.model}-{self.fingerprint(weight_sha256)}"})

    def public_dict(self) -> dict[str, Any]:
        data = self.model_dump()
        data["only_ids"] = None if self.only_ids is None else len(self.only_ids)
        return data

    def fingerprint_fields(self, weight_sha256: dict[str, str]) -> dict[str, Any]:
        """Everything that changes output bytes. Paths and cluster shape do not."""
        return {
            "model": self.model,
            "weights": dict(sorted(weight_sha256.items())),
            "seed": self.seed,
            "sampling": self.sampling.model_dump(),
            "options": self.options.fingerprint_fields(),
            "outputs": self.outputs.model_dump(),
            "scoring": self.scoring.model_dump(),
        }

    def fingerprint(self, weight_sha256: dict[str, str]) -> str:
        canonical = json.dumps(
            self.fingerprint_fields(weight_sha256),
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def derive_seed(run_seed: int, item_id: str) -> int:
    """A seed from (run seed, item id) alone, so any item is reproducible on its own."""
    digest = hashlib.sha256(f"{run_seed}\x00{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


@functools.cache
def code_version() -> str:
    """The code that made an output, for run.json, markers and provenance: the version (which
    names the commit it was built from, `0.1.dev45+g6a600be`), and, when running from a git
    checkout (an editable install), the commit checked out now, `-dirty` with uncommitted
    changes: an editable install's version is only as new as its last `pip install`."""
    return f"restyle {__version__}{_checkout_commit()}"


def _checkout_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return ""
    try:
        sha = _git(root, "rev-parse", "--short=10", "HEAD")
        dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return ""
    return f" (git {sha}{'-dirty' if dirty else ''})" if sha else ""


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()
