"""A run shared between drivers: the run lease held while this driver runs, and the shard claim
its dispatch loop asks before each shard (`pipeline.outputs.lease` says how both work).

`held()` refuses a second driver (`RunLeaseHeldError`, naming the holder) before Ray starts, or
with `DriverSettings.join` makes this driver a helper. `dispatch_all` runs one dispatch loop
(`pipeline.execution.dispatch`, given `claim` as its hook) and repeats it for the shards another
live driver had claimed until each is committed, or taken over when that driver goes away: so
holder and helpers all end with the whole run done, and no shard is run twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pipeline.config import DriverSettings
from pipeline.execution.progress import RunProgress
from pipeline.outputs.layout import ShardPaths
from pipeline.outputs.lease import RunLease
from pipeline.processing.shard import ShardTask
from pipeline.storage import Storage, StorageError
from pipeline.wording import counted

log = logging.getLogger(__name__)
CLAIM_POLL_S = 5.0  # how often shards another driver runs are looked at again
DispatchLoop = Callable[[list[ShardTask], Callable[[ShardTask], bool]], None]


class SharedRun:
    def __init__(self, storage: Storage, run_uri: str, settings: DriverSettings):
        self.storage = storage
        self.run_uri = run_uri
        self.settings = settings
        self.lease: RunLease | None = None  # while `held`

    @contextmanager
    def held(self) -> Iterator[RunLease]:
        """The run lease (or a helper's place, with --join) for the duration of the block;
        released at the end, however it ends."""
        lease = RunLease(self.storage, self.run_uri, self.settings.lease_ttl_s)
        lease.acquire(join=self.settings.join)
        self.lease = lease
        try:
            yield lease
        finally:
            self.lease = None
            lease.release()

    def claim(self, task: ShardTask) -> bool:
        """The dispatch loop's hook: may this driver run `task` now? (Outside `held`: yes.)"""
        if self.lease is None:
            return True
        try:
            return self.lease.claim(
                task.shard.index, task.retry, committed=lambda: self.committed(task)
            )
        except StorageError as error:  # the store stayed down past the retry budget
            log.warning(
                "shard %d: could not claim it (%s); looked at again later", task.shard.index, error
            )
            return False

    @staticmethod
    def items_of(task: ShardTask) -> int:
        """How many items `task` runs (for the progress figures; counted by the driver)."""
        return len(task.only_ids) if task.only_ids is not None else task.items or 0

    def committed(self, task: ShardTask) -> bool:
        return self.storage.exists(ShardPaths(self.run_uri, task.shard.index, task.retry).marker)

    def dispatch_all(
        self,
        tasks: list[ShardTask],
        run: DispatchLoop,
        progress: RunProgress | None = None,
        stopped: Callable[[], bool] | None = None,
    ) -> list[ShardTask]:
        """`run(todo, claim)` until every task is done here or committed by another driver;
        returns the tasks left to others when this driver lost its lease or was `stopped()`
        (a drain: SIGTERM)."""
        todo = tasks
        skipped: list[ShardTask] = []

        def claim(task: ShardTask) -> bool:
            if self.claim(task):
                if progress is not None:
                    progress.claimed_here(task.shard.index)
                return True
            skipped.append(task)
            if progress is not None and task.shard.index not in progress.elsewhere:
                progress.claimed_elsewhere(task.shard.index, self.items_of(task))
            return False

        while todo:
            skipped.clear()
            run(todo, claim)
            todo = [t for t in skipped if not self.committed(t)]
            if not todo or self.lease is None or self.lease.lost:
                return todo
            if stopped is not None and stopped():
                return todo
            if progress is not None:
                waiting = f"{counted(len(todo), 'shard')} being run by another driver: waiting"
                progress.set_notes([waiting])
            time.sleep(min(CLAIM_POLL_S, self.settings.lease_ttl_s / 3))
        return []
