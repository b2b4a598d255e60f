"""Reading one manifest shard into items, whatever its format.

A malformed row never stops the shard: it comes out as a `RowError` (file, row, field) that
the run records as a failed item. A problem with the file as a whole (unreadable, wrong column
type, truncated tar) raises `ManifestError`; a storage failure raises `StorageError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from pipeline.config.input_limits import DEFAULT_LIMITS, InputLimits
from pipeline.manifests.fields import parse_row
from pipeline.manifests.items import (
    PARQUET,
    WEBDATASET,
    ManifestError,
    ManifestItem,
    ManifestShard,
    RowError,
)
from pipeline.manifests.parquet import count_parquet_rows, read_parquet_rows
from pipeline.manifests.webdataset import count_samples, read_webdataset_rows
from pipeline.storage import Storage
from pipeline.storage.concurrent import map_bounded


def parsed_rows(
    shard: ManifestShard, storage: Storage, limits: InputLimits = DEFAULT_LIMITS
) -> Iterator[tuple[int, ManifestItem | None, list[RowError]]]:
    """(row, item or None, every problem of the row) for each row: for validation, which
    wants all problems, and for `read_shard`, which wants the first."""
    rows: Iterator[tuple[int, dict[str, Any], dict[str, str], list[RowError]]]
    if shard.format == PARQUET:
        rows = ((row, raw, {}, []) for row, raw in read_parquet_rows(shard.uri, storage))
    elif shard.format == WEBDATASET:
        rows = read_webdataset_rows(shard.uri, storage, limits.max_member_bytes)
    else:
        raise ManifestError(shard.uri, f"unknown manifest format {shard.format!r}")
    for row, raw, labels, member_problems in rows:
        item, problems = parse_row(raw, shard.uri, row, labels)
        problems = member_problems + problems
        yield row, (None if problems else item), problems


def read_shard(
    shard: ManifestShard, storage: Storage, limits: InputLimits = DEFAULT_LIMITS
) -> Iterator[ManifestItem | RowError]:
    """Items of one shard in file order; a bad row (or a repeated id) is a `RowError`."""
    first_row: dict[str, int] = {}
    for row, item, problems in parsed_rows(shard, storage, limits):
        if problems:
            first = problems[0]
            if len(problems) > 1:
                more = "; ".join(f"{p.field}: {p.message}" for p in problems[1:])
                first = RowError(
                    first.file,
                    first.row,
                    first.field,
                    f"{first.message} (also: {more})",
                    first.item_id,
                )
            yield first
            continue
        assert item is not None
        if item.id in first_row:
            yield RowError(
                shard.uri,
                row,
                "id",
                f"duplicate id {item.id!r} (first at row {first_row[item.id]})",
                item.id,
            )
            continue
        first_row[item.id] = row
        yield item


def count_items(shard: ManifestShard, storage: Storage) -> int:
    """Rows in a shard (valid or not), cheaply: the Parquet footer, or one pass over tar
    headers. For `restyle plan`, which must not decode anything."""
    if shard.format == PARQUET:
        return count_parquet_rows(shard.uri, storage)
    if shard.format == WEBDATASET:
        return count_samples(shard.uri, storage)
    raise ManifestError(shard.uri, f"unknown manifest format {shard.format!r}")


def count_all_items(shards: Iterable[ManifestShard], storage: Storage) -> int:
    """Rows in all `shards`, their footers (or tar headers) read `REQUEST_WORKERS` at a time:
    10^4 Parquet footers on S3 cost ~2 x 10^4 requests, which must not wait on each other."""
    return sum(map_bounded(lambda shard: count_items(shard, storage), shards))
