"""How S3 failures read: botocore's exceptions translated into `StorageError`s with a hint.

Auth failures and missing objects or buckets say what to check and are never retried;
throttling, 5xx and connection failures are `transient` (retryable). Messages never carry a
credential: anything a server echoes is scrubbed with the settings' secrets.
"""

from __future__ import annotations

import botocore.exceptions as bce

from pipeline.storage.errors import StorageAuthError, StorageError, StorageNotFoundError
from pipeline.storage.settings import StorageSettings
from pipeline.storage.uris import S3_PREFIX, split_s3

_CHECK_CREDENTIALS = (
    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the profile's keys) and the endpoint URL"
)
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
TRANSIENT_CODES = {
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "TooManyRequests",
    "500",
    "502",
    "503",
    "504",
    "BadGateway",
    "GatewayTimeout",
}
TRANSIENT_CLIENT_ERRORS = (
    bce.EndpointConnectionError,
    bce.ConnectionClosedError,
    bce.ConnectTimeoutError,
    bce.ReadTimeoutError,
    bce.ProxyConnectionError,
    bce.ResponseStreamingError,
    bce.IncompleteReadError,
    bce.HTTPClientError,
)
# Raised while reading a response body, after botocore's retries are over.
STREAM_ERRORS = (
    bce.ResponseStreamingError,
    bce.IncompleteReadError,
    bce.ReadTimeoutError,
    bce.ConnectionClosedError,
    ConnectionError,
    TimeoutError,
)


def scrub(text: str, settings: StorageSettings) -> str:
    """`text` with every credential of `settings` replaced by ***."""
    for secret in settings.secrets():
        text = text.replace(secret, "***")
    return text


def translate(
    error: BaseException, uri: str, operation: str, settings: StorageSettings, attempts: int = 1
) -> StorageError:
    """A boto/botocore exception as a StorageError with a hint and no secrets."""
    cause = boto_cause(error)
    where = f" at {settings.endpoint_url}" if settings.endpoint_url else ""
    if isinstance(cause, bce.ClientError):
        err = cause.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        server_msg = scrub(str(err.get("Message") or "").strip(), settings)
        detail = f" [{server_msg}]" if server_msg and server_msg not in (code,) else ""
        if code in AUTH_HINTS or status == 403:
            hint = AUTH_HINTS.get(code, AUTH_HINTS["403"])
            return StorageAuthError(uri, operation, f"{code}: {hint}{where}")
        if code == "PreconditionFailed" or status == 412:
            return StorageError(
                uri,
                operation,
                "the object changed while it was being read "
                "(its ETag no longer matches); read it again",
            )
        if code in NOT_FOUND_CODES or status == 404:
            if code == "NoSuchBucket":
                bucket = split_s3(uri)[0] if uri.startswith(S3_PREFIX) else "?"
                return StorageNotFoundError(
                    uri, operation, f"bucket {bucket!r} does not exist{where}"
                )
            return StorageNotFoundError(uri, operation, f"no such object ({code})")
        transient = code in TRANSIENT_CODES or (status or 0) >= 500
        return StorageError(
            uri, operation, f"{code}{detail}", transient=transient, attempts=attempts
        )
    if isinstance(cause, (bce.NoCredentialsError, bce.PartialCredentialsError)):
        return StorageAuthError(
            uri,
            operation,
            "no usable credentials found: set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile",
        )
    if isinstance(cause, bce.EndpointConnectionError):
        return StorageError(
            uri,
            operation,
            f"could not connect to the endpoint{where or ' (AWS)'}:"
            " is the service running and the endpoint URL right?",
            transient=True,
            attempts=attempts,
        )
    if isinstance(cause, TRANSIENT_CLIENT_ERRORS + STREAM_ERRORS):
        return StorageError(
            uri,
            operation,
            scrub(f"{type(cause).__name__}: {cause}", settings),
            transient=True,
            attempts=attempts,
        )
    return StorageError(uri, operation, scrub(f"{type(cause).__name__}: {cause}", settings))


def boto_cause(error: BaseException) -> BaseException:
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


def precondition_failed(error: StorageError) -> bool:
    """True when a conditional write was refused (the object exists, or changed)."""
    cause = boto_cause(error.__cause__) if error.__cause__ is not None else None
    if isinstance(cause, bce.ClientError):
        response = cause.response
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        # 409 ConditionalRequestConflict: AWS's answer to two conditional writes at once
        return code in {"PreconditionFailed", "ConditionalRequestConflict"} or status in {412, 409}
    return False
