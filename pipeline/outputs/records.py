"""Per-item records: `part-<k>.parquet`, one row per input item of shard k, failures included.

The file holds the shard's *current* view: each item's newest result. A retry commit rewrites
it with the re-run items' new records (before its marker), so the glob `part-*.parquet` always
holds exactly one record per item, the one `restyle status` counts. `retry` says which commit
wrote a record (0: the shard's first run; n: its n-th retry) and `output_key` where its image is.

One Arrow schema for every run and model (`RECORD_SCHEMA`, published in
`pipeline/outputs/schema/records.arrow.json`): `scores` is a struct with one nullable float
per metric (null: not computed for this item), never a map.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import pyarrow as pa

from pipeline.config import SCORE_METRICS
from pipeline.errors import ItemStatus
from pipeline.storage import Storage
from pipeline.storage.parquet import table_from_bytes, table_to_bytes

RECORDS_VERSION = 2
SCORE_NAMES = tuple(SCORE_METRICS)
SCORES_TYPE = pa.struct([pa.field(name, pa.float64()) for name in SCORE_NAMES])

RECORD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),  # the WebDataset __key__ of its sample
        pa.field("status", pa.string(), nullable=False),  # "ok", "skipped" or an error class
        pa.field("error", pa.string()),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("retry", pa.int32(), nullable=False),  # the commit that wrote it (0 = first run)
        pa.field("seed", pa.int64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("steps", pa.int32()),
        pa.field("guidance", pa.float64()),
        pa.field("prompt", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("output_key", pa.string()),  # "<absolute tar URI>#<key>" of its image, or null
        pa.field("input_shard", pa.string()),  # absolute URI of its manifest file
        pa.field("input_row", pa.int64()),
        pa.field("read_s", pa.float64()),
        pa.field("model_s", pa.float64()),
        pa.field("encode_s", pa.float64()),
        pa.field("scores", SCORES_TYPE, nullable=False),  # quality scores (processing.scoring)
    ],
    metadata={"restyle.records": str(RECORDS_VERSION)},
)


@dataclass
class ItemRecord:
    """One row of part-k.parquet: what happened to one input item."""

    id: str
    key: str
    status: str
    error: str | None = None
    attempts: int = 1
    retry: int = 0
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    prompt: str | None = None
    caption: str | None = None
    output_key: str | None = None
    input_shard: str | None = None
    input_row: int | None = None
    read_s: float | None = None
    model_s: float | None = None
    encode_s: float | None = None
    scores: Mapping[str, float | None] | None = None

    @property
    def ok(self) -> bool:
        return self.status == ItemStatus.OK

    @property
    def failed(self) -> bool:
        return ItemStatus(self.status).failed

    def row(self) -> dict:
        """The record as a row of `RECORD_SCHEMA` (every score field present)."""
        row = asdict(self)
        row["scores"] = score_struct(self.scores)
        return row


def score_struct(scores: Mapping[str, float | None] | None) -> dict[str, float | None]:
    """Every metric's score, null where it was not computed; unknown names are refused."""
    scores = scores or {}
    unknown = sorted(set(scores) - set(SCORE_NAMES))
    if unknown:
        raise ValueError(f"unknown score names {unknown}; the records know {list(SCORE_NAMES)}")
    return {name: scores.get(name) for name in SCORE_NAMES}


def records_table(records: list[ItemRecord]) -> pa.Table:
    return pa.Table.from_pylist([r.row() for r in records], schema=RECORD_SCHEMA)


def records_to_parquet(records: list[ItemRecord]) -> bytes:
    return table_to_bytes(records_table(records))


def records_from_table(table: pa.Table) -> list[ItemRecord]:
    return [ItemRecord(**row) for row in table.to_pylist()]


def read_records(storage: Storage, uri: str) -> list[ItemRecord]:
    return records_from_table(table_from_bytes(storage.read_bytes(uri)))


def overlay(current: list[ItemRecord], newer: list[ItemRecord]) -> list[ItemRecord]:
    """`current` with each item of `newer` replaced by its newer record (input order kept;
    items `current` lacks come last). An item is a manifest row: (id, input row), so a row that
    repeats an id (a failed record of its own) never replaces the first row's record."""
    by_row = {(r.id, r.input_row): r for r in newer}
    merged = [by_row.pop((r.id, r.input_row), r) for r in current]
    return merged + [r for r in newer if (r.id, r.input_row) in by_row]
