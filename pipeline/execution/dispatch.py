"""Handing tasks to a pool's actors until each one has an answer: the one dispatch loop.

The run (shards to model actors), the caption stage and eval all use it, so they share one
policy: a task goes to an actor as soon as one is loaded, up to `tasks_per_actor` each; a task
whose actor died (killed, or lost with its node) goes back to the queue for another actor, up to
`max_attempts`; a task that raised fails alone (its error, unwrapped, is the reason) and the
others go on; when no actor has been placed for `pool.capacity_wait_s`, the queued tasks fail
with that reason. A `Drain` (a signal) stops handing out tasks and waits for those in flight
until its deadline.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import ray

from pipeline.execution.drain import Drain
from pipeline.execution.pool import ACTOR_LOST, ActorPool, Slot
from pipeline.wording import counted

log = logging.getLogger(__name__)

T = TypeVar("T")
POLL_S = 0.5


@dataclass
class _InFlight(Generic[T]):
    slot: Slot
    task: T
    attempt: int


def dispatch(
    pool: ActorPool,
    tasks: Sequence[T],
    submit: Callable[[Any, T, int], ray.ObjectRef],
    on_result: Callable[[T, Any], None],
    on_failure: Callable[[T, str], None],
    max_attempts: int,
    describe: Callable[[T], str] = str,
    on_tick: Callable[[], None] | None = None,
    drain: Drain | None = None,
    claim: Callable[[T], bool] | None = None,
) -> None:
    """Run every task on `pool` (or until `drain` stops the loop: the tasks left undone are
    simply not committed, and a rerun does them).

    `submit(handle, task, seq)` starts a task on an actor (`seq` counts dispatches, so an actor
    holding several tasks can serve them oldest first); `on_result(task, value)` and
    `on_failure(task, reason)` receive each task's end exactly once; `on_tick` runs about every
    `POLL_S` seconds (progress). `claim(task)` is asked right before a task's first submission
    (the run lease's shard claim: another driver may be running it); a task it refuses is
    dropped without an answer, and the caller decides what to do about it.
    """
    queue: deque[tuple[T, int]] = deque((task, 1) for task in tasks)
    in_flight: dict[ray.ObjectRef, _InFlight[T]] = {}
    seq = 0
    while queue or in_flight:
        if drain is not None and drain.requested:
            if queue:
                log.warning(
                    "stopping: %s left for a rerun; waiting up to %.0f s for the %d in flight",
                    counted(len(queue), "queued task"),
                    drain.left_s(),
                    len(in_flight),
                )
                queue.clear()
            if not in_flight:
                break
            if drain.expired():
                log.warning(
                    "stopping: %s still running at the end of the grace",
                    counted(len(in_flight), "task"),
                )
                break
        busy = Counter(entry.slot.id for entry in in_flight.values())
        pool.maintain(len(queue) + len(busy))  # an actor per queued task, plus the busy ones
        for slot in pool.ready():
            for _ in range(pool.spec.tasks_per_actor - busy[slot.id]):
                while queue and claim is not None and queue[0][1] == 1 and not claim(queue[0][0]):
                    queue.popleft()  # claimed by another driver: the caller looks at it again
                if not queue:
                    break
                task, attempt = queue.popleft()
                seq += 1
                in_flight[submit(slot.handle, task, seq)] = _InFlight(slot, task, attempt)
        starved = pool.starved_for()
        if queue and starved is not None and starved >= pool.capacity_wait_s:
            reason = pool.capacity_reason()
            log.error("%s: %s failed", reason, counted(len(queue), "task"))
            while queue:
                on_failure(queue.popleft()[0], reason)
            continue
        waiting = list(in_flight) + pool.pending_refs()
        if waiting:
            ready, _ = ray.wait(waiting, num_returns=1, timeout=POLL_S)
        else:  # nothing placed yet: the next `maintain` asks again
            ready = []
            time.sleep(POLL_S)
        if on_tick is not None:
            on_tick()
        for ref in ready:
            entry = in_flight.pop(ref, None)
            if entry is None:
                pool.settle(ref)
                continue
            try:
                value = ray.get(ref)
            except ACTOR_LOST as error:
                pool.lost(entry.slot)
                if entry.attempt < max_attempts:
                    log.warning(
                        "actor died on %s (attempt %d): %s; retrying on another actor",
                        describe(entry.task),
                        entry.attempt,
                        str(error).splitlines()[0] if str(error) else type(error).__name__,
                    )
                    queue.append((entry.task, entry.attempt + 1))
                else:
                    on_failure(entry.task, f"actor died {entry.attempt} times: {error}")
                continue
            except ray.exceptions.RayTaskError as error:
                cause = error.cause if getattr(error, "cause", None) else error
                log.error("%s failed: %s", describe(entry.task), cause)
                on_failure(entry.task, f"{type(cause).__name__}: {cause}")
                continue
            on_result(entry.task, value)
