"""The run folder's layout (version 2): every object's name, and which globs reach what.

    <run>/README.md                       dataset card (Hugging Face metadata: configs, features)
    <run>/run.json                        config, fingerprint, weights, "layout": 2
    <run>/part-<k>.tar                    WebDataset samples of input shard k's first attempt
    <run>/part-<k>.retry-<nn>.tar         samples of its nn-th `--retry-failed` (re-run items only)
    <run>/part-<k>.parquet                the current records of input shard k: one row per input
                                          item, its newest result (rewritten by each retry commit)
    <run>/part-<k>[.retry-<nn>].stats.json   commit markers, written last
    <run>/captions/<k>[.retry-<nn>].parquet  `restyle caption` sidecars, one per tar
    <run>/index/markers.parquet           the marker index: a cache of every marker's content
                                          by version, so status and resume read one object
                                          instead of one per shard (`outputs.marker_index`)
    <run>/_drivers/lease.json             the run lease of the driver running it (removed at its end)
    <run>/_drivers/drivers/<token>.json   each live driver's heartbeat (removed at its end)
    <run>/_drivers/claims/shard-<k>[.retry-<nn>].json   which driver took a shard (kept)

The documented globs, and what each holds (`DOCUMENTED_GLOBS`):
- `part-*.tar`: the WebDataset shards only; every `ok` item's image exactly once (a failed
  attempt writes no sample, and a retry re-runs only items whose newest result failed);
- `part-*.parquet`: the per-item record files only; exactly one current record per item, so
  `restyle status` counts what a reader of this glob counts;
- `captions/*.parquet`: caption sidecars (key, id, caption).
Nothing else in a run folder matches `part-*.tar` or `part-*.parquet`, even under `**/`.

A commit is tar, then the shard's records, then its marker. An object without its marker
belongs to an interrupted commit: `restyle run` (main commits) or `restyle run --retry-failed`
(retries) redoes it under the same names; `restyle status` lists such objects.

Folders written before layout 2 (retries in `retry-<nn>/` folders, caption sidecars named
`part-<k>.captions.parquet`, no "layout" in run.json) are refused by every command that reads
or extends a run, with a message naming `restyle migrate`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.errors import RunError

LAYOUT_VERSION = 2
RUN_JSON = "run.json"
CARD = "README.md"
CAPTIONS_FOLDER = "captions"
DRIVERS_FOLDER = "_drivers"  # lease, heartbeats, shard claims: `pipeline.outputs.lease`
INDEX_FOLDER = "index"
MARKER_INDEX = f"{INDEX_FOLDER}/markers.parquet"  # a cache only: `pipeline.outputs.marker_index`

SHARDS_GLOB = "part-*.tar"
RECORDS_GLOB = "part-*.parquet"
CAPTIONS_GLOB = f"{CAPTIONS_FOLDER}/*.parquet"
DOCUMENTED_GLOBS = {
    "images": SHARDS_GLOB,
    "records": RECORDS_GLOB,
    "captions": CAPTIONS_GLOB,
}

_MARKER = re.compile(r"^part-(\d{6})(?:\.retry-(\d{2,}))?\.stats\.json$")
_TAR = re.compile(r"^part-(\d{6})(?:\.retry-(\d{2,}))?\.tar$")
_RECORDS = re.compile(r"^part-(\d{6})\.parquet$")


class LayoutError(RunError):
    """The run folder was written with another layout version than this restyle's."""


@dataclass(frozen=True)
class ShardPaths:
    """Deterministic object names of one commit: input shard `index`, attempt `retry` (0 for
    the first run of the shard, n for its n-th retry)."""

    folder: str  # the run folder
    index: int
    retry: int = 0

    @property
    def name(self) -> str:
        base = f"part-{self.index:06d}"
        return base if self.retry == 0 else f"{base}.retry-{self.retry:02d}"

    @property
    def tar(self) -> str:
        return f"{self.folder}/{self.name}.tar"

    @property
    def marker(self) -> str:
        return f"{self.folder}/{self.name}.stats.json"

    @property
    def records(self) -> str:
        """The shard's current records, shared by its main and retry commits."""
        return f"{self.folder}/part-{self.index:06d}.parquet"

    @property
    def captions(self) -> str:
        """The caption sidecar of this commit's tar."""
        return f"{self.folder}/{CAPTIONS_FOLDER}/{self.name.removeprefix('part-')}.parquet"


def parse_marker(name: str) -> tuple[int, int] | None:
    """(shard, retry) of a marker's file name, or None when `name` is not a marker."""
    match = _MARKER.match(name)
    return None if match is None else (int(match.group(1)), int(match.group(2) or 0))


def parse_tar(name: str) -> tuple[int, int] | None:
    """(shard, retry) of a sample shard's file name, or None when `name` is not one."""
    match = _TAR.match(name)
    return None if match is None else (int(match.group(1)), int(match.group(2) or 0))


def parse_records(name: str) -> int | None:
    """The shard of a records file's name, or None when `name` is not one."""
    match = _RECORDS.match(name)
    return None if match is None else int(match.group(1))


def layout_of(run_json: dict) -> int:
    """The layout version a run.json declares; folders from before layouts had none (1)."""
    return int(run_json.get("layout", 1))


def check_layout(run_uri: str, run_json: dict) -> None:
    """Refuse a run folder this restyle cannot read or extend, in one line saying what to do."""
    layout = layout_of(run_json)
    if layout == LAYOUT_VERSION:
        return
    if layout < LAYOUT_VERSION:
        raise LayoutError(
            f"{run_uri}: written with output layout {layout} (retries in retry-<nn>/ folders, "
            f"caption sidecars beside the shards); this restyle reads layout {LAYOUT_VERSION}: "
            f"run `restyle migrate {run_uri}` first"
        )
    raise LayoutError(
        f"{run_uri}: written with output layout {layout} by a newer restyle; this one reads "
        f"layout {LAYOUT_VERSION}: upgrade restyle"
    )
