"""Processing one input shard inside an actor: read -> model -> encode -> commit, overlapped.

Three things run at once so the accelerator never waits:
- a thread pool fetches and decodes the next items (bounded by `prefetch_items`),
- the calling thread runs the model on consecutive items of equal `batch_key`,
- the same pool encodes finished images while the model works on the next batch.
When an actor holds two shards (the driver keeps one queued), `ModelTurns` lets the newer
shard read ahead while the older one still owns the model, and the older one uploads while the
newer one computes. Nothing here knows about Ray: the actor is a thin wrapper (`actors.py`).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pipeline.config import RunConfig, code_version, derive_seed
from pipeline.errors import ItemError, ItemStatus
from pipeline.manifests import ManifestItem, ManifestShard, RowError, load_image, read_shard
from pipeline.models.base import GenerationOutcome, GenerationRequest, StylizationModel
from pipeline.outputs.commit import ShardStats, ShardWriter, sample_key
from pipeline.outputs.layout import ShardPaths
from pipeline.outputs.records import ItemRecord
from pipeline.outputs.samples import encode_image, sample_members
from pipeline.processing.captions import Captioner
from pipeline.processing.output_checks import output_problem
from pipeline.processing.provenance import item_provenance
from pipeline.processing.style_loras import StyleLoraResolver
from pipeline.processing.turns import ModelTurns, Progress
from pipeline.storage import Storage
from pipeline.storage.uris import public_uri

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_MODEL_CRASHES = 3


@dataclass(frozen=True)
class ShardTask:
    """One unit of work sent to an actor."""

    shard: ManifestShard
    folder: str  # the run folder, absolute (`public_uri`): records point into it
    fingerprint: str
    weights: dict[str, str]  # logical name -> sha256, for provenance
    random_weights: bool = False
    only_ids: frozenset[str] | None = None  # None = every item of the shard
    prior_attempts: dict[str, int] = field(default_factory=dict)  # retry commits
    retry: int = 0  # 0: the shard's first run; n: its n-th retry (`ShardPaths.retry`)
    seq: int = 0  # dispatch order; older shards get the model first


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


def worker_identity(device: str) -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": device,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


class Scorer(Protocol):
    def score(
        self, fields: dict, request: GenerationRequest, image: np.ndarray
    ) -> dict[str, float]:
        """Quality scores of one result (e.g. {"clip_t": 0.31, "style": 0.72})."""


class ShardProcessor:
    """Runs shards through one loaded model and commits them."""

    def __init__(
        self,
        config: RunConfig,
        model: StylizationModel,
        storage: Storage,
        captioner: Captioner,
        style_loras: StyleLoraResolver,
        device: str = "cpu",
        io_threads: int = 4,
        scratch_dir: str | None = None,
        scorer: Scorer | None = None,
    ):
        self.config = config
        self.scorer = scorer
        self.model = model
        self.storage = storage
        self.captioner = captioner
        self.style_loras = style_loras
        self.device = device
        self.scratch_dir = scratch_dir
        self.pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="restyle-io")
        self.turns = ModelTurns()
        self.progress = Progress()
        self._crashes = 0  # consecutive batches on which the model raised

    # ---------------------------------------------------------------- reading
    def _items(self, task: ShardTask) -> list[ManifestItem | RowError]:
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

    def _prepare(self, entry: ManifestItem | RowError) -> ReadItem:
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
            check_caption = getattr(self.captioner, "check", None)
            if check_caption is not None:  # a template the item cannot fill: before the model
                try:
                    check_caption(self._caption_fields(item))
                except KeyError as error:
                    raise ItemError(item.id, ItemStatus.BAD_INPUT, str(error.args[0])) from None
            limits = self.config.limits
            subject = (
                load_image(item.subject, self.storage, item.id, limits) if item.subject else None
            )
            styles = [load_image(ref, self.storage, item.id, limits) for ref in item.styles]
            lora = None
            if item.style_lora:
                lora = self.style_loras.resolve(item.style_lora, item.style_lora_scale, item.id)
            sampling = self.config.sampling
            prepared.request = GenerationRequest(
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
        except ItemError as error:
            prepared.error = error
        except Exception as error:  # an unexpected reader failure is still this item's failure
            prepared.error = ItemError(
                item.id, ItemStatus.BAD_INPUT, f"{type(error).__name__}: {error}"
            )
        prepared.read_s = time.perf_counter() - t0
        return prepared

    def _caption_fields(self, item: ManifestItem) -> dict:
        """What a caption template may name: the item's own fields and extra columns."""
        return {
            "id": item.id,
            "prompt": item.prompt or "",
            "model": self.config.model,
            "style_lora": item.style_lora or "",
            **(item.extra or {}),
        }

    def _prefetch(self, task: ShardTask, out: queue.Queue, stop: threading.Event) -> None:
        """Feed futures of prepared items, in input order, into a bounded queue."""
        try:
            for entry in self._items(task):
                if stop.is_set():
                    return
                out.put(self.pool.submit(self._prepare, entry))
            out.put(None)
        except BaseException as error:  # the shard itself is unreadable: the task fails
            out.put(error)

    # ---------------------------------------------------------------- main loop
    def process(self, task: ShardTask) -> ShardStats:
        """Process one shard end to end and commit it; raise only if the shard cannot commit."""
        stats = ShardStats(
            shard=task.shard.index,
            input_shard=task.shard.uri,
            run=self.config.run,
            fingerprint=task.fingerprint,
            started_at=time.time(),
            weights=dict(task.weights),
            code_version=code_version(),
            worker=worker_identity(self.device),
        )
        writer = ShardWriter(
            self.storage,
            ShardPaths(task.folder, task.shard.index, task.retry),
            stats,
            self.scratch_dir,
        )
        inbox: queue.Queue = queue.Queue(maxsize=max(1, self.config.prefetch_items))
        stop = threading.Event()
        reader = threading.Thread(
            target=self._prefetch,
            args=(task, inbox, stop),
            daemon=True,
            name=f"restyle-read-{task.shard.index}",
        )
        reader.start()
        try:
            pending: deque[Future] = deque()
            with self.turns.turn(task.seq):
                for batch in self._batches(inbox):
                    self._run_batch(task, batch, pending, writer)
                    self._drain(task.seq, pending, writer, block=False)
            self._drain(task.seq, pending, writer, block=True)
            return writer.commit()
        except BaseException:
            stop.set()
            writer.abort()
            raise
        finally:
            stop.set()
            _unblock(inbox)
            self.progress.forget(task.seq)

    def _batches(self, inbox: queue.Queue) -> Iterator[list[ReadItem]]:
        """Consecutive prepared items grouped by the model's batch key (in input order)."""
        limit = max(1, self.config.options.max_batch_size)
        batch: list[ReadItem] = []
        key = None
        while True:
            entry = inbox.get()
            if isinstance(entry, BaseException):
                raise entry
            if entry is None:
                break
            prepared = entry.result()
            if prepared.request is None:  # errors and skips go straight through, alone
                if batch:
                    yield batch
                    batch = []
                yield [prepared]
                continue
            this_key = self.model.batch_key(prepared.request)
            if batch and (this_key != key or len(batch) >= limit):
                yield batch
                batch = []
            batch.append(prepared)
            key = this_key
        if batch:
            yield batch

    def _run_batch(
        self, task: ShardTask, batch: list[ReadItem], pending: deque, writer: ShardWriter
    ) -> None:
        runnable = [p for p in batch if p.request is not None]
        requests = [p.request for p in batch if p.request is not None]
        outcomes: list[GenerationOutcome] = []
        if runnable:
            t0 = time.perf_counter()
            try:
                outcomes = self.model.generate(requests)
                self._crashes = 0
            except Exception as error:
                # The model broke its contract (it should return item errors). Record the batch
                # as failed; if it keeps happening the model is unusable: fail the shard so the
                # driver gives it to a fresh actor.
                self._crashes += 1
                log.exception("model crashed on items %s", [p.item_id for p in runnable])
                if self._crashes >= MAX_CONSECUTIVE_MODEL_CRASHES:
                    raise
                outcomes = [
                    GenerationOutcome(
                        p.item_id,
                        error=ItemError(
                            p.item_id, ItemStatus.MODEL_ERROR, f"{type(error).__name__}: {error}"
                        ),
                    )
                    for p in runnable
                ]
            per_item = (time.perf_counter() - t0) / len(runnable)
            for done in outcomes:
                done.timings.setdefault("model_s", per_item)
        by_id = iter(outcomes)
        for prepared in batch:
            outcome: GenerationOutcome | None = (
                next(by_id) if prepared.request is not None else None
            )
            pending.append(self.pool.submit(self._finish_item, task, prepared, outcome))

    def _drain(self, seq: int, pending: deque, writer: ShardWriter, block: bool) -> None:
        """Write finished items to the shard in input order."""
        while pending and (block or pending[0].done()):
            record, members = pending.popleft().result()
            if members is not None:
                writer.add_sample(record.key, members)
            writer.add_record(record)
            if record.status != ItemStatus.SKIPPED:
                self.progress.add(seq, record.ok)

    # ---------------------------------------------------------------- one item
    def _finish_item(
        self, task: ShardTask, prepared: ReadItem, outcome: GenerationOutcome | None
    ) -> tuple[ItemRecord, dict | None]:
        """Encode + caption + provenance for one item (runs in the I/O pool)."""
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
            fields = self._caption_fields(item)
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

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _unblock(inbox: queue.Queue) -> None:
    """Empty the inbox so a reader blocked on a full queue can see the stop flag and exit."""
    try:
        while True:
            inbox.get_nowait()
    except queue.Empty:
        pass
