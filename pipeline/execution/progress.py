"""The driver's progress bar: items/s, failures, shards committed, ETA."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

from pipeline.outputs.commit import ShardStats

log = logging.getLogger("restyle.progress")
LOG_EVERY_S = 30.0  # without a terminal, one progress line per this many seconds


class RunProgress:
    """Counts committed shards from their markers plus live counts of shards in flight.

    On a terminal it draws a tqdm bar; in a log (Ray job, cron) it writes a line every
    `LOG_EVERY_S` seconds instead of thousands of carriage returns.
    """

    def __init__(self, enabled: bool, total_shards: int, total_items: int | None = None):
        self.interactive = enabled and sys.stderr.isatty()
        self.logging = enabled and not self.interactive
        self._started = self._last_log = time.monotonic()
        self.total_shards = total_shards
        self.committed_items = 0
        self.committed_failed = 0
        self.committed_shards = 0
        self.bar = tqdm(
            total=total_items,
            unit="img",
            disable=not self.interactive,
            file=sys.stderr,
            dynamic_ncols=True,
            desc="restyle",
            mininterval=0.5,
        )
        self._live: dict[int, tuple[int, int]] = {}
        self._refresh()

    def update_live(self, live: dict[int, tuple[int, int]]) -> None:
        self._live = live
        self._refresh()

    def shard_committed(self, stats: ShardStats) -> None:
        self.committed_shards += 1
        self.committed_items += stats.count
        self.committed_failed += stats.failed
        self._refresh()

    def _refresh(self) -> None:
        done = self.committed_items + sum(d for d, _ in self._live.values())
        failed = self.committed_failed + sum(f for _, f in self._live.values())
        self.bar.n = done
        self.bar.set_postfix(
            failed=failed, shards=f"{self.committed_shards}/{self.total_shards}", refresh=False
        )
        self.bar.refresh()
        now = time.monotonic()
        if self.logging and now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            self._log_line(done, failed, now)

    def _log_line(self, done: int, failed: int, now: float) -> None:
        rate = done / (now - self._started) if now > self._started else 0.0
        log.warning(
            "progress: %d items (%d failed), %d/%d shards, %.3f items/s",
            done,
            failed,
            self.committed_shards,
            self.total_shards,
            rate,
        )

    def close(self) -> None:
        self.bar.close()
