"""Storage settings: where the S3-compatible service is and how every client talks to it.

One `StorageSettings` object is mapped onto boto3 (objects, listings, multipart uploads) and
pyarrow's S3 filesystem (Parquet reads), so both always see the same endpoint, region,
addressing style, retries and credentials. It is picklable and travels to Ray actors; clients
are built from it lazily in each process.

Credentials are held in a `StaticCredentials` object whose repr/str is redacted and which is not
a dataclass, so `repr(settings)`, `dataclasses.asdict(settings)` + `json.dumps(default=str)`,
`public_dict()` and log lines never show a key. When no explicit credentials are given, boto3's
standard chain (profile, instance role, web identity, ...) is used in each process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

MiB = 1024 * 1024
DEFAULT_RETRY_BUDGET_S = 300.0
RETRY_BUDGET_ENV = "RESTYLE_STORAGE_RETRY_BUDGET"  # what `--storage-retry-budget` reads
MULTIPART_THRESHOLD_ENV = "RESTYLE_S3_MULTIPART_THRESHOLD"  # bytes; smaller uploads are one PUT
# Settings an operator tunes through the environment: variable -> (field, type, unit).
NUMERIC_ENV: dict[str, tuple[str, type, str]] = {
    RETRY_BUDGET_ENV: ("retry_budget_s", float, "a number of seconds"),
    MULTIPART_THRESHOLD_ENV: ("multipart_threshold_bytes", int, "a whole number of bytes"),
}


class StaticCredentials:
    """An access key pair (plus optional session token) that never prints itself."""

    __slots__ = ("access_key_id", "secret_access_key", "session_token")

    def __init__(
        self, access_key_id: str, secret_access_key: str, session_token: str | None = None
    ):
        if not access_key_id or not secret_access_key:
            raise ValueError(
                "StaticCredentials needs both an access key id and a secret access key"
            )
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.session_token = session_token or None

    def secrets(self) -> list[str]:
        """Every credential string, for scrubbing messages that might echo one."""
        return [s for s in (self.access_key_id, self.secret_access_key, self.session_token) if s]

    def __repr__(self) -> str:
        return "StaticCredentials(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StaticCredentials):
            return NotImplemented
        return (self.access_key_id, self.secret_access_key, self.session_token) == (
            other.access_key_id,
            other.secret_access_key,
            other.session_token,
        )

    def __hash__(self) -> int:
        return hash((self.access_key_id, self.secret_access_key, self.session_token))

    def __getstate__(self) -> tuple[str, str, str | None]:
        return self.access_key_id, self.secret_access_key, self.session_token

    def __setstate__(self, state: tuple[str, str, str | None]) -> None:
        self.access_key_id, self.secret_access_key, self.session_token = state


@dataclass(frozen=True)
class StorageSettings:
    """How to reach S3-compatible storage; local paths need none of it.

    - endpoint_url: "http(s)://host:port" of an S3-compatible service (None = AWS).
    - region: signing region (None = the profile's, else "us-east-1").
    - profile: a named AWS profile for credentials/region (None = the default chain).
    - path_style: "endpoint/bucket/key" addressing (what MinIO/SeaweedFS/most gateways want);
      False = virtual-hosted "bucket.endpoint/key".
    - max_attempts: HTTP attempts of one request inside botocore's "standard" retries (a
      burst of quick retries), and the fewest tries of an interrupted download stream.
    - retry_budget_s: how long one storage operation keeps retrying transient failures (5xx,
      SlowDown, connection errors, timeouts) before it fails: an outage shorter than this
      costs nothing (`pipeline.storage.retry`). 0 = only the `max_attempts` burst.
    - connect_timeout_s / read_timeout_s: per request.
    - retry_base_delay_s / retry_cap_s: our exponential backoff with full jitter between
      retries (the first up to base, doubling to at most cap).
    - multipart_threshold_bytes / multipart_chunk_bytes: uploads above the threshold go as a
      multipart upload in chunks of this size, published whole by the final Complete call
      (an object written whole from memory under S3's 5 MiB smallest part is always one PUT).
    - max_concurrency: HTTP connection pool size and parallel parts per upload.
    - credentials: explicit keys (else the standard chain); never printed.
    """

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    path_style: bool = True
    max_attempts: int = 5
    retry_budget_s: float = DEFAULT_RETRY_BUDGET_S
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    retry_base_delay_s: float = 0.5
    retry_cap_s: float = 30.0
    multipart_threshold_bytes: int = 64 * MiB
    multipart_chunk_bytes: int = 64 * MiB
    max_concurrency: int = 8
    credentials: StaticCredentials | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.endpoint_url is not None:
            parts = urlsplit(self.endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"storage endpoint_url must look like http(s)://host[:port], "
                    f"got {_without_userinfo(self.endpoint_url)!r}"
                )
            if parts.username or parts.password:
                raise ValueError(
                    "storage endpoint_url must not carry credentials; use "
                    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile"
                )
        if self.max_attempts < 1:
            raise ValueError(f"storage max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("connect_timeout_s", "read_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"storage {name} must be > 0, got {getattr(self, name)}")
        for name in ("retry_base_delay_s", "retry_cap_s", "retry_budget_s"):
            if not getattr(self, name) >= 0:  # NaN fails too
                raise ValueError(f"storage {name} must be >= 0, got {getattr(self, name)}")
        if self.multipart_chunk_bytes < 5 * MiB:
            raise ValueError(
                "storage multipart_chunk_bytes must be >= 5 MiB (the S3 minimum part size)"
            )
        if self.multipart_threshold_bytes < 1 or self.max_concurrency < 1:
            raise ValueError("storage multipart_threshold_bytes and max_concurrency must be >= 1")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> StorageSettings:
        """Settings from the standard AWS environment variables, then `overrides` (non-None).

        Reads AWS_ENDPOINT_URL_S3 (else AWS_ENDPOINT_URL), AWS_REGION (else AWS_DEFAULT_REGION),
        AWS_PROFILE, AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN), and
        RESTYLE_STORAGE_RETRY_BUDGET (seconds, like `--storage-retry-budget`) and
        RESTYLE_S3_MULTIPART_THRESHOLD (bytes: larger uploads go in parts). Keys
        found here are captured so they travel with the settings to workers whose environment
        lacks them; without them, each process uses boto3's standard chain.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "endpoint_url": env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            "profile": env.get("AWS_PROFILE") or None,
        }
        for variable, (name, kind, unit) in NUMERIC_ENV.items():
            if text := env.get(variable):
                try:
                    values[name] = kind(text)
                except ValueError:
                    raise ValueError(f"{variable} must be {unit}, got {text!r}") from None
        key_id, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if bool(key_id) != bool(secret):
            present, missing = (
                ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
                if key_id
                else ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
            )
            raise ValueError(f"{present} is set but {missing} is not; set both or neither")
        if key_id and secret:
            values["credentials"] = StaticCredentials(key_id, secret, env.get("AWS_SESSION_TOKEN"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown storage setting(s): {', '.join(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_credentials(
        self, access_key_id: str, secret_access_key: str, session_token: str | None = None
    ) -> StorageSettings:
        return replace(
            self, credentials=StaticCredentials(access_key_id, secret_access_key, session_token)
        )

    @property
    def credentials_source(self) -> str:
        """Where credentials come from, in words safe to log."""
        if self.credentials is not None:
            return "explicit keys"
        if self.profile:
            return f"profile {self.profile!r}"
        return "default AWS chain"

    def secrets(self) -> list[str]:
        return self.credentials.secrets() if self.credentials else []

    def public_dict(self) -> dict[str, Any]:
        """Everything but the credentials, for run.json and logs."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "credentials"}
        data["credentials"] = self.credentials_source
        return data

    to_dict = public_dict


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=host).geturl()
    return url
