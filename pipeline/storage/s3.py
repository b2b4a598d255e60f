"""S3 side of `Storage`: boto3 and pyarrow clients built from one `StorageSettings`.

Retries happen at two levels:
- every HTTP request goes through botocore's "standard" retry mode (5xx, SlowDown,
  InternalError, throttling, connection errors and timeouts; exponential backoff with jitter)
  up to `max_attempts`; the part uploads of a multipart upload are such requests too;
- a download stream that breaks after its request succeeded (connection reset or timeout
  mid-body, short body) is something botocore cannot retry: `S3ObjectReader`
  (`s3_stream.py`) resumes it with our own backoff.
Then the error surfaces as a `StorageError` with `transient=True` and the number of attempts.
Auth failures and missing objects or buckets are never retried and say what to check.

Clients are created lazily, once per process (and rebuilt after a fork), so `Storage` can be
pickled into Ray actors. This module is the only place in restyle that opens boto3 clients.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import boto3
import botocore.exceptions as bce
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from pipeline.storage.errors import StorageAuthError, StorageError, StorageNotFoundError
from pipeline.storage.s3_stream import STREAM_ERRORS, S3ObjectReader
from pipeline.storage.settings import StorageSettings
from pipeline.storage.uris import S3_PREFIX, split_s3

T = TypeVar("T")

DEFAULT_REGION = "us-east-1"

_CHECK_CREDENTIALS = ("check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the profile's keys) "
                      "and the endpoint URL")
AUTH_HINTS = {
    "InvalidAccessKeyId": "the access key id is not known to the service; " + _CHECK_CREDENTIALS,
    "SignatureDoesNotMatch": "the request signature does not match: the secret access key is "
                             "wrong for this access key id; " + _CHECK_CREDENTIALS,
    "AccessDenied": "access denied: check that the credentials may perform this operation on "
                    "this bucket/key",
    "403": "access denied (HTTP 403): check the credentials and their permissions (S3 also "
           "answers 403 for a missing key when s3:ListBucket is not granted)",
    "ExpiredToken": "the session token has expired: refresh the credentials",
    "InvalidToken": "the session token is invalid: check AWS_SESSION_TOKEN",
    "TokenRefreshRequired": "the session token must be refreshed",
    "AuthorizationHeaderMalformed": "the authorization header is malformed: check the region",
    "AllAccessDisabled": "all access to this object has been disabled",
}
NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound", "NoSuchUpload"}
TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                   "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests",
                   "500", "502", "503", "504", "BadGateway", "GatewayTimeout"}
TRANSIENT_CLIENT_ERRORS = (bce.EndpointConnectionError, bce.ConnectionClosedError,
                           bce.ConnectTimeoutError, bce.ReadTimeoutError, bce.ProxyConnectionError,
                           bce.ResponseStreamingError, bce.IncompleteReadError,
                           bce.HTTPClientError)


class S3Backend:
    """boto3/pyarrow access for one `StorageSettings`; safe to share between threads."""

    def __init__(self, settings: StorageSettings):
        self.settings = settings
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._client: Any = None
        self._arrow_fs: Any = None
        self._attempts = threading.local()

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
            raise StorageError(S3_PREFIX, "connect", f"AWS profile {self.settings.profile!r} not "
                               "found in the AWS config/credentials files") from None

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
            max_pool_connections=max(10, s.max_concurrency * 2),
            # Only send/verify checksums S3 requires: several S3-compatible services reject the
            # CRC headers boto3 adds by default since 1.36.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        client = session.client("s3", endpoint_url=s.endpoint_url, config=config)
        client.meta.events.register("before-send.s3", self._count_attempt)
        return client

    def _count_attempt(self, **_: Any) -> None:
        self._attempts.count = getattr(self._attempts, "count", 0) + 1

    def transfer_config(self) -> TransferConfig:
        s = self.settings
        return TransferConfig(multipart_threshold=s.multipart_threshold_bytes,
                              multipart_chunksize=s.multipart_chunk_bytes,
                              max_concurrency=s.max_concurrency, use_threads=True)

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
                    retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=s.max_attempts),
                )
                creds = session.get_credentials()
                # Static keys are handed over; refreshable ones (instance roles, web identity)
                # are left to pyarrow's own default chain, which refreshes them itself.
                if creds is not None and creds.method in {"explicit", "env", "shared-credentials-file",
                                                          "config-file"}:
                    frozen = creds.get_frozen_credentials()
                    kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key,
                                  session_token=frozen.token)
                self._arrow_fs = pafs.S3FileSystem(**kwargs)
            return self._arrow_fs

    # ------------------------------------------------------------------ errors
    def scrub(self, text: str) -> str:
        for secret in self.settings.secrets():
            text = text.replace(secret, "***")
        return text

    def translate(self, error: BaseException, uri: str, operation: str,
                  attempts: int = 1) -> StorageError:
        """A boto/botocore exception as a StorageError with a hint and no secrets."""
        cause = _boto_cause(error)
        where = f" at {self.settings.endpoint_url}" if self.settings.endpoint_url else ""
        if isinstance(cause, bce.ClientError):
            err = cause.response.get("Error", {})
            code = str(err.get("Code", "Unknown"))
            status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            server_msg = self.scrub(str(err.get("Message") or "").strip())
            detail = f" [{server_msg}]" if server_msg and server_msg not in (code,) else ""
            if code in AUTH_HINTS or status == 403:
                hint = AUTH_HINTS.get(code, AUTH_HINTS["403"])
                return StorageAuthError(uri, operation, f"{code}: {hint}{where}")
            if code == "PreconditionFailed" or status == 412:
                return StorageError(uri, operation, "the object changed while it was being read "
                                    "(its ETag no longer matches); read it again")
            if code in NOT_FOUND_CODES or status == 404:
                if code == "NoSuchBucket":
                    bucket = split_s3(uri)[0] if uri.startswith(S3_PREFIX) else "?"
                    return StorageNotFoundError(uri, operation,
                                                f"bucket {bucket!r} does not exist{where}")
                return StorageNotFoundError(uri, operation, f"no such object ({code})")
            transient = code in TRANSIENT_CODES or (status or 0) >= 500
            return StorageError(uri, operation, f"{code}{detail}", transient=transient,
                                attempts=attempts)
        if isinstance(cause, (bce.NoCredentialsError, bce.PartialCredentialsError)):
            return StorageAuthError(uri, operation, "no usable credentials found: set "
                                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile")
        if isinstance(cause, bce.EndpointConnectionError):
            return StorageError(uri, operation, f"could not connect to the endpoint{where or ' (AWS)'}:"
                                " is the service running and the endpoint URL right?",
                                transient=True, attempts=attempts)
        if isinstance(cause, TRANSIENT_CLIENT_ERRORS + STREAM_ERRORS):
            return StorageError(uri, operation, self.scrub(f"{type(cause).__name__}: {cause}"),
                                transient=True, attempts=attempts)
        return StorageError(uri, operation, self.scrub(f"{type(cause).__name__}: {cause}"))

    def call(self, uri: str, operation: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one boto3 call (botocore retries it) and translate its failure."""
        self._attempts.count = 0
        try:
            return fn(*args, **kwargs)
        except (bce.BotoCoreError, bce.ClientError, S3UploadFailedError) as error:
            raise self.translate(error, uri, operation, self._attempts_of(error)) from error

    def _attempts_of(self, error: BaseException) -> int:
        """HTTP attempts behind a failed call: the response's retry count when there is one,
        else the attempts counted on this thread, else botocore's maximum (the failing request
        ran on a transfer thread, and botocore gives up only after its last attempt)."""
        cause = _boto_cause(error)
        if isinstance(cause, bce.ClientError):
            retries = cause.response.get("ResponseMetadata", {}).get("RetryAttempts")
            if retries is not None:
                return int(retries) + 1
        return getattr(self._attempts, "count", 0) or self.settings.max_attempts

    # ------------------------------------------------------------------ operations
    def open_read(self, uri: str) -> io.BufferedReader:
        return io.BufferedReader(S3ObjectReader(self, uri), buffer_size=1024 * 1024)

    def read_bytes(self, uri: str) -> bytes:
        with S3ObjectReader(self, uri) as reader:
            return reader.readall()

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = split_s3(uri)
        client = self.client()
        if len(data) <= self.settings.multipart_threshold_bytes:
            self.call(uri, "write", client.put_object, Bucket=bucket, Key=key, Body=data)
        else:
            self.call(uri, "write", client.upload_fileobj, io.BytesIO(data), bucket, key,
                      Config=self.transfer_config())

    def upload_file(self, uri: str, source: str) -> None:
        bucket, key = split_s3(uri)
        if not os.path.isfile(source):
            raise StorageNotFoundError(source, "upload", f"local source file to upload to {uri} "
                                       "does not exist")
        self.call(uri, "upload", self.client().upload_file, source, bucket, key,
                  Config=self.transfer_config())

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
        uri = f"{S3_PREFIX}{bucket}/{prefix}"
        paginator = self.client().get_paginator("list_objects_v2")
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        pages = iter(paginator.paginate(**kwargs))
        while True:
            page = self.call(uri, "list", next, pages, None)
            if page is None:
                return
            for entry in page.get("Contents", []):
                yield entry["Key"]


def _boto_cause(error: BaseException) -> BaseException:
    """The botocore error behind a boto3 wrapper (S3UploadFailedError chains it)."""
    seen = error
    for _ in range(5):
        if isinstance(seen, (bce.ClientError, bce.BotoCoreError)):
            return seen
        nxt = seen.__cause__ or seen.__context__
        if nxt is None:
            break
        seen = nxt
    return error
