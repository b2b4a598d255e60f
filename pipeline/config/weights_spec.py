"""The `--weights` / `weights:` value, parsed once into its kind and value.

    tiny          tiny random-weight checkpoints in the official formats (tests, demos)
    random-full   full-size random weights built on the device (speed benchmarks only)
    hf            the Hugging Face Hub, files per the registry
    s3://b/p      a mirror written by `restyle weights pull --to s3://...`
    anything else a local weights folder (made absolute, so every process reads the same one)

The command line, the job specs and `pipeline.weights.resolve` all take a `WeightsSpec`; its
string form (`str(spec)`) is what run.json records.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema

from pipeline.config.values import PathBase
from pipeline.storage.uris import is_s3


class WeightsKind(StrEnum):
    TINY = "tiny"
    RANDOM_FULL = "random-full"
    HUB = "hf"
    S3_MIRROR = "s3"
    LOCAL = "local"


_NAMED = {
    WeightsKind.TINY.value: WeightsKind.TINY,
    WeightsKind.RANDOM_FULL.value: WeightsKind.RANDOM_FULL,
    WeightsKind.HUB.value: WeightsKind.HUB,
}
DESCRIPTION = (
    "'tiny' (tiny random weights: pictures are noise), 'random-full' (speed "
    "benchmarks), 'hf' (Hugging Face Hub), an s3:// mirror, or a local weights folder"
)


@dataclass(frozen=True)
class WeightsSpec:
    """Where a run's weights come from: `kind`, and `value` (the name, URI or absolute folder)."""

    kind: WeightsKind
    value: str

    @classmethod
    def parse(cls, text: str, paths: PathBase | None = None) -> WeightsSpec:
        """`text` as a spec; a local folder resolves against `paths` (default: the current one)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"must be {DESCRIPTION}; got {text!r}")
        if text in _NAMED:
            return cls(_NAMED[text], text)
        if is_s3(text):
            return cls(WeightsKind.S3_MIRROR, text)
        return cls(WeightsKind.LOCAL, (paths or PathBase()).resolve(text))

    @classmethod
    def of(cls, spec: WeightsSpec | str) -> WeightsSpec:
        """A spec as is, or parsed from its string form (callers that still hold a string)."""
        return spec if isinstance(spec, WeightsSpec) else cls.parse(spec)

    @property
    def remote(self) -> bool:
        """Staged into the node's cache before use ("hf" or an s3:// mirror)."""
        return self.kind in (WeightsKind.HUB, WeightsKind.S3_MIRROR)

    def __str__(self) -> str:
        return self.value

    # -------------------------------------------------------------- as a pydantic field type
    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.with_info_plain_validator_function(
            cls._validate, serialization=core_schema.plain_serializer_function_ser_schema(str)
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        return {"type": "string", "description": DESCRIPTION[0].upper() + DESCRIPTION[1:] + "."}

    @classmethod
    def _validate(cls, value: Any, info: core_schema.ValidationInfo) -> WeightsSpec:
        if isinstance(value, WeightsSpec):
            return value
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {type(value).__name__} {value!r}")
        return cls.parse(value, (info.context or {}).get("paths"))


TINY_WEIGHTS = WeightsSpec(WeightsKind.TINY, WeightsKind.TINY.value)
