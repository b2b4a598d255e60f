"""Manifests that jobs write for the runner: triplet pairings, a night's new catalog rows.

A job turns its inputs (catalogs, a style set, a pairing) into ordinary manifest rows (the
schema of manifests/README.md) and writes them as Parquet shards of `rows_per_shard` rows:

    <folder>/part-000000.parquet ...   the rows, in a deterministic order
    <folder>/_manifest.json            written last: digest of the job inputs, shard and row
                                       counts (the leading "_" keeps it out of shard listings)

The runner then reads that folder like any manifest, so every derived item gets the usual
per-item record, seed, provenance and commit. The marker makes a derived manifest a frozen,
reusable fact: a job that finds one with its own digest reuses it as is (a re-run resumes the
same shards), and one with another digest is a conflict, never silently rewritten.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.errors import DerivedManifestConflict
from pipeline.manifests import ManifestItem
from pipeline.storage import Storage
from pipeline.storage.parquet import table_to_bytes

MARKER = "_manifest.json"

KNOWN_COLUMNS = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("model", pa.string()),
        ("subject", pa.string()),
        ("subject_bytes", pa.binary()),
        ("styles", pa.list_(pa.string())),
        ("style_bytes", pa.list_(pa.binary())),
        ("style_lora", pa.string()),
        ("style_lora_scale", pa.float64()),
        ("seed", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("steps", pa.int32()),
        ("guidance", pa.float64()),
    ]
)


def item_row(item: ManifestItem) -> dict[str, Any]:
    """A validated item back as a manifest row (URIs stay URIs, inline images stay inline)."""
    row: dict[str, Any] = {
        "id": item.id,
        "prompt": item.prompt,
        "model": item.model,
        "style_lora": item.style_lora,
        "style_lora_scale": item.style_lora_scale,
        "seed": item.seed,
        "width": item.width,
        "height": item.height,
        "steps": item.steps,
        "guidance": item.guidance,
    }
    if item.subject is not None:
        row["subject" if item.subject.uri else "subject_bytes"] = (
            item.subject.uri or item.subject.data
        )
    if item.styles:
        if all(ref.uri for ref in item.styles):
            row["styles"] = [ref.uri for ref in item.styles]
        else:
            row["style_bytes"] = [ref.data for ref in item.styles]
    for key, value in (item.extra or {}).items():
        row.setdefault(key, value)
    return row


def rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Known fields with their manifest types; extra columns inferred, or as text when their
    values do not share one type."""
    columns: dict[str, pa.Array] = {}
    names = list(KNOWN_COLUMNS.names) + sorted(
        {k for r in rows for k in r} - set(KNOWN_COLUMNS.names)
    )
    for name in names:
        values = [r.get(name) for r in rows]
        if name in KNOWN_COLUMNS.names:
            columns[name] = pa.array(values, type=KNOWN_COLUMNS.field(name).type)
            continue
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array([None if v is None else str(v) for v in values], pa.string())
    return pa.table(columns)


@dataclass
class ManifestMarker:
    digest: str
    shards: list[str]
    rows: int
    created_at: float
    info: dict[str, Any]

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, indent=1, sort_keys=True, default=str).encode()


def read_marker(storage: Storage, folder: str) -> ManifestMarker | None:
    uri = f"{folder.rstrip('/')}/{MARKER}"
    if not storage.exists(uri):
        return None
    data = json.loads(storage.read_bytes(uri))
    return ManifestMarker(
        data["digest"], data["shards"], data["rows"], data["created_at"], data.get("info", {})
    )


def frozen_manifest(storage: Storage, folder: str, digest: str) -> ManifestMarker | None:
    """The folder's complete derived manifest if it was made from the same inputs; None if
    there is none; `DerivedManifestConflict` if it was made from other inputs."""
    marker = read_marker(storage, folder)
    if marker is None:
        return None
    if marker.digest != digest:
        raise DerivedManifestConflict(
            f"{folder} already holds a manifest derived from other inputs (digest {marker.digest}, "
            f"these inputs give {digest}); outputs of different inputs are never mixed: use "
            "another job name (or night)"
        )
    return marker


class ManifestWriter:
    """Streams rows into `part-<k>.parquet` shards of `rows_per_shard`, marker last."""

    def __init__(self, storage: Storage, folder: str, rows_per_shard: int):
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
        self.storage = storage
        self.folder = folder.rstrip("/")
        self.rows_per_shard = rows_per_shard
        self.shards: list[str] = []
        self.rows = 0
        self._pending: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self._pending.append(row)
        self.rows += 1
        if len(self._pending) >= self.rows_per_shard:
            self._flush()

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.add(row)

    def _flush(self) -> None:
        if not self._pending:
            return
        uri = f"{self.folder}/part-{len(self.shards):06d}.parquet"
        self.storage.write_bytes(uri, table_to_bytes(rows_table(self._pending)))
        self.shards.append(uri)
        self._pending = []

    def finish(self, digest: str, info: dict[str, Any] | None = None) -> ManifestMarker:
        """Write the last shard, then the marker; the manifest is usable from then on."""
        self._flush()
        marker = ManifestMarker(digest, self.shards, self.rows, time.time(), info or {})
        self.storage.write_bytes(f"{self.folder}/{MARKER}", marker.to_json())
        return marker
