"""Storage for restyle: one abstraction over local paths and s3:// URIs.

    from pipeline.storage import Storage, StorageSettings
    storage = Storage(StorageSettings.from_env())
    storage.write_bytes("s3://bucket/run/part-000000.stats.json", data)

Modules: `settings` (what to connect to, credentials that never print), `errors` (the
`StorageError` family), `uris` (split/join/resolve/patterns), `local` and `s3` (the two
backends), `facade` (`Storage`, the only class callers need).
"""

from pipeline.storage.errors import (
    StorageAuthError,
    StorageError,
    StorageNotFoundError,
    StorageSpecialFileError,
    StorageTooLargeError,
)
from pipeline.storage.facade import Storage
from pipeline.storage.settings import StaticCredentials, StorageSettings
from pipeline.storage.uris import is_s3, join, parent, resolve, split_s3

__all__ = [
    "StaticCredentials",
    "Storage",
    "StorageAuthError",
    "StorageError",
    "StorageNotFoundError",
    "StorageSettings",
    "StorageSpecialFileError",
    "StorageTooLargeError",
    "is_s3",
    "join",
    "parent",
    "resolve",
    "split_s3",
]
