"""Validating a whole manifest before a run (`restyle manifest validate`).

Checks every row of every shard with the same rules the run applies, plus what only a
whole-manifest pass can see: ids repeated across shards. With `check_images`, every referenced
image is also fetched and decoded (each distinct URI once, a few at a time). Every problem is
reported with its file, row and field; nothing stops at the first error.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pipeline.config.input_limits import DEFAULT_LIMITS, InputLimits
from pipeline.errors import ItemError
from pipeline.manifests.discovery import list_shards
from pipeline.manifests.images import ImageRef, load_image
from pipeline.manifests.items import (
    ManifestError,
    ManifestItem,
    ManifestShard,
    OutsideLocalRootsError,
    RowError,
)
from pipeline.manifests.reading import parsed_rows
from pipeline.storage import Storage, StorageError
from pipeline.wording import counted

IMAGE_CHECK_THREADS = 8


@dataclass
class ValidationReport:
    """Outcome of `validate_manifest`: counts, and every problem as a RowError (row None for
    a problem with a whole file)."""

    shards: list[ManifestShard] = field(default_factory=list)
    rows: int = 0
    valid_items: int = 0
    images_checked: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self, limit: int = 50) -> str:
        """A human summary: counts, then up to `limit` problems, one per line."""
        head = (
            f"{counted(len(self.shards), 'shard')}, {counted(self.rows, 'row')}, "
            f"{self.valid_items} valid, {counted(len(self.errors), 'problem')}"
        )
        if self.images_checked:
            head += f", {counted(self.images_checked, 'image')} checked"
        lines = [head] + [f"  {error}" for error in self.errors[:limit]]
        if len(self.errors) > limit:
            lines.append(f"  ... and {len(self.errors) - limit} more")
        return "\n".join(lines)


def validate_manifest(
    spec: str | list[str] | tuple[str, ...],
    storage: Storage,
    check_images: bool = False,
    limits: InputLimits = DEFAULT_LIMITS,
) -> ValidationReport:
    """Check every shard named by `spec` within `limits` (the run's); never raises for
    problems in the data.

    A spec that matches nothing is reported as an error in the report too. A local manifest
    outside `limits.local_roots` is not read at all: `OutsideLocalRootsError` is raised.
    """
    report = ValidationReport()
    try:
        report.shards = list_shards(spec, storage, limits=limits)
    except OutsideLocalRootsError:
        raise
    except ManifestError as error:
        report.errors.append(RowError(error.file, None, error.field, error.message))
        return report
    seen: dict[str, tuple[str, int]] = {}
    images: list[tuple[ManifestItem, ImageRef]] = []
    for shard in report.shards:
        try:
            for row, item, problems in parsed_rows(shard, storage, limits):
                report.rows += 1
                report.errors.extend(problems)
                if item is None:
                    continue
                if item.id in seen:
                    file, first_row = seen[item.id]
                    where = f"row {first_row}" if file == shard.uri else f"{file} row {first_row}"
                    report.errors.append(
                        RowError(
                            shard.uri,
                            row,
                            "id",
                            f"duplicate id {item.id!r} (first at {where})",
                            item.id,
                        )
                    )
                    continue
                seen[item.id] = (shard.uri, row)
                report.valid_items += 1
                if check_images:
                    images.extend((item, ref) for ref in _refs(item))
        except (ManifestError, StorageError) as error:
            field_name = getattr(error, "field", None)
            message = getattr(error, "message", None) or str(error)
            report.errors.append(RowError(shard.uri, None, field_name, message))
    if images:
        report.images_checked = len(images)
        report.errors.extend(_check_images(images, storage, limits))
        report.errors.sort(key=lambda e: (e.file, -1 if e.row is None else e.row))
    return report


def _refs(item: ManifestItem) -> Iterable[ImageRef]:
    if item.subject is not None:
        yield item.subject
    yield from item.styles


def _check_images(
    images: list[tuple[ManifestItem, ImageRef]], storage: Storage, limits: InputLimits
) -> list[RowError]:
    """Decode each distinct image once; report a failure on every row that uses it."""
    distinct: dict[object, ImageRef] = {}
    for _, ref in images:
        distinct.setdefault(ref.uri if ref.uri is not None else id(ref), ref)

    def check(ref: ImageRef) -> str | None:
        try:
            load_image(ref, storage, "-", limits)
            return None
        except ItemError as error:
            return error.message

    with ThreadPoolExecutor(IMAGE_CHECK_THREADS, thread_name_prefix="restyle-validate") as pool:
        outcome = dict(zip(distinct, pool.map(check, distinct.values()), strict=True))
    errors = []
    for item, ref in images:
        problem = outcome[ref.uri if ref.uri is not None else id(ref)]
        if problem:
            file, row = item.source
            errors.append(RowError(file, row, ref.name, problem, item.id))
    return errors
