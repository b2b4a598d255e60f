"""Parquet to and from bytes, single-threaded on purpose.

Reading Parquet through a Python file object with Arrow's thread pool can abort the interpreter
at exit ("terminate called without an active exception", apache/arrow#34314, #33975): seen here
on about one `restyle status` in ten. The tables read this way are small (records, id indexes,
derived manifests), so one thread costs nothing and every command exits cleanly.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq


def table_from_bytes(data: bytes, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(pa.BufferReader(data), columns=columns, use_threads=False)


def schema_from_bytes(data: bytes) -> pa.Schema:
    return pq.read_schema(pa.BufferReader(data))


def table_to_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()
