"""Conditional writes on a local disk, with the meaning S3's If-None-Match / If-Match have.

`create_exclusive` publishes a complete temp file with `os.link`, which fails when the name
exists: a reader never sees a half-written object, and of two creators exactly one wins.
`replace_if` compares and replaces under an `fcntl` lock on the object's folder (no lock file
is left behind), so two drivers on one machine (or on a shared POSIX file system with working
locks) cannot both replace the same version. A version is the file's (inode, mtime_ns, size): every publish
is a new inode.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import suppress

from pipeline.storage.errors import StorageNotFoundError
from pipeline.storage.local import FILE_MODE, _guarded, file_version
from pipeline.storage.uris import local_path


def _temp_beside(path: str, data: bytes) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def create_exclusive(uri: str, data: bytes) -> str | None:
    path = local_path(uri)

    def create() -> str | None:
        tmp = _temp_beside(path, data)
        try:
            os.link(tmp, path)
            return file_version(os.stat(tmp))  # the same inode
        except FileExistsError:
            return None
        finally:
            os.unlink(tmp)

    return _guarded(uri, "create", create)


def read_versioned(uri: str) -> tuple[bytes, str]:
    path = local_path(uri)

    def read() -> tuple[bytes, str]:
        with open(path, "rb") as source:
            return source.read(), file_version(os.fstat(source.fileno()))

    return _guarded(uri, "read", read)


def replace_if(uri: str, data: bytes, version: str) -> str | None:
    path = local_path(uri)

    def replace() -> str | None:
        tmp = _temp_beside(path, data)
        try:
            folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                fcntl.flock(folder, fcntl.LOCK_EX)  # released when closed
                try:
                    current = file_version(os.stat(path))
                except FileNotFoundError:
                    return None
                if current != version:
                    return None
                new_version = file_version(os.stat(tmp))
                os.replace(tmp, path)
                return new_version
            finally:
                os.close(folder)
        finally:
            with suppress(FileNotFoundError):
                os.unlink(tmp)

    try:
        return _guarded(uri, "replace", replace)
    except StorageNotFoundError:
        return None
