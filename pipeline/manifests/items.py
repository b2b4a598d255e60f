"""What a manifest yields: shards, items, and the errors that name file, row and field."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from pipeline.manifests.images import ImageRef

PARQUET = "parquet"
WEBDATASET = "webdataset"


@dataclass(frozen=True)
class ManifestShard:
    """One manifest file; `index` is its position in the sorted shard list (the output shard
    number), `format` is "parquet" or "webdataset"."""

    index: int
    uri: str
    format: str


@dataclass
class ManifestItem:
    """One row (Parquet) or sample (WebDataset), validated.

    `model` is None when the row does not say (the run's model applies). The overrides
    (seed, width, height, steps, guidance, style_lora_scale) are None when absent. `extra` keeps
    every other column/json field (for caption templates and provenance). `source` is
    (manifest file URI, row index within that file).
    """

    id: str
    prompt: str
    model: str | None = None
    subject: ImageRef | None = None
    styles: list[ImageRef] = field(default_factory=list)
    style_lora: str | None = None
    style_lora_scale: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: tuple[str, int] = ("", 0)


class RowError(ValueError):
    """A malformed row: the run records it as a failed item and goes on.

    `file` is the manifest URI, `row` the row (sample) index in it, `field` the offending field
    (None when the row as a whole is wrong), `item_id` the row's id, or a placeholder naming the
    row when the id itself is what is missing.
    """

    def __init__(
        self,
        file: str,
        row: int | None,
        field: str | None,
        message: str,
        item_id: str | None = None,
    ):
        self.file = file
        self.row = row
        self.field = field
        self.message = message
        self.item_id = item_id or f"<no id: row {row} of {posixpath.basename(file)}>"
        where = [f"{file}"]
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(", ".join(where) + f": {message}")

    def __reduce__(self):
        return (RowError, (self.file, self.row, self.field, self.message, self.item_id))


class ManifestError(ValueError):
    """A problem with a whole manifest file or spec (unreadable file, wrong column type,
    no shard matching a pattern). Reading that shard stops; other shards are unaffected."""

    def __init__(self, file: str, message: str, field: str | None = None):
        self.file = file
        self.field = field
        self.message = message
        prefix = f"{file}, field {field!r}" if field else file
        super().__init__(f"{prefix}: {message}")

    def __reduce__(self):
        return (ManifestError, (self.file, self.message, self.field))


class OutsideLocalRootsError(ManifestError):
    """A local manifest file outside `limits.local_roots`: refused before it is read, by every
    command (an operator's policy, not a problem in the data)."""

    def __reduce__(self):
        return (OutsideLocalRootsError, (self.file, self.message, self.field))
