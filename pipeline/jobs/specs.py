"""Job specs: the YAML files under jobs/ that describe a nightly restyle or a triplet build.

A spec is read from a local path or an s3:// URI (through `Storage`), or, inside a job that
`restyle submit` started, from the environment (`RESTYLE_JOB_SPEC` holds the text and
`RESTYLE_JOB_SPEC_ORIGIN` the submitter's path, for messages and relative paths). Relative
paths and URIs in a spec resolve against the spec file's folder.

Every spec has `kind` (nightly | triplets) and `name` (a path- and id-safe word: it names the
output folders and the Ray submission id), plus the run settings shared by both kinds, which
are `pipeline.config.RunSettings` (the same fields, rules and messages as `restyle run`'s
options):

    weights: tiny                      # see `restyle run --help`
    seed: 0
    sampling: {width: 1024, height: 1024, steps: 25, guidance: 4.0}
    options: {dtype: auto, max_batch_size: 1, compile: false, fp8: false, offload: false,
              fuse_lora: false, device: auto}
    outputs: {image_format: png, quality: 95, caption: prompt, caption_template: "",
              caption_model: ""}
    scoring: {metrics: [clip_t, style], model: /models/clip-vit-large-patch14}
    actors: 0
    capacity_wait: 900                 # seconds queued shards wait while no actor fits
    drain_grace: 60                    # on SIGTERM/SIGINT: seconds the shards in flight get
    lease_ttl: 60                      # seconds the run lease lasts without renewal
    join: false                        # help a live driver of the same run instead of exit 7
    storage_retry_budget: null         # seconds; null: RESTYLE_STORAGE_RETRY_BUDGET, else 300
    rows_per_shard: 500                # rows per derived manifest shard (the unit of work)

Each kind is a pydantic model (`NightlySpec`, `TripletSpec`) whose JSON Schema is published
under jobs/schema/ (`python -m pipeline.jobs.schemas --write jobs/schema`). Every mistake is a
`SpecError` naming the spec and the key path ("jobs/x.yaml: sampling.steps: must be an
integer, got str 'ten'").
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Self

import yaml
from pydantic import AfterValidator, Strict, WithJsonSchema

from pipeline.config import ConfigError, ConfigModel, PathBase, RunSettings, validate
from pipeline.config.values import AtLeastOne, OneOf
from pipeline.storage import Storage, StorageSettings

SPEC_ENV = "RESTYLE_JOB_SPEC"
SPEC_ORIGIN_ENV = "RESTYLE_JOB_SPEC_ORIGIN"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DEFAULT_ROWS_PER_SHARD = 500


class JobKind(StrEnum):
    NIGHTLY = "nightly"
    TRIPLETS = "triplets"


KINDS = tuple(kind.value for kind in JobKind)


class SpecError(ConfigError):
    """A job spec that cannot be used; the message names the spec and the key."""

    def __init__(self, origin: str, key: str | None, message: str):
        super().__init__(key, message, origin)
        self.key = key

    def __reduce__(self) -> tuple:
        return (type(self), (self.origin, self.key, self.message))


def _job_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(
            "must be 1-63 letters, digits, '.', '_' or '-' (starting with a letter "
            f"or digit): it names folders and the submission id; got {name!r}"
        )
    return name


JobName = Annotated[
    str,
    Strict(),
    AfterValidator(_job_name),
    WithJsonSchema({"type": "string", "pattern": NAME_PATTERN.pattern}),
]


class SpecHeader(ConfigModel, extra="allow"):
    """What every spec starts with; the rest is checked by its kind's model."""

    kind: Annotated[str, Strict(), OneOf(JobKind)]
    name: JobName


@dataclass(frozen=True)
class SpecSource:
    """A spec's parsed YAML and where it came from (its header already checked)."""

    data: dict[str, Any]
    origin: str  # path or URI, for messages and relative paths
    text: str

    @property
    def kind(self) -> str:
        return self.data["kind"]

    @property
    def name(self) -> str:
        return self.data["name"]


def read_spec(source: str | None, storage: Storage | None = None) -> SpecSource:
    """Read a spec from a path/URI, or from $RESTYLE_JOB_SPEC when `source` is None."""
    if source is None:
        text = os.environ.get(SPEC_ENV)
        if text is None:
            raise SpecError("<no spec>", None, f"give a job spec file, or set ${SPEC_ENV}")
        origin = os.environ.get(SPEC_ORIGIN_ENV) or f"${SPEC_ENV}"
    else:
        origin = source
        try:
            text = (storage or Storage()).read_bytes(source).decode("utf-8")
        except Exception as error:  # StorageError (not found, denied), bad UTF-8, bad URI
            raise SpecError(source, None, f"cannot read it: {error}") from error
    return parse_spec_text(text, origin)


def parse_spec_text(text: str, origin: str) -> SpecSource:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpecError(origin, None, f"not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise SpecError(origin, None, f"must be a YAML mapping, got {type(data).__name__}")
    source = SpecSource(data, origin, text)
    parse_spec(SpecHeader, source)  # kind and name now; the rest when its kind's model reads it
    return source


def parse_spec(model: type[ConfigModel], source: SpecSource) -> Any:
    """`source` validated as `model`, paths resolved beside the spec, mistakes as `SpecError`."""
    return validate(
        model, source.data, paths=PathBase(source.origin), origin=source.origin, error=_spec_error
    )


def _spec_error(where: str | None, message: str, origin: str | None = None) -> SpecError:
    return SpecError(origin or "<spec>", where, message)


class JobSpec(RunSettings):
    """The keys every kind has (beside its `kind`): its name, the run settings, and the manifest
    shard size."""

    name: JobName
    """Names the output folders and the Ray submission id: 1-63 letters, digits, '.', '_', '-'."""
    rows_per_shard: AtLeastOne = DEFAULT_ROWS_PER_SHARD
    """Rows per derived manifest shard: the unit of work and commit."""

    @classmethod
    def parse(cls, source: SpecSource) -> Self:
        return parse_spec(cls, source)

    def storage_settings(self, given: StorageSettings | None) -> StorageSettings:
        """The job's storage settings: `given` (None: the AWS environment) with this spec's
        `storage_retry_budget` when it sets one (else RESTYLE_STORAGE_RETRY_BUDGET or 300 s)."""
        settings = given if given is not None else StorageSettings.from_env()
        if self.storage_retry_budget is None:
            return settings
        return dataclasses.replace(settings, retry_budget_s=self.storage_retry_budget)

    @property
    def settings(self) -> RunSettings:
        """The run settings part, as `restyle run` would have them."""
        return RunSettings.model_construct(
            **{name: getattr(self, name) for name in RunSettings.model_fields}
        )
