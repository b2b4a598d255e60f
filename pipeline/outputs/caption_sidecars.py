"""Caption sidecars: captions written after the fact for a committed shard.

    <run>/captions/000000.parquet            key, id, caption (one row per result image of
    <run>/captions/000000.retry-01.parquet   part-000000.tar, part-000000.retry-01.tar, ...)
                                             schema metadata: caption_model = the model spec

They live in their own folder, named so that no `part-*.parquet` glob (even `**/`) reaches them.

Committed tars are never rewritten (a trainer may already be reading them); a sidecar is
published whole in one write, so it is either complete or absent. Trainers join captions to
samples on `key` (the WebDataset `__key__`).
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.outputs.layout import ShardPaths
from pipeline.storage import Storage
from pipeline.storage.parquet import schema_from_bytes, table_to_bytes

SIDECAR_SCHEMA = pa.schema([("key", pa.string()), ("id", pa.string()), ("caption", pa.string())])


def sidecar_uri(paths: ShardPaths) -> str:
    return paths.captions


def write_sidecar(
    storage: Storage, uri: str, rows: list[dict], model_spec: str, source: str
) -> None:
    """Publish one shard's captions (`rows` of key, id, caption) in one write."""
    table = pa.Table.from_pylist(rows, schema=SIDECAR_SCHEMA).replace_schema_metadata(
        {"caption_model": model_spec, "source": source}
    )
    storage.write_bytes(uri, table_to_bytes(table))


def sidecar_model(storage: Storage, uri: str) -> str | None:
    """The model spec a sidecar was made with (None when there is no sidecar)."""
    if not storage.exists(uri):
        return None
    metadata = schema_from_bytes(storage.read_bytes(uri)).metadata or {}
    return metadata.get(b"caption_model", b"").decode()
