"""The reading side of a shard: its entries in model-friendly order, and each entry prepared
for the model (images fetched and decoded within the run's input budgets, the style LoRA
resolved, defaults filled in) or turned into the reason it cannot run. Runs on the shard's
reader thread and I/O pool (`processing.shard`); a failure here is the item's, never the
shard's."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pipeline.config import RunConfig, derive_seed
from pipeline.errors import ItemError, ItemStatus
from pipeline.manifests import ManifestItem, RowError, load_image, read_shard
from pipeline.models.base import GenerationRequest
from pipeline.processing.captions import Captioner
from pipeline.processing.style_loras import StyleLoraResolver
from pipeline.processing.task import ShardTask
from pipeline.storage import Storage


@dataclass
class ReadItem:
    """An item ready for the model, or the reason it cannot be."""

    item: ManifestItem | None
    item_id: str
    row: int | None  # the row in its manifest file (None: the file itself was unreadable)
    request: GenerationRequest | None = None
    error: ItemError | None = None
    skipped: str | None = None
    read_s: float = 0.0


def group_key(entry: ManifestItem | RowError) -> tuple:
    """Sort key that brings together items a model can run back to back cheaply."""
    if isinstance(entry, RowError):
        return (0,)
    scale = 1.0 if entry.style_lora_scale is None else entry.style_lora_scale
    return (
        1,
        entry.style_lora or "",
        scale,
        entry.width or 0,
        entry.height or 0,
        entry.subject is None,
        len(entry.styles),
    )


def caption_fields(item: ManifestItem, model: str) -> dict:
    """What a caption template may name: the item's own fields and extra columns."""
    return {
        "id": item.id,
        "prompt": item.prompt or "",
        "model": model,
        "style_lora": item.style_lora or "",
        **(item.extra or {}),
    }


class ItemReader:
    """Reads a shard's entries and prepares each for the model."""

    def __init__(
        self,
        config: RunConfig,
        storage: Storage,
        captioner: Captioner,
        style_loras: StyleLoraResolver,
    ):
        self.config = config
        self.storage = storage
        self.captioner = captioner
        self.style_loras = style_loras

    def entries(self, task: ShardTask) -> list[ManifestItem | RowError]:
        """The shard's entries, grouped so items sharing a style LoRA and a token layout are
        consecutive (stable: input order within a group; malformed rows first). A model then
        loads each LoRA once per group and batches equal layouts. The shard's rows are held in
        memory while it runs, so shard size bounds an actor's memory."""
        entries = []
        for entry in read_shard(task.shard, self.storage, self.config.limits):
            item_id = entry.item_id if isinstance(entry, RowError) else entry.id
            if task.only_ids is None or item_id in task.only_ids:
                entries.append(entry)
        return sorted(entries, key=group_key)

    def prepare(self, entry: ManifestItem | RowError) -> ReadItem:
        """The entry as a `GenerationRequest`, or why it cannot run (a bad row, an image or
        LoRA that cannot be read, a caption template it cannot fill, another model's row)."""
        t0 = time.perf_counter()
        if isinstance(entry, RowError):
            return ReadItem(
                None,
                entry.item_id,
                entry.row,
                error=ItemError(entry.item_id, ItemStatus.BAD_INPUT, str(entry)),
            )
        item = entry
        prepared = ReadItem(item, item.id, item.source[1])
        if item.model and item.model != self.config.model:
            prepared.skipped = (
                f"row is for model {item.model!r}; this run uses {self.config.model!r}"
            )
            return prepared
        try:
            prepared.request = self._request(item)
        except ItemError as error:
            prepared.error = error
        except Exception as error:  # an unexpected reader failure is still this item's failure
            prepared.error = ItemError(
                item.id, ItemStatus.BAD_INPUT, f"{type(error).__name__}: {error}"
            )
        prepared.read_s = time.perf_counter() - t0
        return prepared

    def _request(self, item: ManifestItem) -> GenerationRequest:
        check_caption = getattr(self.captioner, "check", None)
        if check_caption is not None:  # a template the item cannot fill: before the model
            try:
                check_caption(caption_fields(item, self.config.model))
            except KeyError as error:
                raise ItemError(item.id, ItemStatus.BAD_INPUT, str(error.args[0])) from None
        limits = self.config.limits
        subject = load_image(item.subject, self.storage, item.id, limits) if item.subject else None
        styles = [load_image(ref, self.storage, item.id, limits) for ref in item.styles]
        lora = None
        if item.style_lora:
            lora = self.style_loras.resolve(item.style_lora, item.style_lora_scale, item.id)
        sampling = self.config.sampling
        return GenerationRequest(
            item_id=item.id,
            prompt=item.prompt or "",
            seed=item.seed if item.seed is not None else derive_seed(self.config.seed, item.id),
            subject=subject,
            styles=styles,
            style_lora=lora,
            width=item.width if item.width is not None else sampling.width,
            height=item.height if item.height is not None else sampling.height,
            steps=item.steps if item.steps is not None else sampling.steps,
            guidance=item.guidance if item.guidance is not None else sampling.guidance,
        )
