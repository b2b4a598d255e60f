"""Score files: one row per scored item, beside the records but out of their glob.

    <run>/scores/part-<k>.parquet     (see `run_layout`) one row per ok item of commit k:
        id, key, eval (fingerprint of metrics + backbone sha256s),
        clip_i, clip_i_style, clip_t, dino, csd, dreamsim, dreamsim_style   float64 or null
        missing   why null metrics are null ("no subject image", ...), or null
    <run>/scores/part-<k>.features.safetensors   set-metric features of the same rows, in
        order ("fid", "cmmd": [n, d] float32), written before the parquet

The schema is fixed: every metric column exists in every file, null where not computed. The
parquet is published last and whole, so it is the shard's marker: present with this eval
fingerprint means done (resume skips it), anything else is redone into the same names.
"""

from __future__ import annotations

import json

import pyarrow as pa

from pipeline.metrics.definitions import ITEM_METRICS
from pipeline.storage import Storage
from pipeline.storage.parquet import schema_from_bytes, table_from_bytes, table_to_bytes

SCORE_SCHEMA = pa.schema(
    [("id", pa.string()), ("key", pa.string()), ("eval", pa.string())]
    + [(name, pa.float64()) for name in ITEM_METRICS]
    + [("missing", pa.string())]
)
EVAL_KEY = b"restyle_eval"


def write_scores(storage: Storage, uri: str, rows: list[dict], eval_info: dict) -> None:
    """Publish one commit's score rows in one write; `eval_info` (fingerprint, models) goes to
    the schema metadata."""
    table = pa.Table.from_pylist(rows, schema=SCORE_SCHEMA).replace_schema_metadata(
        {EVAL_KEY: json.dumps(eval_info, sort_keys=True).encode()}
    )
    storage.write_bytes(uri, table_to_bytes(table))


def scores_eval(storage: Storage, uri: str) -> str | None:
    """The eval fingerprint a score file was made with (None when there is none)."""
    if not storage.exists(uri):
        return None
    metadata = schema_from_bytes(storage.read_bytes(uri)).metadata or {}
    return json.loads(metadata.get(EVAL_KEY, b"{}")).get("fingerprint")


def read_scores(storage: Storage, uri: str) -> list[dict]:
    return table_from_bytes(storage.read_bytes(uri)).to_pylist()


def write_features(storage: Storage, uri: str, features: dict) -> None:
    from safetensors.torch import save

    storage.write_bytes(uri, save({k: v.contiguous() for k, v in features.items()}))


def read_features(storage: Storage, uri: str) -> dict:
    from safetensors.torch import load

    return load(storage.read_bytes(uri))
