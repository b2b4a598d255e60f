"""Job specs: the YAML files under jobs/ that describe a nightly restyle or a triplet build.

A spec is read from a local path or an s3:// URI (through `Storage`), or, inside a job that
`restyle submit` started, from the environment (`RESTYLE_JOB_SPEC` holds the text and
`RESTYLE_JOB_SPEC_ORIGIN` the submitter's path, for messages and relative paths). Relative
paths and URIs in a spec resolve against the spec file's folder.

Every spec has `kind` (nightly | triplets) and `name` (a path- and id-safe word: it names the
output folders and the Ray submission id), plus the run settings shared by both kinds, which
map one to one onto `RunConfig`:

    weights: tiny                      # see `restyle run --help`
    seed: 0
    sampling: {width: 1024, height: 1024, steps: 25, guidance: 4.0}
    options: {dtype: auto, max_batch_size: 1, compile: false, fp8: false, offload: false,
              fuse_lora: false, device: auto}
    outputs: {image_format: png, quality: 95, caption: prompt, caption_template: "",
              caption_model: ""}
    scoring: {metrics: [clip_t, style], model: /models/clip-vit-large-patch14}
    actors: 0
    rows_per_shard: 500                # rows per derived manifest shard (the unit of work)

Every mistake is a `SpecError` naming the spec and the key path ("jobs/x.yaml: sampling.steps:
must be an integer, got 'ten'").
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from pipeline.config import OutputOptions, RunConfig, SamplingDefaults, ScoringOptions
from pipeline.models.base import ModelOptions
from pipeline.models.registry import MODEL_NAMES
from pipeline.storage import Storage, is_s3, resolve

SPEC_ENV = "RESTYLE_JOB_SPEC"
SPEC_ORIGIN_ENV = "RESTYLE_JOB_SPEC_ORIGIN"
KINDS = ("nightly", "triplets")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
RUN_KEYS = ("weights", "seed", "sampling", "options", "outputs", "scoring", "actors",
            "rows_per_shard")
DEFAULT_ROWS_PER_SHARD = 500


class SpecError(ValueError):
    """A job spec that cannot be used; the message names the spec and the key."""

    def __init__(self, origin: str, key: str | None, message: str):
        self.origin, self.key, self.message = origin, key, message
        super().__init__(f"{origin}: {key}: {message}" if key else f"{origin}: {message}")


@dataclass(frozen=True)
class SpecSource:
    """A spec's parsed YAML and where it came from."""

    data: dict[str, Any]
    origin: str  # path or URI, for messages and relative paths
    text: str

    def path(self, ref: str) -> str:
        """`ref` resolved against the spec's folder (s3:// and absolute paths unchanged; a spec
        from the environment has no folder, so its relative paths are the job's cwd's)."""
        if is_s3(ref):
            return ref
        expanded = os.path.expanduser(ref)
        if os.path.isabs(expanded) or self.origin.startswith(("<", "$")):
            return expanded
        base = self.origin if is_s3(self.origin) else os.path.abspath(self.origin)
        resolved = resolve(ref, base)
        return resolved + "/" if ref.endswith("/") and not resolved.endswith("/") else resolved

    def fail(self, key: str | None, message: str) -> SpecError:
        return SpecError(self.origin, key, message)


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
    spec = SpecSource(data, origin, text)
    kind = data.get("kind")
    if kind not in KINDS:
        raise spec.fail("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    job_name(spec)
    return spec


def job_name(spec: SpecSource) -> str:
    name = spec.data.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise spec.fail("name", "must be 1-63 letters, digits, '.', '_' or '-' (starting with a "
                                f"letter or digit): it names folders and the submission id; got {name!r}")
    return name


def check_keys(spec: SpecSource, mapping: Mapping, allowed: tuple[str, ...], where: str = "") -> None:
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise spec.fail(where or None, f"unknown key(s) {unknown}; known: {', '.join(allowed)}")


def require(spec: SpecSource, key: str, kind: type | tuple[type, ...], where: str | None = None,
            default: Any = dataclasses.MISSING, mapping: Mapping | None = None) -> Any:
    """`mapping[key]` checked against `kind` (a missing key: `default`, or an error)."""
    mapping = spec.data if mapping is None else mapping
    path = f"{where}.{key}" if where else key
    if key not in mapping or mapping[key] is None:
        if default is dataclasses.MISSING:
            raise spec.fail(path, "is required")
        return default
    value = mapping[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise spec.fail(path, f"must be {_kind_words(kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise spec.fail(path, f"must be {_kind_words(kinds)}, got {type(value).__name__} {value!r}")
    return value


def string_list(spec: SpecSource, key: str, where: str | None = None, mapping: Mapping | None = None,
                default: Any = dataclasses.MISSING) -> list[str]:
    """A string or a list of strings (one manifest spec or several)."""
    value = require(spec, key, (str, list), where, default, mapping)
    values = [value] if isinstance(value, str) else list(value)
    path = f"{where}.{key}" if where else key
    if not values or not all(isinstance(v, str) and v for v in values):
        raise spec.fail(path, f"must be a non-empty string or list of strings, got {value!r}")
    return values


def _kind_words(kinds: tuple[type, ...]) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a mapping"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


# ------------------------------------------------------------------ run settings -> RunConfig
@dataclass(frozen=True)
class RunSettings:
    """The `RunConfig` parts a spec sets; the job fills in manifest, output, run and model."""

    weights: str = "tiny"
    seed: int = 0
    sampling: SamplingDefaults = SamplingDefaults()
    options: ModelOptions = ModelOptions()
    outputs: OutputOptions = OutputOptions()
    scoring: ScoringOptions = ScoringOptions()
    actors: int = 0
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD

    def run_config(self, manifest: list[str], output: str, run: str, model: str,
                   include_references: bool = False) -> RunConfig:
        outputs = dataclasses.replace(self.outputs, include_references=include_references)
        return RunConfig(manifest=tuple(manifest), output=output, run=run, model=model,
                         weights=self.weights, seed=self.seed, sampling=self.sampling,
                         options=self.options, outputs=outputs, scoring=self.scoring,
                         actors=self.actors)


def run_settings(spec: SpecSource) -> RunSettings:
    weights = require(spec, "weights", str, default="tiny")
    if weights not in ("tiny", "random-full", "hf") and not is_s3(weights):
        weights = spec.path(weights)
    sampling = _section(spec, "sampling", SamplingDefaults)
    options = _section(spec, "options", ModelOptions, skip=("extra",))
    outputs = _section(spec, "outputs", OutputOptions, skip=("include_references",))
    scoring = _section(spec, "scoring", ScoringOptions)
    _check_outputs(spec, outputs)
    if scoring.metrics:
        from pipeline.processing.scoring import check_metrics

        try:
            check_metrics(scoring.metrics)
        except ValueError as error:
            raise spec.fail("scoring.metrics", str(error)) from None
        if not scoring.model:
            raise spec.fail("scoring.model", "is required when scoring.metrics is set (a CLIP "
                                              "folder, an s3:// folder or 'tiny')")
    scoring = dataclasses.replace(scoring, model=_aux_path(spec, scoring.model))
    outputs = dataclasses.replace(outputs, caption_model=_aux_path(spec, outputs.caption_model))
    rows = require(spec, "rows_per_shard", int, default=DEFAULT_ROWS_PER_SHARD)
    actors = require(spec, "actors", int, default=0)
    if rows < 1:
        raise spec.fail("rows_per_shard", f"must be at least 1, got {rows}")
    if actors < 0:
        raise spec.fail("actors", f"must be 0 (one per GPU) or more, got {actors}")
    return RunSettings(weights=weights, seed=require(spec, "seed", int, default=0),
                       sampling=sampling, options=options, outputs=outputs, scoring=scoring,
                       actors=actors, rows_per_shard=rows)


def _aux_path(spec: SpecSource, value: str) -> str:
    return spec.path(value) if value and value != "tiny" else value


def _check_outputs(spec: SpecSource, outputs: OutputOptions) -> None:
    try:
        outputs.extension
    except ValueError as error:
        raise spec.fail("outputs.image_format", str(error)) from None
    if outputs.caption not in ("prompt", "template", "model"):
        raise spec.fail("outputs.caption", f"must be prompt, template or model, got {outputs.caption!r}")
    if outputs.caption == "template" and not outputs.caption_template:
        raise spec.fail("outputs.caption_template", "is required when outputs.caption is template")
    if outputs.caption == "model" and not outputs.caption_model:
        raise spec.fail("outputs.caption_model", "is required when outputs.caption is model "
                                                  "(a captioner folder, an s3:// folder or 'tiny')")


def check_model(spec: SpecSource, model: Any, key: str) -> str:
    if model not in MODEL_NAMES:
        raise spec.fail(key, f"must be one of {', '.join(MODEL_NAMES)}, got {model!r}")
    return model


def _section(spec: SpecSource, key: str, cls: type, skip: tuple[str, ...] = ()) -> Any:
    """Build dataclass `cls` from the mapping at `key`, checking names and value types."""
    raw = require(spec, key, dict, default={})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    check_keys(spec, raw, tuple(fields), key)
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        if value is None:
            continue
        values[name] = _coerce(spec, f"{key}.{name}", value, hints[name])
    return cls(**values)


def _coerce(spec: SpecSource, path: str, value: Any, hint: Any) -> Any:
    """`value` checked against a simple type hint (int, float, str, bool, X | None, tuple[str])."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return _coerce(spec, path, value, inner[0])
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str) or not isinstance(value, list):
            raise spec.fail(path, f"must be a list, got {value!r}")
        return tuple(_coerce(spec, f"{path}[{i}]", v, args[0]) for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (isinstance(value, bool) and hint is not bool):
        raise spec.fail(path, f"must be {_kind_words((hint,))}, got {type(value).__name__} {value!r}")
    return value
