"""The value types of a run configuration: limits, choices, ranges, templates, paths.

Every field of `RunSettings`, `RunConfig` and the job specs is typed with one of these, so the
command line and the YAML specs accept and refuse exactly the same values, with the same
one-line messages, and the published JSON Schemas carry the same choices and ranges. Nothing
here imports torch or Ray: validation runs before anything heavy starts.
"""

from __future__ import annotations

import math
import os
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Strict,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import core_schema

from pipeline.config.hub_ref import is_hub, parse_hub_ref
from pipeline.models.registry import MODEL_NAMES
from pipeline.storage.uris import check_supported, is_s3, local_path, resolve

MIN_SIDE = 16  # pixels; the models floor sizes to multiples of 16
MAX_SIDE = 4096  # pixels; the models refuse larger sides as impossible sizes
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1  # seeds are stored as int64 in the output records
MAX_QUALITY = 100

# ------------------------------------------------------------------ choices
ModelName = StrEnum("ModelName", [(name.upper(), name) for name in MODEL_NAMES])  # type: ignore[misc]
"""The models of `pipeline.models.registry`, by their manifest/CLI names."""


class CaptionSource(StrEnum):
    """Where each result's caption comes from."""

    PROMPT = "prompt"  # the item's prompt
    TEMPLATE = "template"  # outputs.caption_template, a str.format template over item fields
    MODEL = "model"  # outputs.caption_model, an image-to-text model run on the result


class ImageFormat(StrEnum):
    """Result encodings; "jpg" is accepted as another spelling of "jpeg"."""

    PNG = "png"
    JPEG = "jpeg"
    JPG = "jpg"
    WEBP = "webp"

    @property
    def extension(self) -> str:
        return "jpg" if self in (ImageFormat.JPEG, ImageFormat.JPG) else self.value


class Dtype(StrEnum):
    """Weight/compute dtypes `pipeline.models.runtime` knows; "auto" = bf16 on CUDA, fp32 on CPU."""

    AUTO = "auto"
    BF16 = "bf16"
    BFLOAT16 = "bfloat16"
    FP16 = "fp16"
    FLOAT16 = "float16"
    FP32 = "fp32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"


@dataclass(frozen=True)
class OneOf:
    """A choice among an enum's values, kept as the plain string (so messages, records and the
    fingerprint see "uso"), worded "must be one of uso, omniconsistency, got 'flux'", and
    published in the JSON Schema as an enum."""

    choices: type[StrEnum]

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        return {**handler(schema), "enum": [choice.value for choice in self.choices]}

    def check(self, value: str) -> str:
        names = [choice.value for choice in self.choices]
        if value not in names:
            raise ValueError(f"must be one of {', '.join(names)}, got {value!r}")
        return value


SCORE_METRICS = {
    "clip_t": "cosine(result image, prompt text)",
    "style": "cosine(result image, first style image)",
}
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"


# ------------------------------------------------------------------ ranges
@dataclass(frozen=True)
class Range:
    """An inclusive range with the project's wording ("must be between 16 and 4096, got 0"),
    published in the JSON Schema as minimum/maximum. Floats must also be finite."""

    low: int | float
    high: int | float | None = None

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        json_schema = handler(schema)
        json_schema["minimum"] = self.low
        if self.high is not None:
            json_schema["maximum"] = self.high
        return json_schema

    def check(self, value: int | float) -> int | float:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value}")
        if self.high is None and value < self.low:
            raise ValueError(f"must be at least {self.low}, got {value}")
        if self.high is not None and not self.low <= value <= self.high:
            raise ValueError(f"must be between {self.low} and {self.high}, got {value}")
        return value


# Strict scalars: a YAML "10" is not 10, and 1 is not true (pydantic's lax mode would convert).
Integer = Annotated[int, Strict()]
Number = Annotated[float, Strict()]  # an int is accepted (and stored as a float), a bool is not
Flag = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]

ModelChoice = Annotated[str, Strict(), OneOf(ModelName)]
CaptionChoice = Annotated[str, Strict(), OneOf(CaptionSource)]
DtypeChoice = Annotated[str, Strict(), OneOf(Dtype)]

Side = Annotated[int, Strict(), Range(MIN_SIDE, MAX_SIDE)]
Steps = Annotated[int, Strict(), Range(1, MAX_STEPS)]
Seed = Annotated[int, Strict(), Range(0, MAX_SEED)]
Quality = Annotated[int, Strict(), Range(1, MAX_QUALITY)]
Guidance = Annotated[float, Strict(), Range(0)]


def check_run_name(name: str) -> str:
    """A run name is one folder name inside the output root, never a path: "../x", "a/b" or
    "." would write outside `<out>/` or onto it."""
    if name and (
        "/" in name or "\\" in name or name in (".", "..") or any(ord(c) < 32 for c in name)
    ):
        raise ValueError(f"must be a single folder name (no '/', '\\', '.' or '..'), got {name!r}")
    return name


RunNameText = Annotated[str, Strict(), AfterValidator(check_run_name)]
Count = Annotated[int, Strict(), Range(0)]  # actors: 0 = as many as the cluster can place
AtLeastOne = Annotated[int, Strict(), Range(1)]
Seconds = Annotated[float, Strict(), Range(0)]  # a duration; an int is accepted
LeaseSeconds = Annotated[float, Strict(), Range(1)]  # the run lease's TTL: at least a second


# ------------------------------------------------------------------ checked strings
def _image_format(value: str) -> str:
    """Any case is accepted; the spelling is kept as given, because the fingerprint hashes it."""
    if value.lower() not in set(ImageFormat):
        raise ValueError(
            f"unknown image format {value!r}; use one of "
            f"{sorted(format.value for format in ImageFormat)}"
        )
    return value


ImageFormatName = Annotated[
    str,
    Strict(),
    AfterValidator(_image_format),
    WithJsonSchema({"type": "string", "enum": [format.value for format in ImageFormat]}),
]


def _device(value: str) -> str:
    if not re.match(DEVICE_PATTERN, value):
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


DeviceName = Annotated[
    str,
    Strict(),
    AfterValidator(_device),
    WithJsonSchema({"type": "string", "pattern": DEVICE_PATTERN}),
]


def check_template(template: str) -> str:
    """A `str.format` template over named fields ("{id}: {prompt}"), checked before any item
    meets it: unbalanced braces and positional fields ("{}", "{0}") would fail every item."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise ValueError(f"not a valid template: {error}") from None
    positional = [name for name in fields if not name or name.split(".")[0].split("[")[0].isdigit()]
    if positional:
        raise ValueError(
            f"not a valid template: positional field {{{positional[0]}}}; name a "
            "field, e.g. {id} or {prompt}"
        )
    return template


FormatTemplate = Annotated[str, Strict(), AfterValidator(check_template)]


def check_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    """The score metric names, validated (clear error naming the unknown one)."""
    out = tuple(metrics)
    unknown = [m for m in out if m not in SCORE_METRICS]
    if unknown:
        raise ValueError(
            f"unknown score metric(s) {unknown}; known: "
            + ", ".join(f"{k} ({v})" for k, v in SCORE_METRICS.items())
        )
    return out


Metrics = Annotated[
    tuple[Text, ...],
    AfterValidator(check_metrics),
    WithJsonSchema({"type": "array", "items": {"enum": list(SCORE_METRICS)}}),
]


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _not_empty(values: tuple[str, ...]) -> tuple[str, ...]:
    if not values:
        raise ValueError("must be a non-empty string or list of strings, got []")
    return values


def one_or_many(item: Any = str) -> BeforeValidator:
    """Accept one `item` or a list of them (one manifest spec or several), for a tuple field."""
    return BeforeValidator(_one_or_many, json_schema_input_type=item | list[item])


# ------------------------------------------------------------------ paths
@dataclass(frozen=True)
class PathBase:
    """Where relative paths of an operator's input point: beside the job spec file (a local
    path or an s3:// URI), or, for the command line and specs without a file, the current
    folder. Local results are absolute; s3:// URIs and absolute paths stay as given."""

    origin: str | None = None

    @property
    def has_folder(self) -> bool:
        return self.origin is not None and not self.origin.startswith(("<", "$"))

    def resolve(self, ref: str) -> str:
        check_supported(ref)  # "gs://..." is refused here, not mistaken for a local folder
        if is_s3(ref):
            return ref
        if not self.has_folder:
            resolved = os.path.abspath(local_path(ref))
        elif os.path.isabs(os.path.expanduser(ref)):
            resolved = os.path.expanduser(ref)
        else:
            assert self.origin is not None
            base = self.origin if is_s3(self.origin) else os.path.abspath(self.origin)
            resolved = resolve(ref, base)
        return resolved + "/" if ref.endswith("/") and not resolved.endswith("/") else resolved


def path_base(info: ValidationInfo) -> PathBase | None:
    """The `PathBase` a door put in the validation context (None: values are used as given)."""
    context = info.context or {}
    return context.get("paths")


def resolve_path(value: str, info: ValidationInfo) -> str:
    """A path value resolved against the door's `PathBase` (as given without one)."""
    if not value:
        raise ValueError("must not be empty")
    paths = path_base(info)
    return paths.resolve(value) if paths is not None else value


def _aux_model(value: str, info: ValidationInfo) -> str:
    if value in ("", "tiny"):
        return value
    if is_hub(value):
        return parse_hub_ref(value).spec  # one spelling: the revision always written out
    return resolve_path(value, info)


def _resolved_if_path(value: str, info: ValidationInfo) -> str:
    return resolve_path(value, info) if "/" in value else value


PathRef = Annotated[str, Strict(), AfterValidator(resolve_path)]
"""A local path or s3:// URI, resolved against the door's `PathBase`."""
PathRefs = Annotated[tuple[PathRef, ...], one_or_many(), AfterValidator(_not_empty)]
"""One or several paths (a string or a list of strings), at least one."""
AuxModelPath = Annotated[str, Strict(), AfterValidator(_aux_model)]
"""A model folder (local or s3://), a Hub repo (`hf://owner/repo[@revision]`, see `hub_ref`),
"tiny" for a tiny random model built locally, or ""."""
NameOrPath = Annotated[str, Strict(), AfterValidator(_resolved_if_path)]
"""A shipped name ("Ghibli") stays a name; anything with a "/" is a path."""
