"""`restyle weights pull`: fetch a model's files from a source into a local folder or an s3:// mirror.

A local target is staged exactly like a node's cache (`staging.stage`: lock, verified
.partial-then-rename, manifest). An s3:// target is a mirror: each file is fetched and verified
on local disk (in place when the source is a local folder), uploaded whole, its size checked,
and the local copy dropped, so pulling 30 GB needs room for one file at a time. The mirror's
`restyle-weights.json` (sizes and sha256 of every file) is written after all files are up;
files the mirror already holds with the right sha256 are skipped, so an interrupted pull is
simply run again.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import WeightIntegrityError, WeightsError
from pipeline.storage import Storage, StorageError, is_s3, join
from pipeline.weights.manifest import FileFacts, WeightManifest, read_manifest, write_manifest
from pipeline.weights.sources import LocalSource, WeightSource
from pipeline.weights.staging import StageReport, check_space, fetch_verified, stage

log = logging.getLogger(__name__)


@dataclass
class PullReport:
    target: str
    source: str
    files: int = 0
    copied: list[str] = field(default_factory=list)
    bytes_copied: int = 0
    seconds: float = 0.0


def pull(
    source: WeightSource, models: list[str], target: str, storage: Storage, scratch: Path
) -> PullReport:
    """Copy the files `models` need from `source` to `target` (folder or s3:// prefix)."""
    started = time.monotonic()
    if not is_s3(target):
        staged: StageReport = stage(source, models, Path(target).expanduser())
        return PullReport(
            str(staged.root),
            source.description,
            staged.files,
            staged.fetched,
            staged.bytes_fetched,
            time.monotonic() - started,
        )
    target = target.rstrip("/")
    offered = source.manifest(models)
    existing = read_manifest(storage, target) or WeightManifest()
    report = PullReport(target, source.description, files=len(offered.files))
    done: dict[str, FileFacts] = {}
    for path, wanted in sorted(offered.files.items()):
        have = existing.files.get(path)
        if (
            have is not None
            and _same(have, wanted)
            and _object_size(storage, join(target, path)) == have.size
        ):
            done[path] = have
            continue
        done[path] = _upload_one(source, path, wanted, join(target, path), storage, scratch)
        report.copied.append(path)
        report.bytes_copied += done[path].size or 0
        log.info("mirrored %s to %s", path, target)
    write_manifest(
        storage,
        target,
        existing.merged_with(WeightManifest(done, offered.models, source.description)),
    )
    report.seconds = time.monotonic() - started
    return report


def _same(have: FileFacts, wanted: FileFacts) -> bool:
    return all(
        expected is None or expected == found
        for expected, found in (
            (wanted.size, have.size),
            (wanted.sha256, have.sha256),
            (wanted.git_sha1, have.git_sha1),
        )
    )


def _object_size(storage: Storage, uri: str) -> int | None:
    try:
        return storage.size(uri)
    except StorageError:
        return None


def _upload_one(
    source: WeightSource, path: str, wanted: FileFacts, uri: str, storage: Storage, scratch: Path
) -> FileFacts:
    """Verified local bytes of `path` -> `uri`; returns the facts recorded in the mirror."""
    if isinstance(source, LocalSource):  # already local and hashed: upload in place
        local, facts, cleanup = source.root / path, wanted, None
    else:
        scratch.mkdir(parents=True, exist_ok=True)
        holder = scratch / "file"
        check_space(source, holder, [path], WeightManifest({path: wanted}))
        facts = fetch_verified(source, path, wanted, holder)
        local, cleanup = holder / path, holder
    try:
        storage.upload_file(uri, local)
        uploaded = storage.size(uri)
    except StorageError as error:
        raise WeightsError(f"cannot upload {path} to {uri}: {error}") from error
    finally:
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
    if facts.size is not None and uploaded != facts.size:
        raise WeightIntegrityError(
            f"{uri}: the mirror holds {uploaded} bytes after upload, expected {facts.size}"
        )
    return facts
