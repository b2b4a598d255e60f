"""Coordination between the shards one actor holds at once.

The driver keeps two shards in flight per actor: the newer one reads ahead while the older one
owns the model, and commits while the newer one computes. `ModelTurns` hands the model out in
dispatch order; `Progress` keeps the live item counts the driver polls for its progress bar.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ModelTurns:
    """Lets shards use the model strictly in dispatch order (`seq`), one at a time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: list[int] = []
        self._busy = False

    @contextmanager
    def turn(self, seq: int) -> Iterator[None]:
        with self._cond:
            self._waiting.append(seq)
            self._cond.wait_for(lambda: not self._busy and min(self._waiting) == seq)
            self._waiting.remove(seq)
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class Progress:
    """Live item counts of the shards in flight, polled by the driver for its progress bar.

    Counts of a shard disappear when it ends (committed or not): the driver counts committed
    shards from their markers, so a shard redone after an actor death is never counted twice.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, list[int]] = {}

    def add(self, seq: int, ok: bool) -> None:
        with self._lock:
            counts = self._live.setdefault(seq, [0, 0])
            counts[0] += 1
            counts[1] += 0 if ok else 1

    def forget(self, seq: int) -> None:
        with self._lock:
            self._live.pop(seq, None)

    def snapshot(self) -> dict[int, tuple[int, int]]:
        """seq -> (items done, items failed) for shards still in flight."""
        with self._lock:
            return {seq: (c[0], c[1]) for seq, c in self._live.items()}
