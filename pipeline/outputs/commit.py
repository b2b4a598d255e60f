"""Output shards: one commit per input shard, the commit marker written last.

For input shard k a commit is three objects under the run folder (or under a retry folder):

    part-<k:06d>.tar         WebDataset samples: <key>.<png|jpg|webp>, <key>.txt, <key>.json
    part-<k:06d>.parquet     one row per input item, failures included (`ItemRecord`)
    part-<k:06d>.stats.json  counts, error histogram, durations, fingerprint: the commit marker

A shard without its marker is not done and is redone whole; names are deterministic, so a redo
overwrites and never duplicates. Each object is published whole (S3 PUT/multipart complete, or
temp file + rename locally), and the marker goes last, so a reader that trusts only shards with
markers never sees a partial commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import webdataset as wds

from pipeline.errors import ItemStatus
from pipeline.storage import Storage
from pipeline.storage.parquet import table_from_bytes, table_to_bytes

TAR_MTIME = 0.0  # fixed member mtime: the same items give byte-identical tars

RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("key", pa.string()),
        ("status", pa.string()),  # "ok" or an ItemStatus
        ("error", pa.string()),
        ("attempts", pa.int32()),
        ("seed", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("steps", pa.int32()),
        ("guidance", pa.float64()),
        ("prompt", pa.string()),
        ("caption", pa.string()),
        ("output_key", pa.string()),  # "<tar uri>#<key>" of the result image, or null
        ("input_shard", pa.string()),
        ("input_row", pa.int64()),
        ("read_s", pa.float64()),
        ("model_s", pa.float64()),
        ("encode_s", pa.float64()),
        (
            "scores",
            pa.map_(pa.string(), pa.float64()),
        ),  # optional quality scores (pipeline.processing.scoring)
    ]
)


def sample_key(item_id: str) -> str:
    """A WebDataset-safe key for an item id: no dots, slashes or odd characters.

    Ids that need changing get a short hash of the original appended, so two ids never
    collapse onto one key ("a.b" and "a_b" stay distinct).
    """
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", item_id)
    if safe == item_id and safe:
        return safe
    return f"{safe[:100]}-{hashlib.sha256(item_id.encode()).hexdigest()[:8]}"


@dataclass
class ItemRecord:
    """One row of part-k.parquet: what happened to one input item."""

    id: str
    key: str
    status: str
    error: str | None = None
    attempts: int = 1
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    prompt: str | None = None
    caption: str | None = None
    output_key: str | None = None
    input_shard: str | None = None
    input_row: int | None = None
    read_s: float | None = None
    model_s: float | None = None
    encode_s: float | None = None
    scores: dict[str, float] | None = None

    @property
    def ok(self) -> bool:
        return self.status == ItemStatus.OK

    @property
    def failed(self) -> bool:
        return ItemStatus(self.status).failed


@dataclass
class ShardStats:
    """Contents of the commit marker."""

    shard: int
    input_shard: str
    run: str
    fingerprint: str
    count: int = 0
    ok: int = 0
    failed: int = 0  # items with an error status (skipped rows are not failures)
    skipped: int = 0  # rows for another model's run
    errors: dict[str, int] = field(default_factory=dict)  # error class -> count
    error_messages: dict[str, int] = field(default_factory=dict)  # message -> count (capped)
    wall_s: float = 0.0
    model_s: float = 0.0
    read_s: float = 0.0
    encode_s: float = 0.0
    upload_s: float = 0.0
    images_per_s: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    weights: dict[str, str] = field(default_factory=dict)  # name -> sha256
    code_version: str = ""
    worker: dict = field(default_factory=dict)  # host, pid, device, CUDA_VISIBLE_DEVICES
    retry_of: list[int] = field(default_factory=list)  # retry commits: the attempts re-run

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ShardStats:
        return cls(**json.loads(data))


@dataclass(frozen=True)
class ShardPaths:
    """Deterministic object names of one commit."""

    folder: str  # run folder, or <run>/retry-<n>
    index: int

    @property
    def stem(self) -> str:
        return f"{self.folder}/part-{self.index:06d}"

    @property
    def tar(self) -> str:
        return self.stem + ".tar"

    @property
    def records(self) -> str:
        return self.stem + ".parquet"

    @property
    def marker(self) -> str:
        return self.stem + ".stats.json"


class ShardWriter:
    """Collects finished samples and records of one shard, then commits them marker-last.

    Samples are appended in input order to a local spooled tar (the actor's scratch disk), so
    the upload at commit time is one streaming multipart upload, not many small PUTs.
    """

    MAX_MESSAGES = 1000

    def __init__(
        self, storage: Storage, paths: ShardPaths, stats: ShardStats, scratch_dir: str | None = None
    ):
        self.storage = storage
        self.paths = paths
        self.stats = stats
        self.records: list[ItemRecord] = []
        self._tmp = tempfile.NamedTemporaryFile(  # noqa: SIM115 - open until commit() or abort()
            prefix="restyle-shard-", suffix=".tar", dir=scratch_dir, delete=False
        )
        self._tar = wds.TarWriter(self._tmp, encoder=False, mtime=TAR_MTIME)

    def add_sample(self, key: str, members: dict[str, bytes]) -> None:
        """Write one sample: members maps extension ("png", "txt", "json", ...) to bytes."""
        self._tar.write({"__key__": key, **members})

    def add_record(self, record: ItemRecord) -> None:
        self.records.append(record)

    def commit(self) -> ShardStats:
        """Upload tar, then records, then the marker. Returns the final stats."""
        self._tar.close()
        self._tmp.close()
        t0 = time.perf_counter()
        try:
            self.storage.upload_file(self.paths.tar, self._tmp.name)
            self.storage.write_bytes(self.paths.records, records_to_parquet(self.records))
            self._finish_stats(upload_s=time.perf_counter() - t0)
            self.storage.write_bytes(self.paths.marker, self.stats.to_json())
        finally:
            Path(self._tmp.name).unlink(missing_ok=True)
        return self.stats

    def abort(self) -> None:
        """Drop the local spool; nothing was published."""
        with contextlib.suppress(
            Exception
        ):  # the spool may already be broken; we are discarding it anyway
            self._tar.close()
        self._tmp.close()
        Path(self._tmp.name).unlink(missing_ok=True)

    def _finish_stats(self, upload_s: float) -> None:
        s = self.stats
        s.count = len(self.records)
        s.ok = sum(r.ok for r in self.records)
        s.skipped = sum(r.status == ItemStatus.SKIPPED for r in self.records)
        s.failed = s.count - s.ok - s.skipped
        s.errors = dict(Counter(str(r.status) for r in self.records if r.failed))
        messages = Counter(r.error for r in self.records if r.error)
        s.error_messages = dict(messages.most_common(self.MAX_MESSAGES))
        s.model_s = sum(r.model_s or 0.0 for r in self.records)
        s.read_s = sum(r.read_s or 0.0 for r in self.records)
        s.encode_s = sum(r.encode_s or 0.0 for r in self.records)
        s.upload_s = upload_s
        s.finished_at = time.time()
        s.wall_s = s.finished_at - s.started_at
        s.images_per_s = s.ok / s.wall_s if s.wall_s > 0 else 0.0


def records_to_parquet(records: list[ItemRecord]) -> bytes:
    return table_to_bytes(pa.Table.from_pylist([asdict(r) for r in records], schema=RECORD_SCHEMA))


def read_records(storage: Storage, uri: str) -> list[ItemRecord]:
    table = table_from_bytes(storage.read_bytes(uri))
    records = []
    for row in table.to_pylist():
        if row.get("scores") is not None:  # pyarrow returns maps as lists of (key, value)
            row["scores"] = dict(row["scores"])
        records.append(ItemRecord(**row))
    return records


def read_marker(storage: Storage, uri: str) -> ShardStats | None:
    """The commit marker at `uri`, or None when the shard is not committed."""
    if not storage.exists(uri):
        return None
    return ShardStats.from_json(storage.read_bytes(uri))
