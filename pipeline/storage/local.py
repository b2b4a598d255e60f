"""Local-disk side of `Storage`: the same contract as S3, on a filesystem.

Writes publish whole files: data goes to a temporary file in the target folder, is flushed to
disk, then `os.replace`d over the final name, so a reader never sees half a file (the same
guarantee an S3 PUT or multipart Complete gives). A published file has the permissions an
ordinary `open()` would give it (0666 less the umask: 0644 under the usual 022), not the
temporary file's private 0600. OS errors become `StorageError`s that name the path and the
operation.
"""

from __future__ import annotations

import errno
import glob as globlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import BinaryIO, TypeVar

from pipeline.storage.errors import (
    StorageAuthError,
    StorageError,
    StorageNotFoundError,
    StorageSpecialFileError,
)
from pipeline.storage.uris import local_path

T = TypeVar("T")


def _process_umask() -> int:
    """The umask, read once at import (reading it means setting it: not done per write, where
    another thread could create a file in between)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_process_umask()


def _translate(uri: str, operation: str, error: OSError) -> StorageError:
    reason = error.strerror or str(error)
    if isinstance(error, FileNotFoundError) or error.errno == errno.ENOENT:
        return StorageNotFoundError(uri, operation, "no such file")
    if isinstance(error, PermissionError) or error.errno in (errno.EACCES, errno.EPERM):
        return StorageAuthError(
            uri, operation, f"permission denied ({reason}); check the file's owner and mode"
        )
    if isinstance(error, IsADirectoryError):
        return StorageError(uri, operation, "is a directory, not a file")
    return StorageError(uri, operation, f"{type(error).__name__}: {reason}")


def _guarded(uri: str, operation: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except StorageError:
        raise
    except OSError as error:
        raise _translate(uri, operation, error) from error


@contextmanager
def _publishing(uri: str) -> Iterator[BinaryIO]:
    """A temp file beside `uri` that replaces it on success and vanishes on failure."""
    path = local_path(uri)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes it 0600; the published file follows the umask
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


KERNEL_FOLDERS = ("/dev", "/proc", "/sys")  # files there are devices or live kernel state


def check_regular_file(uri: str, operation: str) -> str:
    """The path of `uri` when it is a regular file outside the kernel's folders; a device, FIFO,
    socket or /proc file is refused before it is opened (opening a FIFO blocks, reading
    /dev/zero never ends, /proc/self/environ holds the process's secrets)."""
    path = local_path(uri)
    real = os.path.realpath(path)
    if any(real == folder or real.startswith(folder + "/") for folder in KERNEL_FOLDERS):
        raise StorageSpecialFileError(uri, operation, f"{real} is a device or kernel file")
    mode = _guarded(uri, operation, lambda: os.stat(path)).st_mode
    if stat.S_ISDIR(mode):
        raise StorageError(uri, operation, "is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise StorageSpecialFileError(
            uri, operation, "not a regular file (a device, FIFO or socket)"
        )
    return path


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    path = check_regular_file(uri, "read")

    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read() if max_bytes is None else f.read(max_bytes + 1)

    return _guarded(uri, "read", read)


def write_bytes(uri: str, data: bytes) -> None:
    def write() -> None:
        with _publishing(uri) as out:
            out.write(data)

    _guarded(uri, "write", write)


def upload_file(uri: str, source: str) -> None:
    if not os.path.isfile(source):
        raise StorageNotFoundError(
            source, "upload", f"local source file to upload to {uri} does not exist"
        )

    def copy() -> None:
        with open(source, "rb") as src, _publishing(uri) as out:
            shutil.copyfileobj(src, out, length=8 * 1024 * 1024)

    _guarded(uri, "upload", copy)


def download_file(uri: str, target: str) -> None:
    """Copy the file at `uri` to the local path `target` (published whole)."""

    def copy() -> None:
        with open(local_path(uri), "rb") as src, _publishing(target) as out:
            shutil.copyfileobj(src, out, length=8 * 1024 * 1024)

    _guarded(uri, "download", copy)


def open_read(uri: str) -> BinaryIO:
    path = check_regular_file(uri, "open")
    return _guarded(uri, "open", lambda: open(path, "rb"))


def exists(uri: str) -> bool:
    return os.path.isfile(local_path(uri))


def size(uri: str) -> int:
    def stat() -> int:
        path = local_path(uri)
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        return os.path.getsize(path)

    return _guarded(uri, "size", stat)


def delete(uri: str) -> None:
    """Remove a file; a missing file is not an error (as on S3)."""

    def remove() -> None:
        with suppress(FileNotFoundError):
            os.unlink(local_path(uri))

    _guarded(uri, "delete", remove)


def list_files(prefix: str, recursive: bool = True) -> list[str]:
    """Every file below the folder `prefix` (recursively, or only its own files), as
    `prefix`-relative paths joined on."""
    prefix = os.fspath(prefix)
    root = local_path(prefix)
    if not os.path.isdir(root):
        return []
    found: list[str] = []
    if not recursive:
        found = [entry.path for entry in os.scandir(root) if entry.is_file()]
    for folder, _dirs, files in os.walk(root) if recursive else ():
        found.extend(os.path.join(folder, name) for name in files)
    if prefix.startswith("file://"):
        found = ["file://" + path for path in found]
    return sorted(found)


def glob_files(pattern: str) -> list[str]:
    """Files matching one wildcard pattern (no braces; `**` crosses folders)."""
    pattern = os.fspath(pattern)
    path = local_path(pattern)
    matches = [m for m in globlib.glob(path, recursive=True) if os.path.isfile(m)]
    if pattern.startswith("file://"):
        matches = ["file://" + m for m in matches]
    return sorted(matches)


def list_versioned(prefix: str, recursive: bool = True) -> list[tuple[str, str]]:
    """`list_files` with each file's version, as `local_conditional` words it (inode,
    mtime_ns, size: every publish through a temp file is a new inode)."""
    found = []
    for path in list_files(prefix, recursive):
        try:
            info = os.stat(local_path(path))
        except FileNotFoundError:  # removed since the folder was read
            continue
        found.append((path, file_version(info)))
    return found


def file_version(info: os.stat_result) -> str:
    """A local file's version: (inode, mtime_ns, size); a publish (temp file, then
    os.replace or os.link) is a new inode, so a rewritten file never keeps its version."""
    return f"{info.st_ino}-{info.st_mtime_ns}-{info.st_size}"
