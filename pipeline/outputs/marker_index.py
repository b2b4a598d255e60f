"""The marker index: one object per run folder holding every commit marker's content, so
`restyle status` and a resume read O(1) objects instead of one marker per shard.

It is a cache, never the truth. Each row is (marker file name, version, marker bytes), the
version being the one the folder's listing shows (S3: the ETag; local: inode, mtime, size).
A marker's content is taken from the index only when its listed version equals the indexed
one; every other marker is read as before. So a stale, partial, foreign or concurrently
overwritten index only costs speed: a missing or unreadable one is ignored (DEBUG log), and a
failure to write one is a WARNING, never a failed run. Several drivers may write it (`--join`):
the last writer wins, which is fine because entries are checked by version.

Written by the driver (`IndexKeeper`): at the end of each run pass (a drained one too) and,
during a long run, at most every `REFRESH_INTERVAL_S` when new commits happened, so a `status`
polled mid-run is fast too. `restyle status` only reads it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

import pyarrow as pa

from pipeline.outputs.layout import MARKER_INDEX
from pipeline.storage import Storage, StorageError
from pipeline.storage.parquet import table_from_bytes, table_to_bytes

log = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 300.0  # during a run, the index is rewritten at most this often
FORMAT_KEY = b"restyle.marker_index"
FORMAT = b"1"
SCHEMA = pa.schema(
    [("name", pa.string()), ("version", pa.string()), ("marker", pa.binary())],
    metadata={FORMAT_KEY: FORMAT},
)

# marker file name -> (version, marker bytes)
Entries = dict[str, tuple[str, bytes]]


def index_uri(run_uri: str) -> str:
    return f"{run_uri.rstrip('/')}/{MARKER_INDEX}"


def load(storage: Storage, run_uri: str) -> Entries:
    """The index's entries; empty when it is missing, unreadable or of another format."""
    uri = index_uri(run_uri)
    try:
        table = table_from_bytes(storage.read_bytes(uri))
    except StorageError as error:  # missing (the usual case of a new run) or unreadable
        log.debug("marker index %s not used: %s", uri, error)
        return {}
    except (pa.ArrowException, OSError, ValueError) as error:  # not a Parquet file
        log.debug("marker index %s not used: not a readable Parquet file (%s)", uri, error)
        return {}
    metadata = table.schema.metadata or {}
    if metadata.get(FORMAT_KEY) != FORMAT or not table.schema.equals(SCHEMA):
        log.debug("marker index %s not used: another format (%s)", uri, table.schema)
        return {}
    columns = table.to_pydict()
    return {
        name: (version, marker)
        for name, version, marker in zip(
            columns["name"], columns["version"], columns["marker"], strict=True
        )
        if name is not None and version is not None and marker is not None
    }


def write(storage: Storage, run_uri: str, entries: Mapping[str, tuple[str, bytes]]) -> bool:
    """Publish the index whole (one PUT; local: temp file + os.replace). A failure is logged
    as a WARNING and returns False: the index only saves time."""
    uri = index_uri(run_uri)
    names = sorted(entries)
    table = pa.table(
        {
            "name": names,
            "version": [entries[n][0] for n in names],
            "marker": [entries[n][1] for n in names],
        },
        schema=SCHEMA,
    )
    try:
        storage.write_bytes(uri, table_to_bytes(table))
    except Exception as error:  # a cache: never fail a run over it
        log.warning(
            "marker index %s not written (%s): status and resume read every marker instead",
            uri,
            error,
        )
        return False
    return True


class IndexKeeper:
    """Keeps a run folder's index current from the driver. `refresh` is what builds the
    entries (one listing, markers read through the index), `committed` is called per commit
    and rewrites the index in a background thread at most every `interval_s`; `finish`
    waits for that thread and writes the final index."""

    def __init__(
        self,
        storage: Storage,
        run_uri: str,
        refresh: Callable[[], Entries],
        interval_s: float = REFRESH_INTERVAL_S,
    ):
        self.storage = storage
        self.run_uri = run_uri
        self.refresh = refresh
        self.interval_s = interval_s
        self._last = time.monotonic()
        self._thread: threading.Thread | None = None

    def committed(self) -> None:
        busy = self._thread is not None and self._thread.is_alive()
        if busy or time.monotonic() - self._last < self.interval_s:
            return
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._write, name="marker-index", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Wait for a rewrite in progress, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def finish(self, entries: Entries) -> None:
        """The end of a run pass: write `entries` (the driver's status has just read every
        marker) once a rewrite in progress is done, so the older one never lands last."""
        self.wait()
        write(self.storage, self.run_uri, entries)

    def _write(self) -> None:
        try:
            entries = self.refresh()
        except Exception as error:  # a cache: never fail a run over it
            log.warning("marker index of %s not refreshed: %s", self.run_uri, error)
            return
        write(self.storage, self.run_uri, entries)
