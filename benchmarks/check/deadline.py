"""The check's wall-clock deadline: a clean stop, whatever is running when it comes.

A SIGALRM handler raises `DeadlineReached` in the main thread at the deadline (also inside a
compilation or a shard run, which then unwind as on any error); before each measurement the plan
also skips what cannot start with less than `min_start_s` left. Either way the report keeps every
figure measured so far and says where the check stopped.
"""

from __future__ import annotations

import signal
import time


class DeadlineReached(BaseException):
    """The check ran out of its wall-clock budget. A BaseException, like KeyboardInterrupt: the
    models turn every `Exception` raised for an item into that item's error, and the deadline
    must stop the check, not fail an image."""


class Deadline:
    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.start = time.monotonic()
        self._armed = False

    def arm(self) -> None:
        """From now on, the deadline interrupts whatever runs in the main thread."""

        def expire(signum, frame):
            raise DeadlineReached(f"the {self.seconds:.0f} s deadline was reached")

        signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, max(0.01, self.remaining()))
        self._armed = True

    def disarm(self) -> None:
        if self._armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._armed = False

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()
