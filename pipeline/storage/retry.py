"""Riding out storage outages: a time budget per operation, spent on jittered exponential backoff.

botocore's "standard" retry mode retries each HTTP request a few times within seconds; that is
enough for a dropped connection, not for a store that answers 503 for a minute while it fails
over. Every S3 operation of `Storage` therefore runs inside one `RetryBudget` (in
`S3Backend.call` and the download stream of `S3ObjectReader`, nowhere else): a transient
failure (5xx, SlowDown, connection refused or reset, timeouts) that survived botocore's burst is
retried after a full-jitter backoff (uniform in [0, min(cap, base x 2^n)]) until the budget
(`StorageSettings.retry_budget_s`, `--storage-retry-budget`, default 300 s; 20 s for the interactive
commands, `pipeline.cli.common.storage_settings`) is spent. Each retry
is logged at WARNING with the operation and the time spent so far; errors that retrying cannot
fix (403, 404, credentials) are never retried. When the budget runs out, the error says how long
the storage was unavailable, so a failed shard reads as "the store was down for 5 minutes".
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field

from pipeline.storage.errors import StorageError

log = logging.getLogger(__name__)
ARROW_SCALE_S = 0.025  # pyarrow's default strategy waits 25 ms x 2^n before retry n


def backoff_delay(failure: int, base_s: float, cap_s: float) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base x 2^(failure-1))]."""
    return random.uniform(0.0, min(cap_s, base_s * 2 ** max(failure - 1, 0)))


@dataclass
class RetryBudget:
    """The retries of one operation (or of one stream since its last progress).

    `min_failures`: failures always retried, budget or not (a stream's `max_attempts`).
    """

    budget_s: float
    base_s: float = 0.5
    cap_s: float = 30.0
    min_failures: int = 0
    failures: int = 0
    attempts: int = 0  # HTTP attempts behind the failures (botocore's included)
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def restart(self) -> None:
        """Progress was made (a stream received bytes): the next outage gets a whole budget."""
        self.failures = 0
        self.started = time.monotonic()

    def next_delay(self) -> float | None:
        """Seconds to wait before the next try, or None when the budget is spent."""
        self.failures += 1
        left = self.budget_s - self.elapsed_s
        if left <= 0 and self.failures >= self.min_failures:
            return None
        delay = backoff_delay(self.failures, self.base_s, self.cap_s)
        return delay if left <= 0 else min(delay, left)

    def retry_or_raise(self, failure: StorageError, cause: BaseException) -> None:
        """Sleep before the next try of a transient `failure`, or raise it (with how long the
        storage was unavailable) when it is not transient or the budget is spent."""
        if not failure.transient:
            raise failure from cause
        delay = self.next_delay()
        if delay is None:
            raise self.exhausted(failure) from cause
        log.warning(
            "storage %s %s: %s; retrying in %.1f s (%.0f s of the %.0f s storage retry "
            "budget spent, failure %d)",
            failure.operation,
            failure.uri,
            failure.reason,
            delay,
            self.elapsed_s,
            self.budget_s,
            self.failures,
        )
        time.sleep(delay)

    def exhausted(self, failure: StorageError) -> StorageError:
        """`failure`, worded as an outage that outlasted the budget (one line)."""
        if self.failures <= 1 and self.budget_s == 0:
            return StorageError(
                failure.uri,
                failure.operation,
                failure.reason,
                transient=True,
                attempts=max(self.attempts, failure.attempts),
            )
        return StorageError(
            failure.uri,
            failure.operation,
            f"storage unavailable for {self.elapsed_s:.0f} s, past the {self.budget_s:.0f} s "
            f"retry budget (--storage-retry-budget); last error: {failure.reason}",
            transient=True,
            attempts=max(self.attempts, failure.attempts),
        )


def arrow_attempts(max_attempts: int, budget_s: float) -> int:
    """Attempts of pyarrow's default strategy (25 ms x 2^n before retry n) whose waits add up
    to at least `budget_s`: the same outage rides through a Parquet read as through boto3."""
    if budget_s <= 0:
        return max_attempts
    retries = math.ceil(math.log2(budget_s / ARROW_SCALE_S + 2)) - 1
    return max(max_attempts, retries + 1)
