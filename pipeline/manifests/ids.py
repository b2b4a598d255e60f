"""The ids of a manifest shard, read cheaply for the plan: one pass, nothing decoded.

Parquet: the `id` column alone. WebDataset: one streaming pass that reads only `.json` members
(the id is the json's "id", else the sample key, as `webdataset` reads it); image members are
skipped. Rows whose id is missing or not a string are left out: they become row errors when the
shard is read, and write no sample.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator

from pipeline.manifests.items import PARQUET, WEBDATASET, ManifestError, ManifestShard
from pipeline.manifests.parquet import BATCH_ROWS, check_schema, open_parquet
from pipeline.manifests.webdataset import open_tar, sample_member_infos
from pipeline.storage import Storage

MAX_JSON_MEMBER_BYTES = 1 << 20  # a sample's fields; larger members are left to the reader


def read_ids(shard: ManifestShard, storage: Storage) -> Iterator[tuple[int, str]]:
    """(row, id) for every row of `shard` whose id is a non-empty string, in file order."""
    if shard.format == PARQUET:
        yield from _parquet_ids(shard.uri, storage)
    elif shard.format == WEBDATASET:
        yield from _webdataset_ids(shard.uri, storage)
    else:
        raise ManifestError(shard.uri, f"unknown manifest format {shard.format!r}")


def _valid(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _parquet_ids(uri: str, storage: Storage) -> Iterator[tuple[int, str]]:
    with open_parquet(uri, storage) as parquet:
        check_schema(parquet.schema_arrow, uri)
        row = 0
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS * 64, columns=["id"]):
            for value in batch.column(0).to_pylist():
                if _valid(value):
                    yield row, value
                row += 1


def _webdataset_ids(uri: str, storage: Storage) -> Iterator[tuple[int, str]]:
    row, key = -1, None
    item_id: object = None
    with storage.open_read(uri) as stream, open_tar(stream, uri) as archive:
        try:
            for member_key, suffix, info in sample_member_infos(archive):
                if member_key != key:
                    if key is not None and _valid(item_id):
                        yield row, str(item_id)
                    row, key, item_id = row + 1, member_key, member_key
                if suffix == "json" and info.size <= MAX_JSON_MEMBER_BYTES:
                    item_id = _json_id(archive, info, item_id)
        except (tarfile.TarError, EOFError) as error:
            raise ManifestError(
                uri, f"corrupt or truncated tar after sample {row}: {error}"
            ) from error
    if key is not None and _valid(item_id):
        yield row, str(item_id)


def _json_id(archive: tarfile.TarFile, info: tarfile.TarInfo, default: object) -> object:
    file = archive.extractfile(info)
    assert file is not None
    with file:
        try:
            parsed = json.loads(file.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None  # a row error when the shard is read
    if not isinstance(parsed, dict):
        return None
    return parsed.get("id", default)
