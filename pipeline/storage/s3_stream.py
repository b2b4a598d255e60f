"""A download stream over one S3 object that resumes where a broken connection left it.

botocore retries a request until its response starts; a body that breaks afterwards
(connection reset, read timeout, short body) surfaces while the caller reads. This reader
reopens the object at the byte it reached, with a ranged GET pinned to the first response's
ETag, after a full-jitter exponential backoff, so long downloads (tar shards, LoRA files)
survive flaky networks without starting over.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import time
from typing import TYPE_CHECKING, Any

import botocore.exceptions as bce

from pipeline.storage.errors import StorageError
from pipeline.storage.uris import split_s3

if TYPE_CHECKING:
    from pipeline.storage.s3 import S3Backend

log = logging.getLogger(__name__)

READ_CHUNK = 8 * 1024 * 1024
MAX_BREAKS_PER_ATTEMPT = 10  # a stream may break 10 x max_attempts times if each retry progresses

# Raised while reading a response body, after botocore's retries are over.
STREAM_ERRORS = (bce.ResponseStreamingError, bce.IncompleteReadError, bce.ReadTimeoutError,
                 bce.ConnectionClosedError, ConnectionError, TimeoutError)


def backoff_delay(failure: int, base_s: float, cap_s: float = 20.0) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(failure-1))]."""
    return random.uniform(0.0, min(cap_s, base_s * 2 ** max(failure - 1, 0)))


class S3ObjectReader(io.RawIOBase):
    """A read-only stream over one object that survives broken connections.

    Reads stream from one GET; when the body breaks mid-way, the reader reopens it from the
    byte it reached with a ranged GET pinned to the first response's ETag (so a concurrent
    overwrite is detected, not silently spliced), after a jittered exponential backoff. It gives
    up after `max_attempts` consecutive breaks without progress (bytes received reset the
    count), or after 10 x `max_attempts` breaks in all.
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
        self._breaks = 0  # stream breaks over the reader's life, progress or not
        self._open()

    def _open(self) -> None:
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": self._key}
        if self._etag is not None:
            kwargs.update(Range=f"bytes={self._pos}-", IfMatch=self._etag)
        response = self._backend.call(self._uri, "read", self._backend.client().get_object, **kwargs)
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
        failures = 0
        while self._pos < self._size:
            try:
                if self._body is None:
                    self._open()
                data = self._body.read(amount)
                if not data:
                    raise bce.IncompleteReadError(actual_bytes=self._pos,
                                                  expected_bytes=self._size)
                self._pos += len(data)
                return data
            except STREAM_ERRORS as error:
                self._drop_body()
                failures += 1
                self._breaks += 1
                limit = self._backend.settings.max_attempts
                if failures >= limit or self._breaks >= limit * MAX_BREAKS_PER_ATTEMPT:
                    raise self._backend.translate(error, self._uri, "read", failures) from error
                delay = backoff_delay(failures, self._backend.settings.retry_base_delay_s)
                log.warning("storage read %s: stream broke at byte %d of %d (%s); retrying in "
                            "%.2fs (attempt %d/%d)", self._uri, self._pos, self._size,
                            type(error).__name__, delay, failures + 1,
                            self._backend.settings.max_attempts)
                time.sleep(delay)
        return b""

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
