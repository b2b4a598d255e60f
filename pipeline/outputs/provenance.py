"""The provenance of one result image: `<key>.json` in its sample. One schema for every model
and run (`PROVENANCE_SCHEMA`, published as `pipeline/outputs/schema/provenance.schema.json`).

Every key is always present and every value has one JSON type in every sample: no null and no
empty list anywhere. Readers that infer a schema from the first samples (Hugging Face
`datasets`' webdataset builder reads five) would type a null `null` and then refuse the first
real value of another sample or run; so "none" is spelled in the value's own type:

- a text that does not apply is "" (no style LoRA: `style_lora.name` is ""; fp8 off: "" for
  `fp8` and `fp8_matmul`);
- no style LoRA has `scale` 0.0, which is what a LoRA at scale 0 computes;
- what differs between models or manifests is a JSON text of one object: the model-specific
  sampling parameters (`parameters.model_specific`) and the manifest row's other columns
  (`extra`), so their keys never become columns that one run has and another lacks;
- `inputs` lists every input the image was made from, the manifest file first (never empty):
  `{"role": "manifest" | "subject" | "style" | "style_lora", "uri": ...}`.

- quality scores are one object per metric, `{"computed": bool, "value": number}` (value 0.0
  when not computed); the records' `scores` column has the same as nullable floats.

URIs are absolute (`pipeline.storage.uris.public_uri`) and never carry credentials. Nothing
names the run folder itself, so the same configuration gives byte-identical samples in any
folder (the records' `output_key` says where a sample is).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.config import SCORE_METRICS
from pipeline.storage.uris import public_uri

PROVENANCE_VERSION = 2
DIALECT = "https://json-schema.org/draft/2020-12/schema"

# The sampling parameters both models report (`pipeline.models.base.SHARED_PARAMETER_KEYS`),
# with their JSON types; everything else a model reports goes to `model_specific`.
SHARED_PARAMETERS: dict[str, str] = {
    "model": "string",
    "prompt": "string",  # the prompt the model saw (OmniConsistency adds a style's trigger)
    "seed": "integer",
    "width": "integer",
    "height": "integer",
    "requested_width": "integer",
    "requested_height": "integer",
    "steps": "integer",
    "guidance": "number",
    "mu": "number",
    "noise": "string",
    "batch_size": "integer",
    "dtype": "string",
    "fp8": "string",  # the fp8 scheme, "" when off
    "fp8_matmul": "string",  # the fp8 kernel ("scaled_mm" | "dequantize"), "" when off
    "compile": "boolean",
    "fuse_lora": "boolean",
    "random_weights": "boolean",
}
_OFF_WHEN_EMPTY = ("fp8", "fp8_matmul")  # None or False: "" (the option is off)
_CASTS = {"string": str, "integer": int, "number": float, "boolean": bool}
INPUT_ROLES = ("manifest", "subject", "style", "style_lora")


@dataclass(frozen=True)
class StyleLoraFacts:
    """What provenance records of an item's community style LoRA."""

    name: str  # the human name (a shipped style's canonical name, else the reference)
    source: str  # the manifest's reference (absolute URI, or a shipped style's name)
    file: str  # the file name that was loaded
    sha256: str
    scale: float


def _string(description: str) -> dict:
    return {"type": "string", "description": description}


def _object(properties: dict[str, dict], description: str) -> dict:
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


PROVENANCE_SCHEMA: dict[str, Any] = {
    "$schema": DIALECT,
    "title": "restyle sample provenance (<key>.json)",
    **_object(
        {
            "provenance_version": {"const": PROVENANCE_VERSION},
            "id": _string("the manifest row's id"),
            "key": _string("the sample's WebDataset __key__"),
            "run": _string("the run's name"),
            "fingerprint": _string("the run configuration's fingerprint"),
            "model": {"enum": ["uso", "omniconsistency"]},
            "random_weights": {
                "type": "boolean",
                "description": "true when the weights are random (tiny or random-full presets): "
                "the pictures are noise, made for tests and benchmarks",
            },
            "weights": {
                "type": "array",
                "minItems": 1,
                "description": "every weight file loaded, by logical name",
                "items": _object(
                    {"name": _string("file in the weights root"), "sha256": _string("hex")},
                    "one weight file",
                ),
            },
            "parameters": _object(
                {
                    **{
                        name: {"type": kind}
                        for name, kind in SHARED_PARAMETERS.items()
                        if name not in _OFF_WHEN_EMPTY
                    },
                    "fp8": _string('the fp8 scheme, "" when off'),
                    "fp8_matmul": _string(
                        'the fp8 kernel, "scaled_mm" or "dequantize"; "" when fp8 is off'
                    ),
                    "model_specific": _string(
                        "JSON text of one object: the parameters only this model has"
                    ),
                },
                "the resolved sampling parameters and execution choices",
            ),
            "prompt": _string("the manifest row's prompt"),
            "caption": _string("the caption written as <key>.txt"),
            "inputs": {
                "type": "array",
                "minItems": 1,
                "description": "every input of the result, the manifest file first",
                "items": _object(
                    {
                        "role": {"enum": list(INPUT_ROLES)},
                        "uri": _string("absolute URI, 'inline:sha256:<hex>', or a style's name"),
                    },
                    "one input",
                ),
            },
            "source": _object(
                {
                    "manifest": _string("the manifest file, absolute URI"),
                    "row": {"type": "integer", "description": "the row (sample) in that file"},
                },
                "where the item came from",
            ),
            "style_lora": _object(
                {
                    "name": _string('the style LoRA\'s name, "" when the item has none'),
                    "source": _string("the manifest's reference to it"),
                    "file": _string("the file loaded"),
                    "sha256": _string("the file's sha256"),
                    "scale": {"type": "number", "description": "strength; 0.0 when none"},
                },
                "the item's community style LoRA (OmniConsistency)",
            ),
            "extra": _string("JSON text of one object: the manifest row's other columns"),
            "scores": _object(
                {
                    name: _object(
                        {
                            "computed": {"type": "boolean"},
                            "value": {"type": "number", "description": "0.0 when not computed"},
                        },
                        meaning,
                    )
                    for name, meaning in SCORE_METRICS.items()
                },
                "quality scores of the result (pipeline.processing.scoring)",
            ),
            "code_version": _string("restyle <version>"),
        },
        "How one result image was made.",
    ),
}


def json_text(value: dict) -> str:
    """A JSON object as canonical text (sorted keys), for the fixed-type `*_specific` fields."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def shared_parameters(parameters: dict, *, fill_missing: bool = False) -> dict:
    """The shared parameters in their schema types, plus `model_specific` (the rest, as JSON).

    A missing shared parameter is a model that broke its contract (ValueError), except when
    `fill_missing` (migrating outputs of older versions): then it is its type's empty value.
    """
    out: dict[str, Any] = {}
    for name, kind in SHARED_PARAMETERS.items():
        value = parameters.get(name)
        if name in _OFF_WHEN_EMPTY:
            value = "" if value in (None, False) else str(value)
        elif value is None:
            if not fill_missing:
                raise ValueError(f"the model reported no {name!r} parameter")
            value = _CASTS[kind]()
        out[name] = _CASTS[kind](value)
    rest = {k: v for k, v in parameters.items() if k not in SHARED_PARAMETERS}
    out["model_specific"] = json_text(rest)
    return out


def provenance(
    *,
    item_id: str,
    key: str,
    run: str,
    fingerprint: str,
    model: str,
    random_weights: bool,
    weights: dict[str, str],
    parameters: dict,
    prompt: str | None,
    caption: str,
    manifest: str,
    row: int,
    subject: str | None,
    styles: list[str],
    style_lora: StyleLoraFacts | None,
    extra: dict,
    code_version: str,
    scores: Mapping[str, float | None] | None = None,
    fill_missing: bool = False,
) -> dict:
    """The `<key>.json` of one result; every argument URI already public (absolute)."""
    inputs = [{"role": "manifest", "uri": manifest}]
    if subject:
        inputs.append({"role": "subject", "uri": subject})
    inputs += [{"role": "style", "uri": uri} for uri in styles]
    if style_lora is not None:
        inputs.append({"role": "style_lora", "uri": style_lora.source})
    lora = style_lora or StyleLoraFacts("", "", "", "", 0.0)
    return {
        "provenance_version": PROVENANCE_VERSION,
        "id": item_id,
        "key": key,
        "run": run,
        "fingerprint": fingerprint,
        "model": model,
        "random_weights": bool(random_weights),
        "weights": [{"name": n, "sha256": weights[n]} for n in sorted(weights)],
        "parameters": {
            **shared_parameters(parameters, fill_missing=fill_missing),
            "random_weights": bool(random_weights),
        },
        "prompt": prompt or "",
        "caption": caption,
        "inputs": inputs,
        "source": {"manifest": manifest, "row": int(row)},
        "style_lora": {
            "name": lora.name,
            "source": lora.source,
            "file": lora.file,
            "sha256": lora.sha256,
            "scale": float(lora.scale),
        },
        "extra": json_text(extra),
        "scores": score_objects(scores),
        "code_version": code_version,
    }


def score_objects(scores: Mapping[str, float | None] | None) -> dict[str, dict]:
    """Every metric as {"computed", "value"}; unknown metric names are refused."""
    scores = scores or {}
    unknown = sorted(set(scores) - set(SCORE_METRICS))
    if unknown:
        raise ValueError(f"unknown score names {unknown}; provenance knows {list(SCORE_METRICS)}")
    return {
        name: {"computed": scores.get(name) is not None, "value": float(scores.get(name) or 0.0)}
        for name in SCORE_METRICS
    }


def style_lora_reference(reference: str, relative_to: str | None = None) -> str:
    """A manifest's style LoRA reference as outputs record it: a local .safetensors file
    absolute (relative ones against `relative_to`, default the current folder), an s3:// URI
    without credentials, a Hugging Face file as hf://owner/repo/file, a shipped style by name
    (the forms `pipeline.processing.style_loras` accepts)."""
    if reference.startswith("s3://"):
        return public_uri(reference)
    local = os.path.join(relative_to or os.getcwd(), os.path.expanduser(reference))
    if reference.endswith(".safetensors") and (os.path.isabs(reference) or os.path.exists(local)):
        return public_uri(local)
    if "/" not in reference:
        return reference
    return "hf://" + reference.removeprefix("hf://")


def input_uris(provenance: Mapping[str, Any], role: str) -> list[str]:
    """The URIs of a sample's inputs in `role` ("subject", "style", ...), in input order."""
    return [i["uri"] for i in provenance.get("inputs", []) if i.get("role") == role]
