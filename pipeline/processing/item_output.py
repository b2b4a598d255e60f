"""The writing side of one item: its record, and for an ok result the sample's members
(encoded image, caption, provenance, optional references and scores). Runs in the shard's I/O
pool while the model works on the next batch (`processing.shard`). A result that cannot be
recorded ok (a flat or non-finite image, a caption template or encoder failure) becomes the
item's error here."""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from pipeline.config import RunConfig
from pipeline.errors import ItemStatus
from pipeline.models.base import GenerationOutcome, GenerationRequest
from pipeline.outputs.commit import sample_key
from pipeline.outputs.layout import ShardPaths
from pipeline.outputs.records import ItemRecord
from pipeline.outputs.samples import encode_image, sample_members
from pipeline.processing.captions import Captioner
from pipeline.processing.item_reading import ReadItem, caption_fields
from pipeline.processing.output_checks import output_problem
from pipeline.processing.provenance import item_provenance
from pipeline.processing.style_loras import StyleLoraResolver
from pipeline.processing.task import ShardTask
from pipeline.storage.uris import public_uri


class Scorer(Protocol):
    def score(
        self, fields: dict, request: GenerationRequest, image: np.ndarray
    ) -> dict[str, float]:
        """Quality scores of one result (e.g. {"clip_t": 0.31, "style": 0.72})."""


class ItemFinisher:
    """Turns a prepared item and the model's outcome into its record and sample members."""

    def __init__(
        self,
        config: RunConfig,
        captioner: Captioner,
        style_loras: StyleLoraResolver,
        scorer: Scorer | None = None,
    ):
        self.config = config
        self.captioner = captioner
        self.style_loras = style_loras
        self.scorer = scorer

    def finish(
        self, task: ShardTask, prepared: ReadItem, outcome: GenerationOutcome | None
    ) -> tuple[ItemRecord, dict | None]:
        """Encode + caption + provenance for one item: (its record, its members or None)."""
        item = prepared.item
        request = prepared.request
        key = sample_key(prepared.item_id)
        record = ItemRecord(
            id=prepared.item_id,
            key=key,
            status=ItemStatus.OK,
            attempts=task.prior_attempts.get(prepared.item_id, 0) + 1,
            retry=task.retry,
            prompt=item.prompt if item else None,
            input_shard=public_uri(task.shard.uri),
            input_row=prepared.row,
            read_s=prepared.read_s,
        )
        if request is not None:
            record.seed = request.seed
        if prepared.skipped:
            record.status, record.error = ItemStatus.SKIPPED, prepared.skipped
            return record, None
        error = prepared.error or (outcome.error if outcome else None)
        if error is not None:
            record.status, record.error = error.kind, str(error)
            return record, None
        assert outcome is not None and outcome.image is not None  # no error: the model ran it
        assert item is not None and request is not None  # no error: it was read and prepared
        problem = output_problem(outcome.image, request)
        if problem is not None:
            record.status, record.error = ItemStatus.MODEL_ERROR, f"item {item.id!r}: {problem}"
            return record, None
        record.model_s = outcome.timings.get("model_s")
        params = outcome.parameters
        record.width, record.height = params.get("width"), params.get("height")
        record.steps, record.guidance = params.get("steps"), params.get("guidance")
        t0 = time.perf_counter()
        try:
            fields = caption_fields(item, self.config.model)
            caption = self.captioner.caption(fields, outcome.image)
            if self.scorer is not None:
                record.scores = self.scorer.score(fields, request, outcome.image)
            options = self.config.outputs
            image_bytes = encode_image(outcome.image, options)
            references = self._reference_images(request) if options.include_references else None
            provenance = item_provenance(
                config=self.config,
                fingerprint=task.fingerprint,
                weights=task.weights,
                random_weights=task.random_weights,
                key=key,
                manifest_uri=task.shard.uri,
                item=item,
                request=request,
                outcome=outcome,
                caption=caption,
                scores=record.scores,
                style_loras=self.style_loras,
            )
            members = sample_members(image_bytes, caption, provenance, options, references)
        except Exception as err:  # a caption template or encoder failure is this item's failure
            record.status, record.error = ItemStatus.MODEL_ERROR, f"item {item.id!r}: output: {err}"
            return record, None
        record.caption = caption
        record.encode_s = time.perf_counter() - t0
        tar = ShardPaths(task.folder, task.shard.index, task.retry).tar
        record.output_key = f"{public_uri(tar)}#{key}"
        return record, members

    def _reference_images(self, request: GenerationRequest) -> dict[str, bytes]:
        refs: dict[str, bytes] = {}
        if request.subject is not None:
            refs["subject"] = encode_image(request.subject, self.config.outputs)
        for i, style in enumerate(request.styles):
            refs["style" if i == 0 else f"style{i}"] = encode_image(style, self.config.outputs)
        return refs
