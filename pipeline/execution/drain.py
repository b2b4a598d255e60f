"""Stopping a run cleanly on SIGTERM / SIGINT (a KubeRay stop, a preempted head, Ctrl-C).

The first signal asks the dispatch loop to hand out no more shards and to wait for the shards in
flight to commit, for up to the grace period; a second signal ends the wait at once. Shards
left undone are not committed, so rerunning the same command resumes the run with the same
bytes; the run then exits with `ExitCode.INTERRUPTED`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Drain:
    """Whether a stop was asked for, and until when the shards in flight may finish."""

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self.requested = False
        self.deadline = float("inf")

    def request(self, why: str) -> None:
        """A first request starts the grace period; a second one ends it."""
        now = time.monotonic()
        if self.requested:
            log.warning("%s again: not waiting for the shards in flight", why)
            self.deadline = now
            return
        self.requested = True
        self.deadline = now + self.grace_s
        log.warning(
            "%s: no new shards; the shards in flight get %.0f s (--drain-grace) to commit, "
            "then the run stops (exit 75, rerun the same command to resume)",
            why,
            self.grace_s,
        )

    def expired(self) -> bool:
        return self.requested and time.monotonic() >= self.deadline

    def left_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


@contextlib.contextmanager
def drain_on_signals(grace_s: float) -> Iterator[Drain]:
    """A `Drain` that SIGTERM and SIGINT request while the block runs (the previous handlers,
    Ray's included, come back after it). Outside the main thread signals cannot be caught:
    the drain is then only requested by code."""
    drain = Drain(grace_s)
    if threading.current_thread() is not threading.main_thread():
        yield drain
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        drain.request(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield drain
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
