"""Storage errors: one family, each naming the URI, the operation and what to check.

`StorageError` is what callers catch. Two subclasses say "do not retry, fix something":
`StorageNotFoundError` (missing object, file or bucket; also a `FileNotFoundError`) and
`StorageAuthError` (wrong, missing or insufficient credentials; also a `PermissionError`).
`transient` is True when the failure was a retryable one (5xx, SlowDown, connection, timeout)
that persisted through every attempt. Messages never contain credentials.
"""

from __future__ import annotations


class StorageError(OSError):
    """`operation` on `uri` failed: `reason` says why and, where it can, what to check."""

    def __init__(
        self, uri: str, operation: str, reason: str, *, transient: bool = False, attempts: int = 1
    ):
        message = f"storage {operation} {uri}: {reason}"
        if transient:
            message += f" (gave up after {attempts} attempt{'s' if attempts != 1 else ''})"
        super().__init__(message)
        self.uri = uri
        self.operation = operation
        self.reason = reason
        self.transient = transient
        self.attempts = attempts

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):  # keep keyword fields across pickling (Ray ships errors to the driver)
        return (
            _rebuild,
            (type(self), self.uri, self.operation, self.reason, self.transient, self.attempts),
        )


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The object, file or bucket does not exist."""


class StorageAuthError(StorageError, PermissionError):
    """The service refused the credentials, or they may not do this."""


class StorageTooLargeError(StorageError):
    """The object is larger than the caller's budget for it; nothing past the budget was read."""


class StorageSpecialFileError(StorageError):
    """A local path names a device, FIFO, socket or kernel file (/dev, /proc, /sys), not data."""


def _rebuild(
    cls: type[StorageError], uri: str, operation: str, reason: str, transient: bool, attempts: int
) -> StorageError:
    return cls(uri, operation, reason, transient=transient, attempts=attempts)
