"""Handing tasks to a pool's actors until each one has an answer: the one dispatch loop.

Both the run (shards to model actors) and the caption stage (committed shards to caption
actors) use it, so they share one policy: keep every actor busy with up to `tasks_per_actor`
tasks; a task whose actor died goes to a fresh actor, up to `max_attempts`; a task that raised
fails alone (its error, unwrapped, is the reason) and the others go on.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import ray

from pipeline.execution.pool import ACTOR_LOST, ActorPool

log = logging.getLogger(__name__)

T = TypeVar("T")
POLL_S = 0.5


@dataclass
class _InFlight(Generic[T]):
    slot: int
    handle: Any
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
) -> None:
    """Run every task on `pool`.

    `submit(handle, task, seq)` starts a task on an actor (`seq` counts dispatches, so an actor
    holding several tasks can serve them oldest first); `on_result(task, value)` and
    `on_failure(task, reason)` receive each task's end exactly once; `on_tick` runs about every
    `POLL_S` seconds (progress).
    """
    queue: deque[tuple[T, int]] = deque((task, 1) for task in tasks)
    in_flight: dict[ray.ObjectRef, _InFlight[T]] = {}
    seq = 0
    while queue or in_flight:
        busy = Counter(entry.slot for entry in in_flight.values())
        for slot in pool.free_slots(busy):
            if not queue:
                break
            task, attempt = queue.popleft()
            seq += 1
            handle = pool.actors[slot]
            in_flight[submit(handle, task, seq)] = _InFlight(slot, handle, task, attempt)
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_S)
        if on_tick is not None:
            on_tick()
        for ref in ready:
            entry = in_flight.pop(ref)
            try:
                value = ray.get(ref)
            except ACTOR_LOST as error:
                pool.replace_if_current(entry.slot, entry.handle)
                if entry.attempt < max_attempts:
                    log.warning(
                        "actor died on %s (attempt %d): %s; retrying on a fresh actor",
                        describe(entry.task),
                        entry.attempt,
                        error,
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
