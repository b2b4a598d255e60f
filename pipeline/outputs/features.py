"""The samples' schema as Hugging Face `datasets` features (the dataset card's YAML form), so
`load_dataset(<run folder>)` reads typed columns without guessing from the first samples.

Derived from the provenance JSON Schema (`datasets` is not a dependency of restyle);
the tests load real run folders with `datasets` through these features.
"""

from __future__ import annotations

from typing import Any

from pipeline.outputs.provenance import PROVENANCE_SCHEMA

_JSON_DTYPES = {"string": "string", "integer": "int64", "number": "float64", "boolean": "bool"}


def json_features(schema: dict[str, Any]) -> dict[str, Any]:
    """The card feature (without its name) of a JSON value with this JSON Schema."""
    if "const" in schema:
        return {"dtype": _JSON_DTYPES[_const_type(schema["const"])]}
    if "enum" in schema:
        return {"dtype": "string"}
    kind = schema["type"]
    if kind == "object":
        return {
            "struct": [
                {"name": name, **json_features(sub)} for name, sub in schema["properties"].items()
            ]
        }
    if kind == "array":
        inner = json_features(schema["items"])
        return {"list": inner.get("struct", inner.get("dtype"))}
    return {"dtype": _JSON_DTYPES[kind]}


def _const_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    return "integer" if isinstance(value, int) else "string"


def image_features(extension: str, triplets: bool) -> list[dict[str, Any]]:
    """Card features of a run's WebDataset samples: the image members, caption, provenance."""
    images = ["result", "subject", "style"] if triplets else [None]
    return [
        {"name": "__key__", "dtype": "string"},
        {"name": "__url__", "dtype": "string"},
        *(
            {"name": extension if role is None else f"{role}.{extension}", "dtype": "image"}
            for role in images
        ),
        {"name": "txt", "dtype": "string"},
        {"name": "json", **json_features(PROVENANCE_SCHEMA)},
    ]
