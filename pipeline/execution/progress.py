"""The driver's progress: a live display on a terminal, periodic INFO lines in a log.

What a person reads, in both forms: the phase (starting Ray, loading N actors, running), items
done of the total with the percentage, failures by class, images/s and the time left. Images/s
has one definition in restyle (`pipeline.outputs.status.images_per_second`: ok images over the
seconds shards were being processed); live, that is ok images since the first shard started.
Extra lines under the bar (`notes`: e.g. actors waiting for resources) can be set at any time.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from rich.console import Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from pipeline.execution.logs import STDERR, on_terminal
from pipeline.outputs.commit import ShardStats
from pipeline.wording import counted, of_total

log = logging.getLogger("restyle.progress")
LOG_EVERY_S = 30.0  # without a terminal, one progress line per this many seconds
BAR_WIDTH = 32  # the bar line stays under 80 columns up to 10^9 items


def duration(seconds: float | None) -> str:
    """`1h 02m`, `4m 05s`, `12s`; "?" while unknown."""
    if seconds is None:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


class RunProgress:
    """Counts committed shards from their markers plus live counts of the shards in flight."""

    def __init__(
        self,
        enabled: bool,
        total_shards: int,
        total_items: int | None = None,
        log_every_s: float = LOG_EVERY_S,
    ):
        self.interactive = enabled and on_terminal()
        self.logging = enabled and not self.interactive
        self.total_shards = total_shards
        self.total_items = total_items
        self.log_every_s = log_every_s
        self.phase_text = "starting"
        self.notes: list[str] = []
        self.committed_shards = 0
        self.committed: Counter[str] = Counter()  # "ok", "skipped" and error classes, from markers
        self._live_counts: dict[int, tuple[int, int]] = {}
        # shards another driver of the run claimed (`--join`): shard -> its items
        self.elsewhere: dict[int, int] = {}
        self._work_started: float | None = None
        self._last_log = time.monotonic()
        # The bar line has a fixed width (under 80 columns); the phase and the figures go on
        # the line above it, which wraps instead of cutting numbers off on a narrow terminal.
        self._bar = Progress(
            BarColumn(bar_width=BAR_WIDTH),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            TimeElapsedColumn(),
            console=STDERR,
        )
        self._task = self._bar.add_task("starting", total=total_items, eta="?")
        self._display: Live | None = None
        if self.interactive:
            self._display = Live(
                self.view(), console=STDERR, refresh_per_second=4, redirect_stderr=True
            )
            self._display.start()

    # ------------------------------------------------------------------ what happens
    def phase(self, text: str) -> None:
        """A new phase (starting Ray, staging weights, loading N actors, running)."""
        self.phase_text = text
        if self.logging:
            log.info("%s", text, extra={"phase": text})
        self._refresh()

    def set_notes(self, lines: list[str]) -> None:
        """Extra lines shown under the bar (and logged when they change, without a terminal)."""
        if lines != self.notes and self.logging:
            for line in lines:
                log.info("%s", line)
        self.notes = list(lines)
        self._refresh()

    def work_started(self) -> None:
        """The first shard went to an actor: images/s and the ETA count from here."""
        if self._work_started is None:
            self._work_started = time.monotonic()

    def update_live(self, live: dict[int, tuple[int, int]]) -> None:
        self._live_counts = live
        self._refresh()

    def shard_committed(self, stats: ShardStats) -> None:
        self.committed_shards += 1
        self.committed.update({"ok": stats.ok, "skipped": stats.skipped, **stats.errors})
        self._refresh()

    def claimed_elsewhere(self, shard: int, items: int) -> None:
        """Another driver claimed `shard` (`--join`): its items leave this driver's totals and
        ETA, and the figures say how many shards are left to it."""
        self.elsewhere[shard] = items
        self._bar.update(self._task, total=self.own_items)
        self._refresh()

    def claimed_here(self, shard: int) -> None:
        """This driver took `shard` (back) after all: it counts here again."""
        if self.elsewhere.pop(shard, None) is not None:
            self._bar.update(self._task, total=self.own_items)
            self._refresh()

    # ------------------------------------------------------------------ the numbers
    @property
    def own_items(self) -> int | None:
        """Items this driver is to run: the total less those of shards another driver claimed."""
        if self.total_items is None:
            return None
        return max(0, self.total_items - sum(self.elsewhere.values()))

    @property
    def done(self) -> int:
        """Items finished (ok or failed; skipped rows excluded, as in the live counts)."""
        committed = sum(n for kind, n in self.committed.items() if kind != "skipped")
        return committed + sum(d for d, _ in self._live_counts.values())

    @property
    def failed(self) -> int:
        committed = sum(n for kind, n in self.committed.items() if kind not in ("ok", "skipped"))
        return committed + sum(f for _, f in self._live_counts.values())

    @property
    def ok(self) -> int:
        return self.done - self.failed

    def images_per_s(self, now: float | None = None) -> float:
        if self._work_started is None:
            return 0.0
        elapsed = (now or time.monotonic()) - self._work_started
        return self.ok / elapsed if elapsed > 0 else 0.0

    def eta_s(self, now: float | None = None) -> float | None:
        own = self.own_items
        if own is None or self._work_started is None:
            return None
        elapsed = (now or time.monotonic()) - self._work_started
        if self.done == 0 or elapsed <= 0:
            return None
        return max(0, own - self.done) * elapsed / self.done

    def failures(self) -> str:
        """`2 failed (bad_input 1, io_error 1)`; classes of shards in flight come at commit."""
        classes = {k: n for k, n in self.committed.items() if k not in ("ok", "skipped") and n}
        shown = ", ".join(f"{kind} {n}" for kind, n in sorted(classes.items()))
        return f"{self.failed} failed" + (f" ({shown})" if shown else "")

    def detail(self) -> str:
        """The line above the bar: `running | 2 failed (bad_input 1, io_error 1) | 1/2 shards |
        2.59 images/s`."""
        rate = self.images_per_s()
        return (
            f"{self.phase_text} | {self.failures()} | {self.shard_figures()} | {rate:.2f} images/s"
        )

    def shard_figures(self) -> str:
        """`1/2 shards`, or `1/2 shards (+3 shards claimed by another driver)` with `--join`."""
        own = of_total(self.committed_shards, self.total_shards - len(self.elsewhere), "shard")
        if not self.elsewhere:
            return own
        return f"{own} (+{counted(len(self.elsewhere), 'shard')} claimed by another driver)"

    # ------------------------------------------------------------------ drawing
    def view(self) -> Group:
        """What the terminal shows: the figures, the bar, the notes."""
        header = Text(self.detail(), style="bold")
        lines = [Text(f"  {note}") for note in self.notes]
        return Group(header, self._bar, *lines)

    def _refresh(self) -> None:
        self._bar.update(
            self._task,
            description=self.phase_text,
            completed=self.done,
            eta=duration(self.eta_s()),
        )
        if self._display is not None:
            self._display.update(self.view())
        now = time.monotonic()
        if (
            self.logging
            and self._work_started is not None
            and now - self._last_log >= self.log_every_s
        ):
            self._last_log = now
            self.log_line(now)

    def log_line(self, now: float | None = None) -> None:
        own = self.own_items
        percent = f" ({100 * self.done / own:.1f}%)" if own else ""
        log.info(
            "progress: %s%s, %s, %s, %.2f images/s, ETA %s",
            of_total(self.done, own, "item"),
            percent,
            self.failures(),
            self.shard_figures(),
            self.images_per_s(now),
            duration(self.eta_s(now)),
            extra={
                "progress": {
                    "items_done": self.done,
                    "items_total": own,
                    "items_claimed_elsewhere": sum(self.elsewhere.values()),
                    "failed": self.failed,
                    "errors": {
                        k: n for k, n in self.committed.items() if k not in ("ok", "skipped")
                    },
                    "shards_committed": self.committed_shards,
                    "shards_total": self.total_shards,
                    "shards_claimed_elsewhere": len(self.elsewhere),
                    "images_per_s": self.images_per_s(now),
                    "eta_s": self.eta_s(now),
                }
            },
        )

    def close(self) -> None:
        if self.logging and self._work_started is not None:
            self.log_line()
        if self._display is not None:
            self._refresh()
            self._display.stop()
            self._display = None
