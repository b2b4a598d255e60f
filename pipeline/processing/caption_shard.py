"""Captioning one committed output shard: stream its result images, caption them in batches,
publish the shard's sidecar. Plain Python (the caption stage's actors wrap it)."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

from pipeline.outputs.caption_sidecars import write_sidecar
from pipeline.processing.caption_model import ModelCaptioner
from pipeline.storage import Storage

log = logging.getLogger(__name__)

RESULT_EXTENSIONS = ("result.png", "result.jpg", "result.webp", "png", "jpg", "webp")
BATCH = 8


@dataclass
class ResultImage:
    key: str
    item_id: str
    data: bytes


def result_images(storage: Storage, tar_uri: str) -> Iterator[ResultImage]:
    """The result image of every sample of an output tar, streamed in tar order."""
    with storage.open_read(tar_uri) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        key: str | None = None
        members: dict[str, bytes] = {}
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
                file = tar.extractfile(member)
                assert file is not None  # regular files always have data
                members[ext] = file.read()
        if key is not None:
            yield from _result_of(tar_uri, key, members)


def _result_of(tar_uri: str, key: str, members: dict[str, bytes]) -> Iterator[ResultImage]:
    image = next((members[e] for e in RESULT_EXTENSIONS if e in members), None)
    if image is None:
        log.warning("%s: sample %r has no result image; no caption", tar_uri, key)
        return
    item_id = json.loads(members["json"]).get("id", key) if "json" in members else key
    yield ResultImage(key, item_id, image)


class ShardCaptioner:
    """Captions whole shards with one loaded captioning model."""

    def __init__(self, captioner: ModelCaptioner, storage: Storage, model_spec: str):
        self.captioner = captioner
        self.storage = storage
        self.model_spec = model_spec

    def caption_shard(self, tar_uri: str, out_uri: str) -> int:
        """Caption every result of `tar_uri`, publish the sidecar at `out_uri`; the row count."""
        rows: list[dict] = []
        batch: list[ResultImage] = []

        def flush() -> None:
            images = [Image.open(io.BytesIO(r.data)).convert("RGB") for r in batch]
            for result, caption in zip(batch, self.captioner.caption_images(images), strict=True):
                rows.append({"key": result.key, "id": result.item_id, "caption": caption})
            batch.clear()

        for result in result_images(self.storage, tar_uri):
            batch.append(result)
            if len(batch) >= BATCH:
                flush()
        if batch:
            flush()
        write_sidecar(self.storage, out_uri, rows, self.model_spec, tar_uri)
        return len(rows)
