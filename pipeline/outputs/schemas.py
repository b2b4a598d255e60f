"""The output schemas, generated from the code and published under pipeline/outputs/schema/:

    records.arrow.json        part-*.parquet: the per-item records' Arrow schema
    captions.arrow.json       captions/*.parquet: the caption sidecars' Arrow schema
    provenance.schema.json    <key>.json in every sample: JSON Schema (draft 2020-12)

    python -m pipeline.outputs.schemas --write pipeline/outputs/schema   # after a change
    python -m pipeline.outputs.schemas --check pipeline/outputs/schema   # exit 1 when stale

An Arrow schema is published as JSON: each field's name, type (Arrow's own type names, structs
with their fields) and nullability, plus the schema metadata; `arrow_schema(doc)` reads it back.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.outputs.caption_sidecars import SIDECAR_SCHEMA
from pipeline.outputs.provenance import PROVENANCE_SCHEMA
from pipeline.outputs.records import RECORD_SCHEMA

SCHEMA_FOLDER = Path(__file__).parent / "schema"
_PRIMITIVES = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "double": pa.float64(),
    "bool": pa.bool_(),
}


def arrow_doc(schema: pa.Schema, title: str) -> dict[str, Any]:
    return {
        "title": title,
        "fields": [_field_doc(f) for f in schema],
        "metadata": {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()},
    }


def _field_doc(f: pa.Field) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": f.name, "nullable": f.nullable}
    if pa.types.is_struct(f.type):
        doc["type"] = "struct"
        doc["fields"] = [_field_doc(sub) for sub in f.type]
    else:
        doc["type"] = str(f.type)
    return doc


def arrow_schema(doc: dict[str, Any]) -> pa.Schema:
    """The Arrow schema a published `*.arrow.json` describes."""
    return pa.schema([_field(f) for f in doc["fields"]], metadata=doc.get("metadata") or None)


def _field(doc: dict[str, Any]) -> pa.Field:
    if doc["type"] == "struct":
        kind: pa.DataType = pa.struct([_field(sub) for sub in doc["fields"]])
    else:
        kind = _PRIMITIVES[doc["type"]]
    return pa.field(doc["name"], kind, nullable=doc["nullable"])


def published() -> dict[str, dict[str, Any]]:
    """File name -> content of every published schema."""
    return {
        "records.arrow.json": arrow_doc(RECORD_SCHEMA, "restyle records (part-*.parquet)"),
        "captions.arrow.json": arrow_doc(SIDECAR_SCHEMA, "restyle captions (captions/*.parquet)"),
        "provenance.schema.json": PROVENANCE_SCHEMA,
    }


def text(content: dict[str, Any]) -> str:
    return json.dumps(content, indent=2, ensure_ascii=False) + "\n"


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in published().items():
        path = folder / name
        path.write_text(text(content))
        written.append(path)
    return written


def stale_schemas(folder: Path) -> list[Path]:
    """The schema files under `folder` that differ from what the code generates, or are missing."""
    return [
        folder / name
        for name, content in published().items()
        if not (folder / name).is_file() or (folder / name).read_text() != text(content)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write or check the output schemas.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", type=Path, metavar="FOLDER", help="write them into FOLDER")
    action.add_argument("--check", type=Path, metavar="FOLDER", help="exit 1 if FOLDER's are stale")
    args = parser.parse_args(argv)
    if args.write:
        for path in write_schemas(args.write):
            print(f"wrote {path}")
        return 0
    stale = stale_schemas(args.check)
    for path in stale:
        print(
            f"stale: {path} (run python -m pipeline.outputs.schemas --write {args.check})",
            file=sys.stderr,
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
