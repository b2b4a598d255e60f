"""Copy a model's weight files from a source to a local folder once per node, verified.

`stage(source, models, root)` is what every actor of a node calls before loading: the first
takes a file lock beside `root` and downloads what is missing; the others wait on the lock, then
find everything in place and return at once. Each file goes to a `.partial` path in a hidden
sibling folder, is checked against the source's size and sha256 (or the Hub's git blob id for
small files), and only then renamed into `root`: a partial or corrupt download is never at a
path a loader reads. A `.partial` left by a crashed process is discarded and the file restarted
(the Hub library and the S3 reader resume broken streams within one process).

Files come down `FILE_WORKERS` at a time (Hub files are separate downloads; an S3 mirror's big
files are also split into parallel ranged GETs by `Storage.download_file`), so a new node is not
held to one stream per file. `root/restyle-weights.json` records each staged file's size and
sha256; it is rewritten as each file lands, so a crash loses at most the files in flight, and a
file whose source digest changed is fetched again. The lock is a local-filesystem lock: keep the weight cache on node-local disk.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from pipeline.errors import WeightIntegrityError, WeightsError, WeightSpaceError
from pipeline.storage import Storage, StorageSettings
from pipeline.weights.hashing import digest_file, remember_sha256
from pipeline.weights.manifest import FileFacts, WeightManifest, read_manifest, write_manifest
from pipeline.weights.sources import WeightSource
from pipeline.wording import counted

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
SPACE_MARGIN_BYTES = 256 << 20  # headroom left free on the cache disk
GiB = float(1 << 30)
FILE_WORKERS = 4  # files downloading at once while a node stages


@dataclass
class StageReport:
    """What one `stage` call did: for the per-actor log line and for tests."""

    root: Path
    source: str
    files: int = 0
    fetched: list[str] = field(default_factory=list)
    bytes_fetched: int = 0
    waited_s: float = 0.0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"staged {counted(self.files, 'weight file')} from {self.source} into {self.root} in "
            f"{self.seconds:.1f} s: fetched {len(self.fetched)} ({self.bytes_fetched / 1e6:.1f} MB), "
            f"waited {self.waited_s:.1f} s for another process of this node"
        )


def partial_dir(root: Path) -> Path:
    """Where downloads in flight live: beside `root` (same disk, so the final rename is atomic)."""
    return root.parent / f".{root.name}{PARTIAL_SUFFIX}"


@contextmanager
def node_lock(root: Path) -> Iterator[Callable[[], float]]:
    """Hold the staging lock of `root`; yields a function giving the seconds spent waiting."""
    root.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root.parent / f".{root.name}.lock"))
    started = time.monotonic()
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process of this node staging %s", root)
        lock.acquire()
    waited = time.monotonic() - started
    try:
        yield lambda: waited
    finally:
        lock.release()


def stage(
    source: WeightSource,
    models: list[str],
    root: Path,
    only: Callable[[str, FileFacts], bool] | None = None,
) -> StageReport:
    """Make `root` hold verified copies of the files `models` need from `source`.

    `only` restricts staging to some files (e.g. the Hub's small files whose sha256 the driver
    must compute); models are recorded as complete in the marker only without it.
    """
    started = time.monotonic()
    root = Path(root)
    offered = source.manifest(models)
    paths = sorted(p for p, facts in offered.files.items() if only is None or only(p, facts))
    report = StageReport(root, source.description, files=len(paths))
    storage = Storage(StorageSettings())  # local paths only: the marker is a local file
    with node_lock(root) as waited:
        report.waited_s = waited()
        root.mkdir(parents=True, exist_ok=True)
        marker = read_manifest(storage, str(root)) or WeightManifest(source=source.description)
        todo = [p for p in paths if not _is_staged(root, marker, p, offered.files[p])]
        if todo:
            check_space(source, root, todo, offered)
            marker = marker.without_files(todo)
            write_manifest(storage, str(root), marker)
            for path, facts in fetch_all(source, todo, offered, root):
                marker.files[path] = facts
                write_manifest(storage, str(root), marker)
                report.fetched.append(path)
                report.bytes_fetched += facts.size or 0
            report.fetched.sort()
        if only is None:
            marker = marker.merged_with(
                WeightManifest(
                    {p: marker.files[p] for p in paths}, offered.models, source.description
                )
            )
        write_manifest(storage, str(root), marker)
    report.seconds = time.monotonic() - started
    log.info("%s", report.summary())
    return report


def _is_staged(root: Path, marker: WeightManifest, path: str, wanted: FileFacts) -> bool:
    have = marker.files.get(path)
    file = root / path
    if have is None or not file.is_file() or file.stat().st_size != have.size:
        return False
    return all(
        expected is None or expected == found
        for expected, found in (
            (wanted.size, have.size),
            (wanted.sha256, have.sha256),
            (wanted.git_sha1, have.git_sha1),
        )
    )


def check_space(source: WeightSource, root: Path, todo: list[str], offered: WeightManifest) -> None:
    needed = sum(offered.files[p].size or 0 for p in todo)
    folder = partial_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed + SPACE_MARGIN_BYTES > free:
        biggest = sorted(todo, key=lambda p: -(offered.files[p].size or 0))[:3]
        raise WeightSpaceError(
            f"not enough disk space to stage {counted(len(todo), 'weight file')} from "
            f"{source.description} "
            f"into {root}: they need {needed / GiB:.2f} GiB (largest: {', '.join(biggest)}), "
            f"{free / GiB:.2f} GiB is free; free some space or point RESTYLE_WEIGHTS_CACHE at a "
            "larger local disk"
        )


def fetch_all(
    source: WeightSource, todo: list[str], offered: WeightManifest, root: Path
) -> Iterator[tuple[str, FileFacts]]:
    """(path, facts) of each file of `todo` as it lands, `FILE_WORKERS` downloads at once.
    On the first failure the downloads not yet started are cancelled, those in flight finish
    (and are discarded unless verified), and the error is raised."""
    with ThreadPoolExecutor(FILE_WORKERS, thread_name_prefix="stage") as pool:
        futures = {
            pool.submit(fetch_verified, source, path, offered.files[path], root): path
            for path in todo
        }
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            for future in futures:
                future.cancel()


def fetch_verified(source: WeightSource, path: str, wanted: FileFacts, root: Path) -> FileFacts:
    """Download `path` to its .partial, check it, rename it into `root`; return its facts."""
    partial = partial_dir(root) / (path + PARTIAL_SUFFIX)
    partial.parent.mkdir(parents=True, exist_ok=True)
    if partial.exists():
        log.info("discarding the partial download %s left by an earlier attempt", partial)
        partial.unlink()
    try:
        source.fetch(path, partial)
        size = partial.stat().st_size
        if wanted.size is not None and size != wanted.size:
            raise WeightIntegrityError(
                f"{path} from {source.description}: got {size} bytes, expected {wanted.size} "
                "(truncated or changed at the source); the download was discarded"
            )
        sha256, git_sha1 = digest_file(partial, git_blob=wanted.git_sha1 is not None)
        for what, expected, found in (
            ("sha256", wanted.sha256, sha256),
            ("git blob sha1", wanted.git_sha1, git_sha1),
        ):
            if expected is not None and expected != found:
                raise WeightIntegrityError(
                    f"{path} from {source.description}: {what} is {found}, expected {expected} "
                    "(corrupt or changed at the source); the download was discarded"
                )
        final = root / path
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
    except OSError as error:
        partial.unlink(missing_ok=True)
        if error.errno == errno.ENOSPC:
            raise WeightSpaceError(
                f"no space left on device while downloading {path} from "
                f"{source.description} into {partial.parent}; the partial file "
                "was removed: free space or point RESTYLE_WEIGHTS_CACHE at a "
                "larger local disk"
            ) from error
        raise WeightsError(
            f"cannot stage {path} from {source.description}: {type(error).__name__}: {error}"
        ) from error
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    remember_sha256(final, sha256)
    return FileFacts(size, sha256, wanted.component, git_sha1)
