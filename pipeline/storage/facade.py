"""`Storage`: one interface over local paths and s3:// URIs, used by all of restyle.

Every reader and writer in the project goes through it, so local runs and S3 runs share one
code path and one error vocabulary (`StorageError` and subclasses). It is cheap to construct,
picklable (only the settings travel; clients are rebuilt lazily in each process) and
thread-safe.
"""

from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from pipeline.storage import local, local_conditional
from pipeline.storage.concurrent import map_bounded
from pipeline.storage.errors import (
    StorageAuthError,
    StorageError,
    StorageNotFoundError,
    StorageTooLargeError,
)
from pipeline.storage.settings import StorageSettings
from pipeline.storage.uris import (
    S3_PREFIX,
    check_supported,
    expand_braces,
    has_wildcards,
    is_s3,
    join,
    listing_prefix,
    local_path,
    parent,
    resolve,
    split_s3,
    wildcard_regex,
)

if TYPE_CHECKING:
    from pipeline.storage.s3 import S3Backend

# How pyarrow's S3 filesystem words refused credentials (it raises plain OSErrors).
ARROW_AUTH_MARKERS = (
    "ACCESS_DENIED",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "INVALID_ACCESS_KEY_ID",
    "SIGNATURE_DOES_NOT_MATCH",
)


class Storage:
    """Read, write, list and glob objects at local paths or s3:// URIs.

    Writes publish whole objects: a reader sees the old object or the new one, never a mix
    (local: temp file + os.replace; S3: one PUT, or a multipart upload completed at the end).
    `list` and `glob` return sorted full URIs of objects (files), never folders.
    """

    def __init__(self, settings: StorageSettings | None = None):
        """`settings=None` reads them from the standard AWS environment variables."""
        self.settings = settings if settings is not None else StorageSettings.from_env()
        self._s3_backend: S3Backend | None = None
        self._s3_lock = threading.Lock()

    @property
    def _s3(self) -> S3Backend:
        """The S3 backend, made (and boto3 imported) on first use: a run that only touches
        local paths never needs boto3 installed (the GPU device check relies on it)."""
        with self._s3_lock:
            if self._s3_backend is None:
                from pipeline.storage.s3 import S3Backend

                self._s3_backend = S3Backend(self.settings)
            return self._s3_backend

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.settings = state["settings"]
        self._s3_backend = None
        self._s3_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Storage({self.settings!r})"

    # ------------------------------------------------------------------ objects
    def read_bytes(self, uri: str, max_bytes: int | None = None) -> bytes:
        """The whole object; with `max_bytes`, an object larger than that raises
        `StorageTooLargeError` after reading at most one byte past the budget. Local devices,
        FIFOs and kernel files are refused (`StorageSpecialFileError`)."""
        if self._remote(uri):
            data = self._s3.read_bytes(uri, max_bytes)
        else:
            data = local.read_bytes(uri, max_bytes)
        if max_bytes is not None and len(data) > max_bytes:
            raise StorageTooLargeError(
                uri, "read", f"larger than the {max_bytes}-byte budget for this object"
            )
        return data

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Create or replace the object with `data`, published whole."""
        if self._remote(uri):
            self._s3.write_bytes(uri, bytes(data))
        else:
            local.write_bytes(uri, data)

    def upload_file(self, uri: str, local_source: str | os.PathLike[str]) -> None:
        """Copy a local file to `uri` (multipart above the threshold), published whole."""
        source = os.fspath(local_source)
        if self._remote(uri):
            self._s3.upload_file(uri, source)
        else:
            local.upload_file(uri, source)

    def download_file(self, uri: str, local_target: str | os.PathLike[str]) -> None:
        """Copy the object at `uri` into a local file. On S3 a big object comes down as
        parallel ranged GETs (many streams, not one), for weights that must reach a new node
        fast; the file appears at `local_target` only when complete."""
        target = os.fspath(local_target)
        if self._remote(uri):
            self._s3.download_file(uri, target)
        else:
            local.download_file(uri, target)

    def open_read(self, uri: str) -> BinaryIO:
        """A streaming binary file object (use it as a context manager). On S3 it resumes a
        broken download where it stopped; it does not seek."""
        return self._s3.open_read(uri) if self._remote(uri) else local.open_read(uri)

    def exists(self, uri: str) -> bool:
        """True when an object (file) is at `uri`. Missing buckets read as False; credential
        problems raise `StorageAuthError`."""
        return self._s3.exists(uri) if self._remote(uri) else local.exists(uri)

    def size(self, uri: str) -> int:
        """Size in bytes; `StorageNotFoundError` when absent."""
        return self._s3.size(uri) if self._remote(uri) else local.size(uri)

    def delete(self, uri: str) -> None:
        """Remove the object; removing a missing object is not an error."""
        if self._remote(uri):
            self._s3.delete(uri)
        else:
            local.delete(uri)

    def abort_uploads(self, prefix: str) -> int:
        """Abort the multipart uploads left open under the key prefix `prefix` (a writer killed
        mid-upload leaves one on S3: invisible to listings, its parts stored and billed until
        aborted); returns how many. Local paths have no such thing: 0."""
        if not self._remote(prefix):
            return 0
        from pipeline.storage.s3_uploads import abort_uploads

        return abort_uploads(self._s3, prefix)

    # ------------------------------------------------------------------ conditional writes
    def create_exclusive(self, uri: str, data: bytes) -> str | None:
        """Create the object with `data` only if nothing is at `uri` (S3: If-None-Match: *;
        local: a complete temp file linked into place): its version, or None when something
        is there. Of two creators exactly one gets a version."""
        if self._remote(uri):
            from pipeline.storage import s3_conditional

            return s3_conditional.create_exclusive(self._s3, uri, bytes(data))
        return local_conditional.create_exclusive(uri, data)

    def read_versioned(self, uri: str) -> tuple[bytes, str]:
        """(content, version) of an object, for `replace_if` (S3: the ETag)."""
        if self._remote(uri):
            from pipeline.storage import s3_conditional

            return s3_conditional.read_versioned(self._s3, uri)
        return local_conditional.read_versioned(uri)

    def replace_if(self, uri: str, data: bytes, version: str) -> str | None:
        """Replace the object with `data` only if it is still `version` (S3: If-Match; local:
        compared and replaced under a file lock): the new version, or None when it changed or
        is gone."""
        if self._remote(uri):
            from pipeline.storage import s3_conditional

            return s3_conditional.replace_if(self._s3, uri, bytes(data), version)
        return local_conditional.replace_if(uri, data, version)

    # ------------------------------------------------------------------ listing
    def list(self, prefix: str, recursive: bool = True) -> list[str]:
        """Sorted full URIs of every object below the folder `prefix` (recursively, or only
        the folder's own objects with `recursive=False`: on S3 one delimited listing that does
        not page through sub-folders).

        "s3://b/run" and "s3://b/run/" both list the folder run/, not "run-old/...".
        """
        if not self._remote(prefix):
            return local.list_files(os.fspath(prefix), recursive)
        bucket, key = split_s3(prefix)
        folder = key if not key or key.endswith("/") else key + "/"
        keys = self._s3.iter_keys(bucket, folder, delimiter=None if recursive else "/")
        return sorted(f"{S3_PREFIX}{bucket}/{k}" for k in keys)

    def list_versioned(
        self, prefix: str, recursive: bool = True, cuts: Sequence[str] = ()
    ) -> builtins.list[tuple[str, str]]:
        """`list`, with each object's version beside its URI, at no extra request: S3's
        listing carries the ETag; a local file's version is (inode, mtime_ns, size). The
        versions are those `read_versioned` returns, so a cache keyed by them can tell an
        unchanged object from a rewritten one without reading it.

        `cuts` (names inside the folder) cut an S3 listing into the ranges (.., c1],
        (c1, c2], ..., (ck, ..), listed concurrently: the same objects, but 3x10^5 objects
        cut in 20 ranges are ~16 pages in sequence instead of 300 (each range's last page
        runs past its end: cut no finer than ~10 pages a range)."""
        if not self._remote(prefix):
            return local.list_versioned(os.fspath(prefix), recursive)
        bucket, key = split_s3(prefix)
        folder = key if not key or key.endswith("/") else key + "/"
        delimiter = None if recursive else "/"
        bounds = [folder + cut for cut in sorted(set(cuts))]
        ranges = list(zip([None, *bounds], [*bounds, None], strict=True))

        def entries(bounds: tuple[str | None, str | None]) -> builtins.list[tuple[str, str]]:
            after, last = bounds
            return builtins.list(self._s3.iter_entries(bucket, folder, delimiter, after, last))

        parts = map_bounded(entries, ranges) if len(ranges) > 1 else map(entries, ranges)
        found = [entry for part in parts for entry in part]
        return sorted((f"{S3_PREFIX}{bucket}/{k}", etag) for k, etag in found)

    def glob(self, pattern: str) -> builtins.list[str]:
        """Sorted, de-duplicated URIs of objects matching `pattern`.

        Braces expand first (`part-{000000..000099}.tar`, `{train,val}`); then each pattern
        with `*`, `?`, `[...]` (one path segment) or `**` (any depth) is matched against a
        listing, and a pattern without wildcards matches when that object exists. On S3 each
        distinct folder is listed once, however many patterns the braces produced.
        """
        pattern = os.fspath(pattern)
        check_supported(pattern)
        patterns = expand_braces(pattern)
        if not self._remote(pattern):
            found: set[str] = set()
            for p in patterns:
                if has_wildcards(p):
                    found.update(local.glob_files(p))
                elif local.exists(p):
                    found.add(p)
            return sorted(found)
        return self._glob_s3(patterns)

    def _glob_s3(self, patterns: builtins.list[str]) -> builtins.list[str]:
        by_folder: dict[tuple[str, str, bool], builtins.list[str]] = {}
        for p in patterns:
            bucket, key = split_s3(p)
            folder = listing_prefix(key) if has_wildcards(key) else key[: key.rfind("/") + 1]
            rest = key[len(folder) :]
            deep = "/" in rest or "**" in rest
            by_folder.setdefault((bucket, folder, deep), []).append(key)
        found: set[str] = set()
        for (bucket, folder, deep), keys in by_folder.items():
            literal = {k for k in keys if not has_wildcards(k)}
            regexes = [wildcard_regex(k) for k in keys if has_wildcards(k)]
            for key in self._s3.iter_keys(bucket, folder, delimiter=None if deep else "/"):
                if key in literal or any(r.match(key) for r in regexes):
                    found.add(f"{S3_PREFIX}{bucket}/{key}")
        return sorted(found)

    # ------------------------------------------------------------------ URIs
    @staticmethod
    def join(base: str, *parts: str) -> str:
        return join(base, *parts)

    @staticmethod
    def parent(uri: str) -> str:
        return parent(uri)

    @staticmethod
    def resolve(ref: str, relative_to: str) -> str:
        """`ref` relative to the folder of the file `relative_to` (absolute refs unchanged)."""
        return resolve(ref, relative_to)

    @staticmethod
    def is_remote(uri: str) -> bool:
        return is_s3(uri)

    # ------------------------------------------------------------------ pyarrow
    def pyarrow_filesystem(self) -> Any:
        """pyarrow.fs.S3FileSystem configured from the same settings as every boto3 client."""
        return self._s3.pyarrow_filesystem()

    def arrow_location(self, uri: str) -> tuple[Any, str]:
        """(pyarrow filesystem, path inside it) for `uri`, for pyarrow/Ray Data readers."""
        from pyarrow import fs as pafs

        if self._remote(uri):
            bucket, key = split_s3(uri)
            return self.pyarrow_filesystem(), f"{bucket}/{key}"
        return pafs.LocalFileSystem(), os.path.abspath(local_path(uri))

    def arrow_error(self, uri: str, operation: str, error: OSError) -> StorageError:
        """A pyarrow filesystem OSError as a StorageError of the right kind, without secrets."""
        reason = str(error)
        for secret in self.settings.secrets():
            reason = reason.replace(secret, "***")
        if isinstance(error, FileNotFoundError):
            return StorageNotFoundError(uri, operation, "no such object or file")
        if isinstance(error, PermissionError) or any(
            marker in reason for marker in ARROW_AUTH_MARKERS
        ):
            return StorageAuthError(
                uri,
                operation,
                f"access denied: check the credentials "
                f"(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile) "
                f"and their permissions [{reason}]",
            )
        return StorageError(uri, operation, reason)

    def _remote(self, uri: str | os.PathLike[str]) -> bool:
        if isinstance(uri, os.PathLike):
            return False
        if not isinstance(uri, str):
            raise TypeError(f"storage URIs are str or paths, got {type(uri).__name__}: {uri!r}")
        check_supported(uri)
        return is_s3(uri)
