"""One commit of one input shard: its WebDataset tar, its records, then its marker, last.

For input shard k, attempt n (0: the first run of the shard, n: its n-th `--retry-failed`), the
commit publishes, in this order (names in `pipeline.outputs.layout`):

    part-<k>[.retry-<nn>].tar         WebDataset samples: <key>.<png|jpg|webp>, <key>.txt, <key>.json
    part-<k>.parquet                  the shard's current records (`pipeline.outputs.records`): a
                                      retry overlays its re-run items' records on the file
    part-<k>[.retry-<nn>].stats.json  counts, error histogram, durations, fingerprint: the marker;
                                      `shard_counts` are the records file's rows by status as this
                                      commit left it, so `restyle status` need not read the file

A commit without its marker is not done and is redone whole under the same names, so a redo
overwrites and never duplicates. Each object is published whole (S3 PUT/multipart complete, or
temp file + rename locally), and the marker goes last.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from pipeline.errors import ItemStatus
from pipeline.outputs.layout import ShardPaths
from pipeline.outputs.records import ItemRecord, overlay, read_records, records_to_parquet
from pipeline.storage import Storage, StorageAuthError
from pipeline.wording import counted

log = logging.getLogger(__name__)

TAR_MTIME = 0.0  # fixed member mtime: the same items give byte-identical tars
TAR_MEMBER_MODE = 0o444  # member headers as webdataset's TarWriter writes them (bytes unchanged)
TAR_OWNER = "bigdata"
MAX_KEY_CHARS = 100


def sample_key(item_id: str) -> str:
    """A WebDataset-safe key for an item id: no dots, slashes or odd characters.

    Ids that need changing (odd characters, or longer than `MAX_KEY_CHARS`, which keeps
    "<key>.json" a valid file name where a tar is unpacked) get a short hash of the original
    appended, so "a.b" and "a_b" stay distinct. An id that happens to equal another id's hashed
    key is refused when the run is planned (`processing.run_identity`).
    """
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", item_id)
    if safe == item_id and 0 < len(safe) <= MAX_KEY_CHARS:
        return safe
    return f"{safe[:MAX_KEY_CHARS]}-{hashlib.sha256(item_id.encode()).hexdigest()[:8]}"


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
    retry: int = 0  # 0: the shard's first run; n: its n-th retry (re-run items only)
    # status -> rows of part-<k>.parquet as this commit wrote it: for a retry the whole shard
    # after its overlay, not only the re-run items (count/ok/failed/... above). None in
    # markers written before restyle kept them: `restyle status` then reads the records file.
    shard_counts: dict[str, int] | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ShardStats:
        """A marker; fields this restyle does not know (a newer writer's) are ignored."""
        return cls(**{k: v for k, v in json.loads(data).items() if k in _MARKER_FIELDS})


_MARKER_FIELDS = frozenset(f.name for f in fields(ShardStats))  # computed once: 10^5 markers


class ShardWriter:
    """Collects finished samples and records of one shard attempt, then commits them
    marker-last (`ShardPaths.retry` says which attempt).

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
        self.stats.retry = paths.retry
        self.records: list[ItemRecord] = []
        self._tmp = tempfile.NamedTemporaryFile(  # noqa: SIM115 - open until commit() or abort()
            prefix="restyle-shard-", suffix=".tar", dir=scratch_dir, delete=False
        )
        self._tar = SampleTarWriter(self._tmp)

    def add_sample(self, key: str, members: dict[str, bytes]) -> None:
        """Write one sample: members maps extension ("png", "txt", "json", ...) to bytes."""
        self._tar.write(key, members)

    def add_record(self, record: ItemRecord) -> None:
        self.records.append(record)

    def commit(self) -> ShardStats:
        """Upload tar, then records, then the marker. Returns the final stats."""
        self._tar.close()
        self._tmp.close()
        t0 = time.perf_counter()
        self.remove_leftovers()
        try:
            self.storage.upload_file(self.paths.tar, self._tmp.name)
            current = self._current()
            self.storage.write_bytes(self.paths.records, records_to_parquet(current))
            self._finish_stats(upload_s=time.perf_counter() - t0)
            self.stats.shard_counts = dict(Counter(str(r.status) for r in current))
            self.storage.write_bytes(self.paths.marker, self.stats.to_json())
        finally:
            Path(self._tmp.name).unlink(missing_ok=True)
        return self.stats

    def remove_leftovers(self) -> None:
        """Delete what an interrupted commit of this shard left behind: locally the temp files
        beside its objects (a local publish writes `.<name>.<random>.tmp`, then renames it); on
        S3 the multipart uploads it never completed (invisible to listings, yet stored and
        billed), every attempt's (`part-<k>.` is the prefix of all of the shard's objects)."""
        if self.storage.is_remote(self.paths.folder):
            prefix = f"{self.paths.folder}/part-{self.paths.index:06d}."
            try:
                self.storage.abort_uploads(prefix)
            except StorageAuthError as error:  # a policy without the multipart permissions
                log.warning(
                    "cannot abort the multipart uploads interrupted commits left under %s "
                    "(grant s3:ListBucketMultipartUploads and s3:AbortMultipartUpload, or set "
                    "a lifecycle rule that aborts incomplete uploads): %s",
                    prefix,
                    error,
                )
            return
        prefix = f"{self.paths.folder}/.part-{self.paths.index:06d}"
        for uri in self.storage.glob(f"{prefix}.*.tmp"):
            self.storage.delete(uri)

    def _current(self) -> list[ItemRecord]:
        """The shard's records after this commit: its own for a first run; for a retry, the
        current records with the re-run items' replaced."""
        if self.paths.retry == 0:
            return self.records
        return overlay(read_records(self.storage, self.paths.records), self.records)

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


class SampleTarWriter:
    """WebDataset samples into a tar stream: `<key>.<ext>` members, extensions sorted, fixed
    mtime, mode 0444, owner "bigdata": byte for byte what `webdataset.TarWriter(encoder=False,
    mtime=TAR_MTIME)` writes (a test compares them), without importing webdataset, which
    imports torch: the light commands that read this module must not."""

    def __init__(self, stream):
        # tarfile's default (PAX) format and a float mtime, as webdataset's TarWriter leaves
        # them: each member carries a small PAX header "mtime=0.0".
        self._tar = tarfile.open(fileobj=stream, mode="w|")  # noqa: SIM115 - until close()

    def write(self, key: str, members: dict[str, bytes]) -> None:
        for ext in sorted(members):
            data = members[ext]
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise ValueError(f"{key}.{ext}: member must be bytes, got {type(data).__name__}")
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = TAR_MTIME  # webdataset's float: the same header bytes
            info.mode = TAR_MEMBER_MODE
            info.uname = info.gname = TAR_OWNER
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()


def read_marker(storage: Storage, uri: str) -> ShardStats | None:
    """The commit marker at `uri`, or None when the shard is not committed."""
    if not storage.exists(uri):
        return None
    return ShardStats.from_json(storage.read_bytes(uri))


def abort_stray_uploads(storage: Storage, run_uri: str) -> int:
    """Once every shard of a run is committed, an open multipart upload under its `part-`
    prefix can only be a stray: an actor of a killed driver that went on writing after its
    shard was redone and committed elsewhere. Abort them (a shard's own commit aborts only what
    was open before it started); the number aborted."""
    try:
        aborted = storage.abort_uploads(f"{run_uri.rstrip('/')}/part-")
    except StorageAuthError as error:  # a policy without the multipart permissions
        log.warning("cannot abort stray multipart uploads of %s: %s", run_uri, error)
        return 0
    if aborted:
        log.info("aborted %s of killed writers", counted(aborted, "stray multipart upload"))
    return aborted
