"""Captioning a finished run as a separate stage: `restyle caption <run folder>`.

Why separate: the captioner can run on other machines (CPU nodes, smaller GPUs) than FLUX,
after the fact, and be changed without re-rendering anything. Committed tars are never
rewritten (a trainer may already be reading them): for each committed shard, main or retry,
the stage writes a sidecar beside it,

    <run>/part-000000.captions.parquet     key, id, caption (one row per result image)
                                           schema metadata: caption_model = the model spec

published whole in one write, so a sidecar is either complete or absent. A sidecar made with
the same model spec is kept (re-running the stage resumes); another spec replaces it.
Trainers join captions to samples on `key` (the WebDataset `__key__`).

Work is spread over Ray actors, one model load per actor: one GPU each
when the cluster has GPUs, else half a CPU each (a 2-core machine must keep CPU for Ray).
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.outputs.commit import ShardPaths
from pipeline.outputs.run_state import RunState
from pipeline.storage import Storage, StorageSettings
from pipeline.storage.parquet import schema_from_bytes, table_to_bytes

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".captions.parquet"
RESULT_EXTENSIONS = ("result.png", "result.jpg", "result.webp", "png", "jpg", "webp")
BATCH = 8
SCHEMA = pa.schema([("key", pa.string()), ("id", pa.string()), ("caption", pa.string())])
CPU_ACTOR_CPUS = 0.5


def sidecar_uri(paths: ShardPaths) -> str:
    return paths.stem + SIDECAR_SUFFIX


@dataclass
class ResultImage:
    key: str
    item_id: str
    data: bytes


def result_images(storage: Storage, tar_uri: str) -> Iterator[ResultImage]:
    """The result image of every sample of an output tar, streamed in tar order."""
    with storage.open_read(tar_uri) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        key, members = None, {}
        for member in tar:
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            this_key, _, ext = name.partition(".")
            if key is not None and this_key != key:
                yield from _result_of(tar_uri, key, members)
                members = {}
            key = this_key
            if ext in RESULT_EXTENSIONS or ext == "json":
                members[ext] = tar.extractfile(member).read()
        if key is not None:
            yield from _result_of(tar_uri, key, members)


def _result_of(tar_uri: str, key: str, members: dict[str, bytes]) -> Iterator[ResultImage]:
    image = next((members[e] for e in RESULT_EXTENSIONS if e in members), None)
    if image is None:
        log.warning("%s: sample %r has no result image; no caption", tar_uri, key)
        return
    item_id = json.loads(members["json"]).get("id", key) if "json" in members else key
    yield ResultImage(key, item_id, image)


class CaptionActor:
    """Loads the captioner once; captions whole shards and writes their sidecars."""

    def __init__(self, model_spec: str, device: str, storage_settings: StorageSettings):
        from pipeline.models.runtime import resolve_device
        from pipeline.processing.caption_model import ModelCaptioner

        self.model_spec = model_spec
        self.captioner = ModelCaptioner(model_spec, device=str(resolve_device(device)))
        self.storage = Storage(storage_settings)

    def caption_shard(self, tar_uri: str, out_uri: str) -> int:
        from PIL import Image

        rows: list[dict] = []
        batch: list[ResultImage] = []

        def flush() -> None:
            images = [Image.open(io.BytesIO(r.data)).convert("RGB") for r in batch]
            for result, caption in zip(batch, self.captioner.caption_images(images)):
                rows.append({"key": result.key, "id": result.item_id, "caption": caption})
            batch.clear()

        for result in result_images(self.storage, tar_uri):
            batch.append(result)
            if len(batch) >= BATCH:
                flush()
        if batch:
            flush()
        table = pa.Table.from_pylist(rows, schema=SCHEMA).replace_schema_metadata(
            {"caption_model": self.model_spec, "source": tar_uri})
        self.storage.write_bytes(out_uri, table_to_bytes(table))
        return len(rows)


@dataclass
class CaptionSummary:
    run_uri: str
    shards_captioned: int = 0
    shards_kept: int = 0
    captions: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # tar URI -> reason

    @property
    def exit_code(self) -> int:
        return 2 if self.failed else 0


def sidecar_model(storage: Storage, uri: str) -> str | None:
    """The model spec a sidecar was made with (None when there is no sidecar)."""
    if not storage.exists(uri):
        return None
    metadata = schema_from_bytes(storage.read_bytes(uri)).metadata or {}
    return metadata.get(b"caption_model", b"").decode()


def caption_run(run_uri: str, model_spec: str, storage_settings: StorageSettings,
                actors: int = 1, device: str = "auto", address: str | None = None) -> CaptionSummary:
    """Caption every committed shard of a run that lacks a sidecar from this model spec."""
    import ray

    storage = Storage(storage_settings)
    state = RunState(storage, run_uri)
    if state.read_run_json() is None:
        raise FileNotFoundError(f"{run_uri}: not a run folder (no run.json)")
    summary = CaptionSummary(run_uri)
    todo: list[tuple[str, str]] = []
    for commit in state.commits():
        paths = ShardPaths(commit.folder, commit.shard)
        out = sidecar_uri(paths)
        if sidecar_model(storage, out) == model_spec:
            summary.shards_kept += 1
        elif commit.stats.ok:
            todo.append((paths.tar, out))
    if not todo:
        return summary
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)  # None: $RAY_ADDRESS or a local Ray
    gpus = int(ray.cluster_resources().get("GPU", 0))
    options = {"num_gpus": 1} if gpus else {"num_cpus": CPU_ACTOR_CPUS}
    count = max(1, min(actors or max(1, gpus), len(todo)))
    remote = ray.remote(**options)(CaptionActor)
    pool = [remote.remote(model_spec, device, storage_settings) for _ in range(count)]
    # Each actor runs its queue in order; shards are dealt round-robin (they are similar in size).
    pending = {pool[i % count].caption_shard.remote(tar, out): tar
               for i, (tar, out) in enumerate(todo)}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            tar = pending.pop(ready[0])
            try:
                summary.captions += ray.get(ready[0])
                summary.shards_captioned += 1
            except ray.exceptions.RayError as error:
                cause = getattr(error, "cause", None) or error
                log.error("captioning %s failed: %s", tar, cause)
                summary.failed[tar] = f"{type(cause).__name__}: {cause}"
    finally:
        for actor in pool:
            ray.kill(actor)
    return summary
