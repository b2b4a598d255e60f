"""Stopping a command cleanly on SIGTERM / SIGINT (a KubeRay stop, a preempted head, Ctrl-C).

While a run dispatches shards (`drain_on_signals`), the first signal asks the dispatch loop to
hand out no more shards and to wait for the shards in flight to commit, for up to the grace
period; a second signal ends the wait at once. Shards left undone are not committed, so
rerunning the same command resumes the run with the same bytes; the run then exits with
`ExitCode.INTERRUPTED`.

Everywhere else in a command (`stop_on_signals`: planning, joining Ray, waiting for actors or
GPU capacity, eval and caption stages) there is nothing in flight to wait for: the signal
raises `Interrupted` where the command is, its cleanup runs (leases, Ray), and it exits with
the same code and one line, instead of Python's 143 / Ray's `sys.exit(15)` / click's
"Aborted!" with 1.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

from pipeline.errors import Interrupted

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


SignalHandler = Callable[[int, FrameType | None], None]


@contextlib.contextmanager
def _handling_signals(handler: SignalHandler | None) -> Iterator[bool]:
    """While the block runs, SIGTERM and SIGINT go to `handler` (None: to whatever is installed
    meanwhile); the handlers from before come back after it. Only the main thread can catch
    signals: elsewhere nothing changes. Yields whether the handlers are in its hands."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    try:
        if handler is not None:
            for sig in SIGNALS:
                signal.signal(sig, handler)
        yield True
    finally:
        for sig, earlier in previous.items():
            signal.signal(sig, earlier)


@contextlib.contextmanager
def drain_on_signals(grace_s: float) -> Iterator[Drain]:
    """A `Drain` that SIGTERM and SIGINT request while the block runs (the previous handlers,
    Ray's included, come back after it). Outside the main thread signals cannot be caught:
    the drain is then only requested by code."""
    drain = Drain(grace_s)

    def handle(signum: int, frame: FrameType | None) -> None:
        drain.request(signal.Signals(signum).name)

    with _handling_signals(handle):
        yield drain


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise `Interrupted` in the main thread while the block runs (the
    previous handlers come back after it); elsewhere nothing changes."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise stopped_by(signum)

    with _handling_signals(stop):
        yield


def stopped_by(signum: int) -> Interrupted:
    name = signal.Signals(signum).name
    return Interrupted(
        f"stopped by {name}: what was committed is kept; rerun the same command to resume", name
    )


@contextlib.contextmanager
def keeping_signal_handlers() -> Iterator[None]:
    """Restore the SIGTERM/SIGINT handlers after the block: `ray.init` installs its own SIGTERM
    handler in the driver, `sys.exit(15)` (an exit code of no table); a SIGTERM it caught
    meanwhile becomes `Interrupted`."""
    with _handling_signals(None) as main_thread:
        try:
            yield
        except SystemExit as exit_:
            if main_thread and exit_.code == signal.SIGTERM:
                raise stopped_by(signal.SIGTERM) from None
            raise
