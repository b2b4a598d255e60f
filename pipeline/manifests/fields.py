"""Field rules shared by every manifest format: one raw row (a dict) -> ManifestItem or errors.

The format readers (Parquet, WebDataset) only turn their storage layout into a plain dict of
Python values with the schema's field names; every check on values happens here, so both
formats accept and refuse exactly the same things. The schema is documented in
manifests/README.md; keep the two in step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pipeline.config.values import MAX_SEED, MAX_SIDE, MAX_STEPS, MIN_SIDE
from pipeline.manifests.images import ImageRef
from pipeline.manifests.items import ManifestItem, RowError
from pipeline.models.registry import MODEL_NAMES
from pipeline.storage.uris import resolve

T = TypeVar("T")

# Limits shared with the run configuration (`pipeline.config.values`): a row override and a
# run default are held to the same ranges.
KNOWN_FIELDS = (
    "id",
    "prompt",
    "model",
    "subject",
    "subject_bytes",
    "styles",
    "style_bytes",
    "style_lora",
    "style_lora_scale",
    "seed",
    "width",
    "height",
    "steps",
    "guidance",
)


class _FieldProblem(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def _text(raw: Mapping[str, Any], name: str) -> str | None:
    """An optional string; "" counts as absent (CSV-born manifests write "" for missing)."""
    value = raw.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _FieldProblem(name, f"must be a string, got {_show(value)}")
    return value


def _number(raw: Mapping[str, Any], name: str) -> float | None:
    """An optional finite number; NaN counts as absent (pandas writes NaN for missing)."""
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _FieldProblem(name, f"must be a number, got {_show(value)}")
    if isinstance(value, float) and math.isnan(value):
        return None
    if not math.isfinite(value):
        raise _FieldProblem(name, f"must be finite, got {value}")
    return float(value)


def _integer(raw: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    number = raw.get(name)
    if number is None or (isinstance(number, float) and math.isnan(number)):
        return None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise _FieldProblem(name, f"must be an integer, got {_show(number)}")
    if isinstance(number, float):
        if not number.is_integer():
            raise _FieldProblem(name, f"must be an integer, got {number}")
        number = int(number)
    if not low <= number <= high:
        raise _FieldProblem(name, f"must be between {low} and {high}, got {number}")
    return number


def _uri(value: Any, field: str, manifest_uri: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _FieldProblem(field, f"must be a non-empty URI string, got {_show(value)}")
    try:
        return resolve(value, manifest_uri)
    except ValueError as error:
        raise _FieldProblem(field, str(error)) from None


def _blob(value: Any, field: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)) or not len(value):
        raise _FieldProblem(field, f"must be non-empty image bytes, got {_show(value)}")
    return bytes(value)


def _subject(raw: Mapping[str, Any], manifest_uri: str) -> ImageRef | None:
    uri, data = _text(raw, "subject"), raw.get("subject_bytes")
    if uri is not None and data is not None:
        raise _FieldProblem("subject", "give subject (a URI) or subject_bytes, not both")
    if uri is not None:
        return ImageRef(uri=_uri(uri, "subject", manifest_uri), name="subject")
    if data is not None:
        return ImageRef(data=_blob(data, "subject_bytes"), name="subject")
    return None


def _list(raw: Mapping[str, Any], name: str) -> list[Any]:
    value = raw.get(name)
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise _FieldProblem(name, f"must be a list (even for one image), got {_show(value)}")
    return list(value)


def _styles(raw: Mapping[str, Any], manifest_uri: str) -> list[ImageRef]:
    uris, blobs = _list(raw, "styles"), _list(raw, "style_bytes")
    if uris and blobs:
        raise _FieldProblem("styles", "give styles (URIs) or style_bytes, not both")
    if uris:
        return [
            ImageRef(uri=_uri(u, f"styles[{i}]", manifest_uri), name=f"styles[{i}]")
            for i, u in enumerate(uris)
        ]
    return [
        ImageRef(data=_blob(b, f"style_bytes[{i}]"), name=f"styles[{i}]")
        for i, b in enumerate(blobs)
    ]


def _model(raw: Mapping[str, Any]) -> str | None:
    name = _text(raw, "model")
    if name is None:
        return None
    if name.lower() not in MODEL_NAMES:
        raise _FieldProblem(
            "model",
            f"unknown model {name!r}; use one of {', '.join(MODEL_NAMES)} "
            "(or leave it empty for the run's model)",
        )
    return name.lower()


def _item_id(raw: Mapping[str, Any]) -> str:
    value = raw.get("id")
    if not isinstance(value, str) or not value.strip():
        got = "it is missing" if value is None else f"got {_show(value)}"
        raise _FieldProblem("id", f"required: a non-empty string; {got}")
    return value


def parse_row(
    raw: Mapping[str, Any], manifest_uri: str, row: int, labels: Mapping[str, str] | None = None
) -> tuple[ManifestItem | None, list[RowError]]:
    """Check every field of one row; return the item, or None and every problem found.

    `labels` renames fields in messages where the format stores them differently (a
    WebDataset sample's subject is the member "<key>.subject.jpg", not a field).
    """
    labels = labels or {}
    errors: list[RowError] = []
    raw_id = raw.get("id")
    item_id = raw_id if isinstance(raw_id, str) and raw_id.strip() else None

    def check(fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return fn(*args)
        except _FieldProblem as problem:
            field = problem.field
            base = field.split("[")[0]
            label = labels.get(field) or (
                labels[base] + field[len(base) :] if base in labels else field
            )
            errors.append(RowError(manifest_uri, row, label, problem.message, item_id))
            return None

    valid_id = check(_item_id, raw)
    prompt = check(_text, raw, "prompt") or ""
    model = check(_model, raw)
    subject = check(_subject, raw, manifest_uri)
    styles = check(_styles, raw, manifest_uri) or []
    style_lora = check(_text, raw, "style_lora")
    style_lora_scale = check(_number, raw, "style_lora_scale")
    seed = check(_integer, raw, "seed", 0, MAX_SEED)
    width = check(_integer, raw, "width", MIN_SIDE, MAX_SIDE)
    height = check(_integer, raw, "height", MIN_SIDE, MAX_SIDE)
    steps = check(_integer, raw, "steps", 1, MAX_STEPS)
    guidance = check(_number, raw, "guidance")
    if guidance is not None and guidance < 0:
        errors.append(
            RowError(
                manifest_uri,
                row,
                labels.get("guidance", "guidance"),
                f"must be >= 0, got {guidance}",
                item_id,
            )
        )
    if errors:
        return None, errors
    assert valid_id is not None  # _item_id returns a string or raises, which records an error
    extra = {k: v for k, v in raw.items() if k not in KNOWN_FIELDS}
    item = ManifestItem(
        id=valid_id,
        prompt=prompt,
        model=model,
        subject=subject,
        styles=styles,
        style_lora=style_lora,
        style_lora_scale=style_lora_scale,
        seed=seed,
        width=width,
        height=height,
        steps=steps,
        guidance=guidance,
        extra=extra,
        source=(manifest_uri, row),
    )
    return item, []
