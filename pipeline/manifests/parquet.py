"""Parquet manifests: columns checked once per file, rows streamed in small batches.

The file is opened through the storage's pyarrow filesystem (local or S3, same settings as
every other client) and read batch by batch, so a file with millions of rows or inline image
bytes is never loaded whole. Column types are checked up front: a column of the wrong type
would fail every row, so it fails the file with one clear `ManifestError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.manifests.items import ManifestError
from pipeline.storage import Storage

BATCH_ROWS = 256


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_binary(t: pa.DataType) -> bool:
    return (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    )


def _list_of(check: Callable[[pa.DataType], bool]) -> Callable[[pa.DataType], bool]:
    def is_list(t: pa.DataType) -> bool:
        return (
            pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t)
        ) and check(t.value_type)

    return is_list


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


# column -> (type check, what to write in the error)
COLUMN_TYPES: dict[str, tuple[Callable[[pa.DataType], bool], str]] = {
    "id": (_is_string, "string"),
    "prompt": (_is_string, "string"),
    "model": (_is_string, "string"),
    "subject": (_is_string, "string (a URI)"),
    "subject_bytes": (_is_binary, "binary"),
    "styles": (_list_of(_is_string), "list<string> (URIs)"),
    "style_bytes": (_list_of(_is_binary), "list<binary>"),
    "style_lora": (_is_string, "string"),
    "style_lora_scale": (_is_number, "number"),
    "seed": (_is_number, "integer"),
    "width": (_is_number, "integer"),
    "height": (_is_number, "integer"),
    "steps": (_is_number, "integer"),
    "guidance": (_is_number, "number"),
}


def check_schema(schema: pa.Schema, uri: str) -> None:
    """Raise ManifestError for a missing id column or a known column of the wrong type."""
    if "id" not in schema.names:
        raise ManifestError(
            uri, f"required column is missing (columns: {', '.join(schema.names)})", field="id"
        )
    for name in schema.names:
        if name in COLUMN_TYPES:
            check, wanted = COLUMN_TYPES[name]
            column_type = schema.field(name).type
            if not (pa.types.is_null(column_type) or check(column_type)):
                raise ManifestError(uri, f"column must be {wanted}, got {column_type}", field=name)
    if schema.names.count("id") > 1:
        raise ManifestError(uri, "column appears more than once", field="id")


def read_parquet_rows(uri: str, storage: Storage) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row index, raw row dict) for every row of one Parquet manifest file."""
    with open_parquet(uri, storage) as parquet:
        check_schema(parquet.schema_arrow, uri)
        row = 0
        try:
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, use_threads=False):
                for raw in batch.to_pylist():
                    yield row, raw
                    row += 1
        except pa.ArrowInvalid as error:
            raise ManifestError(uri, f"corrupt Parquet data after row {row}: {error}") from error
        except OSError as error:
            raise storage.arrow_error(uri, "read", error) from error


def count_parquet_rows(uri: str, storage: Storage) -> int:
    """Rows in one Parquet manifest, from its footer (no row data is read); its columns are
    checked on the way, so a run or a plan refuses a manifest without `id` before it starts."""
    with open_parquet(uri, storage) as parquet:
        check_schema(parquet.schema_arrow, uri)
        return parquet.metadata.num_rows


@contextmanager
def open_parquet(uri: str, storage: Storage) -> Iterator[pq.ParquetFile]:
    """The manifest's ParquetFile, through the storage's Arrow filesystem; errors name the file."""
    filesystem, path = storage.arrow_location(uri)
    try:
        source = filesystem.open_input_file(path)
    except OSError as error:
        raise storage.arrow_error(uri, "read", error) from error
    with source:
        try:
            parquet = pq.ParquetFile(source)
        except (pa.ArrowInvalid, OSError) as error:
            raise ManifestError(uri, f"not a readable Parquet file: {error}") from error
        yield parquet
