"""Per-actor scratch space: a folder of its own, removed when the actor ends or, when it was
killed (Ray ends actors with SIGKILL, even at the end of a run), by the next actor that starts on
the node.

Spooled shard tars live here until their commit; an actor's death must not leave them behind
for ever, and one actor's cleanup must never remove another live actor's spool. `ScratchSpace`
keeps the folder only while a shard spools into it, so an actor stopped between shards (the
normal end of a run) leaves nothing at all.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PREFIX = "actor-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _owner(folder: Path) -> int | None:
    """The pid of the actor that made `folder` on this host, or None when it is not one."""
    host, _, pid = folder.name.removeprefix(PREFIX).rpartition("-")
    if not folder.name.startswith(PREFIX) or host != socket.gethostname() or not pid.isdigit():
        return None
    return int(pid)


def remove_stale(base: Path) -> list[Path]:
    """Remove scratch folders of actors of this host that are no longer running, and spool
    files left loose in `base` by earlier versions; returns what was removed."""
    removed = []
    for entry in sorted(base.iterdir()) if base.is_dir() else []:
        if entry.is_dir():
            pid = _owner(entry)
            if pid is None or _alive(pid):
                continue
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith("restyle-shard-"):
            entry.unlink(missing_ok=True)
        else:
            continue
        removed.append(entry)
    return removed


def actor_scratch(base: Path | None = None) -> Path:
    """A fresh scratch folder for this process under `base` (default `$TMPDIR/restyle-scratch`),
    after removing dead actors' folders; removed again when this process exits normally."""
    base = Path(base) if base is not None else Path(tempfile.gettempdir()) / "restyle-scratch"
    base.mkdir(parents=True, exist_ok=True)
    remove_stale(base)
    folder = base / f"{PREFIX}{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)  # a recycled pid's leftovers
    folder.mkdir()
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


class ScratchSpace:
    """An actor's scratch folder that exists only while some shard holds it: made for the first
    holder, removed (with anything left in it) when the last one lets go. Thread-safe: an actor
    spools two shards at once when the driver keeps one queued."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._holders = 0

    @contextmanager
    def held(self) -> Iterator[str]:
        """The folder, present until the block ends (and kept while another holder needs it)."""
        with self._lock:
            if self._holders == 0:
                self.folder.mkdir(parents=True, exist_ok=True)
            self._holders += 1
        try:
            yield str(self.folder)
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    shutil.rmtree(self.folder, ignore_errors=True)
