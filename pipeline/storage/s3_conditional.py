"""Conditional writes on S3: If-None-Match: * (create only when absent) and If-Match: <ETag>
(replace only an unchanged object), the ground the run lease and shard claims stand on.

AWS S3 has honoured both since 2024, SeaweedFS and MinIO do too; a store that ignores the
headers is detected by `pipeline.outputs.lease` with a probe, which then falls back to writing
and reading back a unique token. Each call runs in `S3Backend.call`'s retry budget; a retried
create whose first try did land reads as "exists": callers compare the content they read back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.storage.errors import StorageError, StorageNotFoundError
from pipeline.storage.s3_errors import precondition_failed
from pipeline.storage.uris import split_s3

if TYPE_CHECKING:
    from pipeline.storage.s3 import S3Backend


def create_exclusive(backend: S3Backend, uri: str, data: bytes) -> str | None:
    """Create the object only if none is there: its ETag, or None when one is."""
    bucket, key = split_s3(uri)
    client = backend.client()
    try:
        response = backend.call(
            uri, "create", client.put_object, Bucket=bucket, Key=key, Body=data, IfNoneMatch="*"
        )
        return str(response["ETag"])
    except StorageError as error:
        if precondition_failed(error):
            return None
        raise


def read_versioned(backend: S3Backend, uri: str) -> tuple[bytes, str]:
    """(content, ETag) of a small object, for a later `replace_if`."""
    bucket, key = split_s3(uri)

    def get() -> tuple[bytes, str]:
        response = backend.client().get_object(Bucket=bucket, Key=key)
        return response["Body"].read(), str(response["ETag"])

    return backend.call(uri, "read", get)


def replace_if(backend: S3Backend, uri: str, data: bytes, version: str) -> str | None:
    """Replace the object only if it is still `version` (its ETag): the new ETag, or None
    when it changed or was deleted meanwhile."""
    bucket, key = split_s3(uri)
    client = backend.client()
    try:
        response = backend.call(
            uri, "replace", client.put_object, Bucket=bucket, Key=key, Body=data, IfMatch=version
        )
        return str(response["ETag"])
    except StorageNotFoundError:
        return None
    except StorageError as error:
        if precondition_failed(error):
            return None
        raise
