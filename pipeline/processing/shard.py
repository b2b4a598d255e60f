"""Processing one input shard inside an actor: read -> model -> encode -> commit, overlapped.

Three things run at once so the accelerator never waits:
- a thread pool fetches and decodes the next items (bounded by `prefetch_items`),
- the calling thread runs the model on consecutive items of equal `batch_key`,
- the same pool encodes finished images while the model works on the next batch.
When an actor holds two shards (the driver keeps one queued), `ModelTurns` lets the newer
shard read ahead while the older one still owns the model, and the older one uploads while the
newer one computes. Nothing here knows about Ray: the actor is a thin wrapper (`actor.py`).

This module is the loop; an item is read and prepared by `item_reading`, its record and sample
made by `item_output`; the unit of work is `task.ShardTask`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from pipeline.config import RunConfig, code_version
from pipeline.errors import ItemError, ItemStatus
from pipeline.models.base import GenerationOutcome, StylizationModel
from pipeline.outputs.commit import ShardStats, ShardWriter
from pipeline.outputs.layout import ShardPaths
from pipeline.processing.captions import Captioner
from pipeline.processing.item_output import ItemFinisher, Scorer
from pipeline.processing.item_reading import ItemReader, ReadItem
from pipeline.processing.scratch import ScratchSpace
from pipeline.processing.style_loras import StyleLoraResolver
from pipeline.processing.task import ShardTask
from pipeline.processing.turns import ModelTurns, Progress
from pipeline.storage import Storage

__all__ = ["MAX_CONSECUTIVE_MODEL_CRASHES", "ShardProcessor", "ShardTask", "worker_identity"]

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_MODEL_CRASHES = 3


def worker_identity(device: str) -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": device,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


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
        self.model = model
        self.storage = storage
        self.reader = ItemReader(config, storage, captioner, style_loras)
        self.finisher = ItemFinisher(config, captioner, style_loras, scorer)
        self.device = device
        self.scratch = ScratchSpace(scratch_dir) if scratch_dir is not None else None
        self.pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="restyle-io")
        self.turns = ModelTurns()
        self.progress = Progress()
        self._crashes = 0  # consecutive batches on which the model raised

    # ---------------------------------------------------------------- reading
    def _prefetch(self, task: ShardTask, out: queue.Queue, stop: threading.Event) -> None:
        """Feed futures of prepared items, in input order, into a bounded queue."""
        try:
            for entry in self.reader.entries(task):
                if stop.is_set():
                    return
                out.put(self.pool.submit(self.reader.prepare, entry))
            out.put(None)
        except BaseException as error:  # the shard itself is unreadable: the task fails
            out.put(error)

    # ---------------------------------------------------------------- main loop
    def process(self, task: ShardTask) -> ShardStats:
        """Process one shard end to end and commit it; raise only if the shard cannot commit.
        The scratch folder exists while a shard spools into it (`ScratchSpace`)."""
        with self._scratch() as scratch_dir:
            return self._process(task, scratch_dir)

    def _scratch(self) -> contextlib.AbstractContextManager[str | None]:
        return self.scratch.held() if self.scratch is not None else contextlib.nullcontext()

    def _process(self, task: ShardTask, scratch_dir: str | None) -> ShardStats:
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
            scratch_dir,
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
            pending.append(self.pool.submit(self.finisher.finish, task, prepared, outcome))

    def _drain(self, seq: int, pending: deque, writer: ShardWriter, block: bool) -> None:
        """Write finished items to the shard in input order."""
        while pending and (block or pending[0].done()):
            record, members = pending.popleft().result()
            if members is not None:
                writer.add_sample(record.key, members)
            writer.add_record(record)
            if record.status != ItemStatus.SKIPPED:
                self.progress.add(seq, record.ok)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _unblock(inbox: queue.Queue) -> None:
    """Empty the inbox so a reader blocked on a full queue can see the stop flag and exit."""
    try:
        while True:
            inbox.get_nowait()
    except queue.Empty:
        pass
