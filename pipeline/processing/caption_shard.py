"""Captioning one committed output shard: stream its result images, caption them in batches,
publish the shard's sidecar. Plain Python (the caption stage's actors wrap it)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

from pipeline.outputs.caption_sidecars import write_sidecar
from pipeline.outputs.tar_reading import tar_samples
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
    for key, members in tar_samples(storage, tar_uri, _captioned_member):
        yield from _result_of(tar_uri, key, members)


def _captioned_member(ext: str) -> bool:
    """Only what captioning reads: the result image and the provenance (for the id)."""
    return ext in RESULT_EXTENSIONS or ext == "json"


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
