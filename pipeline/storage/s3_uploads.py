"""Multipart uploads a killed writer left open on S3.

A multipart upload that is started and never completed (the writer was SIGKILLed between its
parts) stays on the server: it is invisible to object listings, its parts are stored and billed,
and only an explicit abort (or a bucket lifecycle rule, which restyle cannot count on) removes
them. The next writer of the same objects lists the uploads under their common prefix
(ListMultipartUploads) and aborts them before it writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.storage.errors import StorageNotFoundError
from pipeline.storage.uris import S3_PREFIX, split_s3

if TYPE_CHECKING:
    from pipeline.storage.s3 import S3Backend


def open_uploads(backend: S3Backend, prefix: str) -> list[tuple[str, str]]:
    """(key, upload id) of every multipart upload not yet completed nor aborted whose key starts
    with the key of `prefix` (an s3:// URI, a plain key prefix: not only a folder)."""
    bucket, key_prefix = split_s3(prefix)
    client = backend.client()
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key_prefix}
    found: list[tuple[str, str]] = []
    while True:  # each page one retried call, resumed from its markers (see `iter_keys`)
        page: Any = backend.call(prefix, "list uploads", client.list_multipart_uploads, **kwargs)
        # Prefix is honoured by S3; checked again for stores that return the whole bucket.
        found += [
            (upload["Key"], upload["UploadId"])
            for upload in page.get("Uploads", [])
            if upload["Key"].startswith(key_prefix)
        ]
        if not page.get("IsTruncated"):
            return found
        kwargs.update(
            KeyMarker=page.get("NextKeyMarker", ""),
            UploadIdMarker=page.get("NextUploadIdMarker", ""),
        )


def abort_uploads(backend: S3Backend, prefix: str) -> int:
    """Abort the open multipart uploads under `prefix`; returns how many were aborted (an
    upload that ended meanwhile is not an error)."""
    bucket = split_s3(prefix)[0]
    client = backend.client()
    aborted = 0
    for key, upload_id in open_uploads(backend, prefix):
        uri = f"{S3_PREFIX}{bucket}/{key}"
        try:
            backend.call(
                uri,
                "abort upload",
                client.abort_multipart_upload,
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
            )
        except StorageNotFoundError:  # NoSuchUpload: completed or aborted by someone else
            continue
        aborted += 1
    return aborted
