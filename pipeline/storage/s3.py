"""S3 side of `Storage`: boto3 and pyarrow clients built from one `StorageSettings`, and a download
stream that survives broken connections.

Retries happen at two levels:
- every HTTP request goes through botocore's "standard" retry mode (5xx, SlowDown,
  InternalError, throttling, connection errors and timeouts; exponential backoff with jitter)
  up to `max_attempts`: a quick burst;
- around that, every operation (`S3Backend.call`) and every download stream (`S3ObjectReader`,
  whose body may break after its request succeeded) runs on a `RetryBudget` measured in
  minutes (`pipeline.storage.retry`): an outage shorter than `retry_budget_s` costs nothing.
pyarrow's filesystem (Parquet manifests) gets enough attempts of its own exponential strategy to
cover the same budget. Then the error surfaces as a `StorageError` with `transient=True` that
says how long the store was unavailable. Auth failures and missing objects or buckets are never
retried and say what to check.

Clients are created lazily, once per process (and rebuilt after a fork), so `Storage` can be
pickled into Ray actors. This module is the only place in restyle that opens boto3 clients.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import boto3
import botocore.exceptions as bce
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from pipeline.storage.concurrent import REQUEST_WORKERS
from pipeline.storage.errors import StorageError, StorageNotFoundError, StorageTooLargeError
from pipeline.storage.retry import RetryBudget, arrow_attempts
from pipeline.storage.s3_errors import STREAM_ERRORS, boto_cause, translate
from pipeline.storage.s3_listing import EVENT as LIST_PAGE_EVENT
from pipeline.storage.s3_listing import PAGE, PageReader
from pipeline.storage.settings import StorageSettings
from pipeline.storage.uris import S3_PREFIX, split_s3

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
READ_CHUNK = 8 * 1024 * 1024
DOWNLOAD_PART = 16 * 1024 * 1024  # ranged GETs of a parallel download (`download_file`)
MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest multipart part (all but the last)


class S3Backend:
    """boto3/pyarrow access for one `StorageSettings`; safe to share between threads."""

    def __init__(self, settings: StorageSettings):
        self.settings = settings
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._client: Any = None
        self._arrow_fs: Any = None
        self._attempts = threading.local()
        self._pages = PageReader()

    # ------------------------------------------------------------------ clients
    def _session(self) -> boto3.session.Session:
        creds = self.settings.credentials
        try:
            return boto3.session.Session(
                aws_access_key_id=creds.access_key_id if creds else None,
                aws_secret_access_key=creds.secret_access_key if creds else None,
                aws_session_token=creds.session_token if creds else None,
                profile_name=None if creds else self.settings.profile,
                region_name=self.settings.region,
            )
        except bce.ProfileNotFound:
            raise StorageError(
                S3_PREFIX,
                "connect",
                f"AWS profile {self.settings.profile!r} not "
                "found in the AWS config/credentials files",
            ) from None

    def _fresh_process(self) -> bool:
        return self._pid != os.getpid()

    def client(self) -> Any:
        """The process's boto3 S3 client, created on first use."""
        with self._lock:
            if self._client is None or self._fresh_process():
                self._arrow_fs = None
                self._pid = os.getpid()
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        s = self.settings
        session = self._session()
        config = Config(
            region_name=s.region or session.region_name or DEFAULT_REGION,
            signature_version="s3v4",
            s3={"addressing_style": "path" if s.path_style else "virtual"},
            retries={"mode": "standard", "total_max_attempts": s.max_attempts},
            connect_timeout=s.connect_timeout_s,
            read_timeout=s.read_timeout_s,
            # room for a transfer's parts and for `map_bounded`'s requests at once
            max_pool_connections=max(REQUEST_WORKERS, s.max_concurrency * 2),
            # Only send/verify checksums S3 requires: several S3-compatible services reject the
            # CRC headers boto3 adds by default since 1.36.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        client = session.client("s3", endpoint_url=s.endpoint_url, config=config)
        client.meta.events.register("before-send.s3", self._count_attempt)
        client.meta.events.register(LIST_PAGE_EVENT, self._pages)
        return client

    def _count_attempt(self, **_: Any) -> None:
        self._attempts.count = getattr(self._attempts, "count", 0) + 1

    def transfer_config(self) -> TransferConfig:
        s = self.settings
        return TransferConfig(
            multipart_threshold=s.multipart_threshold_bytes,
            multipart_chunksize=s.multipart_chunk_bytes,
            max_concurrency=s.max_concurrency,
            use_threads=True,
        )

    def download_config(self) -> TransferConfig:
        """Big objects come down as `max_concurrency` ranged GETs of `DOWNLOAD_PART` at once."""
        return TransferConfig(
            multipart_threshold=DOWNLOAD_PART,
            multipart_chunksize=DOWNLOAD_PART,
            max_concurrency=self.settings.max_concurrency,
            use_threads=True,
        )

    def pyarrow_filesystem(self) -> Any:
        """A pyarrow S3FileSystem with the same endpoint (scheme included), region, addressing,
        timeouts, retries and credentials as the boto3 client."""
        from pyarrow import fs as pafs

        self.client()  # resets the cache after a fork
        with self._lock:
            if self._arrow_fs is None:
                s = self.settings
                session = self._session()
                kwargs: dict[str, Any] = dict(
                    region=s.region or session.region_name or DEFAULT_REGION,
                    endpoint_override=s.endpoint_url,
                    force_virtual_addressing=not s.path_style and s.endpoint_url is not None,
                    connect_timeout=s.connect_timeout_s,
                    request_timeout=s.read_timeout_s,
                    retry_strategy=pafs.AwsDefaultS3RetryStrategy(
                        max_attempts=arrow_attempts(s.max_attempts, s.retry_budget_s)
                    ),
                )
                creds = session.get_credentials()
                # Static keys are handed over; refreshable ones (instance roles, web identity)
                # are left to pyarrow's own default chain, which refreshes them itself.
                if creds is not None and creds.method in {
                    "explicit",
                    "env",
                    "shared-credentials-file",
                    "config-file",
                }:
                    frozen = creds.get_frozen_credentials()
                    kwargs.update(
                        access_key=frozen.access_key,
                        secret_key=frozen.secret_key,
                        session_token=frozen.token,
                    )
                self._arrow_fs = pafs.S3FileSystem(**kwargs)
            return self._arrow_fs

    # ------------------------------------------------------------------ errors
    def translate(
        self, error: BaseException, uri: str, operation: str, attempts: int = 1
    ) -> StorageError:
        """A boto/botocore exception as a StorageError with a hint and no secrets."""
        return translate(error, uri, operation, self.settings, attempts)

    def budget(self, min_failures: int = 0) -> RetryBudget:
        s = self.settings
        return RetryBudget(s.retry_budget_s, s.retry_base_delay_s, s.retry_cap_s, min_failures)

    def call(self, uri: str, operation: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one boto3 call and translate its failure. botocore retries each request in a
        quick burst; a transient failure that outlives it is retried here on the settings'
        `RetryBudget` (so `fn` must be safe to call again: every caller's is)."""
        budget = self.budget()
        while True:
            self._attempts.count = 0
            try:
                return fn(*args, **kwargs)
            except (bce.BotoCoreError, bce.ClientError, S3UploadFailedError) as error:
                budget.attempts += self._attempts_of(error)
                failure = self.translate(error, uri, operation, budget.attempts)
                budget.retry_or_raise(failure, error)

    def _attempts_of(self, error: BaseException) -> int:
        """HTTP attempts behind a failed call: the response's retry count when there is one,
        else the attempts counted on this thread, else botocore's maximum (the failing request
        ran on a transfer thread, and botocore gives up only after its last attempt)."""
        cause = boto_cause(error)
        if isinstance(cause, bce.ClientError):
            retries = cause.response.get("ResponseMetadata", {}).get("RetryAttempts")
            if retries is not None:
                return int(retries) + 1
        return getattr(self._attempts, "count", 0) or self.settings.max_attempts

    # ------------------------------------------------------------------ operations
    def open_read(self, uri: str) -> io.BufferedReader:
        return io.BufferedReader(S3ObjectReader(self, uri), buffer_size=1024 * 1024)

    def read_bytes(self, uri: str, max_bytes: int | None = None) -> bytes:
        """The object; with `max_bytes`, a larger object is refused from its size (the GET's
        Content-Length) before its body is read."""
        with S3ObjectReader(self, uri) as reader:
            if max_bytes is not None and reader.size > max_bytes:
                raise StorageTooLargeError(
                    uri,
                    "read",
                    f"{reader.size} bytes, larger than the {max_bytes}-byte budget for this object",
                )
            return reader.readall()

    def write_bytes(self, uri: str, data: bytes) -> None:
        """One PUT up to the threshold, and always up to S3's smallest part (`MIN_PART_BYTES`):
        in parts, such an object would be one part and two more requests, and a writer killed
        meanwhile (a driver's heartbeat, a marker) would leave an upload open that nothing of
        the run aborts."""
        bucket, key = split_s3(uri)
        client = self.client()
        if len(data) <= max(self.settings.multipart_threshold_bytes, MIN_PART_BYTES):
            self.call(uri, "write", client.put_object, Bucket=bucket, Key=key, Body=data)
        else:
            self.call(
                uri,
                "write",
                client.upload_fileobj,
                io.BytesIO(data),
                bucket,
                key,
                Config=self.transfer_config(),
            )

    def upload_file(self, uri: str, source: str) -> None:
        bucket, key = split_s3(uri)
        if not os.path.isfile(source):
            raise StorageNotFoundError(
                source, "upload", f"local source file to upload to {uri} does not exist"
            )
        self.call(
            uri,
            "upload",
            self.client().upload_file,
            source,
            bucket,
            key,
            Config=self.transfer_config(),
        )

    def download_file(self, uri: str, target: str) -> None:
        """The object into the local file `target`, in parallel ranged parts (boto3's transfer
        manager: each part retried by botocore, the file assembled beside `target` and renamed
        onto it when complete)."""
        bucket, key = split_s3(uri)
        self.call(
            uri,
            "download",
            self.client().download_file,
            bucket,
            key,
            target,
            Config=self.download_config(),
        )

    def head(self, uri: str, operation: str) -> dict:
        bucket, key = split_s3(uri)
        if not key:
            raise StorageError(uri, operation, "a bucket is not an object; give a key")
        return self.call(uri, operation, self.client().head_object, Bucket=bucket, Key=key)

    def exists(self, uri: str) -> bool:
        if not split_s3(uri)[1]:
            return False  # a bucket root is a folder, not an object
        try:
            self.head(uri, "exists")
            return True
        except StorageNotFoundError:
            return False

    def size(self, uri: str) -> int:
        return int(self.head(uri, "size")["ContentLength"])

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        self.call(uri, "delete", self.client().delete_object, Bucket=bucket, Key=key)

    def iter_keys(self, bucket: str, prefix: str, delimiter: str | None = None) -> Iterator[str]:
        """Keys under `prefix` (all levels, or one level with `delimiter="/"`)."""
        for key, _etag in self.iter_entries(bucket, prefix, delimiter):
            yield key

    def iter_entries(
        self,
        bucket: str,
        prefix: str,
        delimiter: str | None = None,
        after: str | None = None,
        last: str | None = None,
    ) -> Iterator[tuple[str, str]]:
        """(key, ETag) under `prefix`: the listing carries each object's ETag, so versions
        cost no request of their own. Each page is one retried call that resumes from the
        last continuation token (a paginator's generator cannot be resumed once a request in
        it failed). Pages are parsed by `s3_listing`, not botocore. With `after` / `last`
        (keys), only the keys in (after, last]: one range of a listing cut in several."""
        uri = f"{S3_PREFIX}{bucket}/{prefix}"
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if after is not None:
            kwargs["StartAfter"] = after
        client = self.client()
        while True:
            with self._pages.reading():  # the page parsed from its XML (`s3_listing`)
                page = self.call(uri, "list", client.list_objects_v2, **kwargs)
            if (parsed := page.get(PAGE)) is not None:
                entries = parsed.entries
                truncated, token = parsed.truncated, parsed.token
            else:  # a body only botocore could read
                entries = [(e["Key"], str(e.get("ETag", ""))) for e in page.get("Contents", [])]
                truncated, token = page.get("IsTruncated"), page.get("NextContinuationToken")
            for key, etag in entries:
                if last is not None and key > last:
                    return
                yield key, etag
            if not truncated or not token:
                return
            kwargs["ContinuationToken"] = token


class S3ObjectReader(io.RawIOBase):
    """A read-only stream over one object that survives broken connections.

    Reads stream from one GET; when the body breaks mid-way, the reader reopens it from the
    byte it reached with a ranged GET pinned to the first response's ETag (so a concurrent
    overwrite is detected, not silently spliced), after a jittered exponential backoff. Breaks
    without progress are retried at least `max_attempts` times and for as long as the
    storage retry budget lasts; bytes received start a fresh budget.
    """

    def __init__(self, backend: S3Backend, uri: str):
        super().__init__()
        self._backend = backend
        self._uri = uri
        self._bucket, self._key = split_s3(uri)
        if not self._key:
            raise StorageError(uri, "read", "a bucket is not an object; give a key")
        self._pos = 0
        self._etag: str | None = None
        self._size = 0
        self._body: Any = None
        # breaks since the last progress: retried at least max_attempts times, then for as
        # long as the storage retry budget lasts
        self._breaks = backend.budget(min_failures=backend.settings.max_attempts)
        self._open()

    def _open(self) -> None:
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": self._key}
        if self._etag is not None:
            kwargs.update(Range=f"bytes={self._pos}-", IfMatch=self._etag)
        response = self._backend.call(
            self._uri, "read", self._backend.client().get_object, **kwargs
        )
        if self._etag is None:
            self._etag = response.get("ETag")
            self._size = int(response["ContentLength"])
        self._body = response["Body"]

    def _drop_body(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail too
                self._body.close()
            self._body = None

    def _read(self, amount: int) -> bytes:
        while self._pos < self._size:
            try:
                if self._body is None:
                    self._open()
                data = self._body.read(amount)
                if not data:
                    raise bce.IncompleteReadError(actual_bytes=self._pos, expected_bytes=self._size)
                self._pos += len(data)
                if self._breaks.failures:
                    self._breaks.restart()  # progress: a later break gets a whole budget
                return data
            except STREAM_ERRORS as error:
                self._drop_body()
                self._breaks.attempts = self._breaks.failures + 1
                failure = self._backend.translate(error, self._uri, "read", self._breaks.attempts)
                failure = StorageError(
                    self._uri,
                    "read",
                    f"stream broke at byte {self._pos} of {self._size} ({failure.reason})",
                    transient=True,
                    attempts=failure.attempts,
                )
                self._breaks.retry_or_raise(failure, error)
        return b""

    @property
    def size(self) -> int:
        """The object's size in bytes, from the first response."""
        return self._size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._read(len(view))
        view[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        chunks = []
        while chunk := self._read(READ_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._drop_body()
        super().close()
