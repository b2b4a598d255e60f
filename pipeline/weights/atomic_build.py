"""Building a folder of generated files so that a crash or a concurrent builder never leaves
a half-written folder that looks complete: write into a temporary sibling, write the marker
last, rename into place."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def build_atomically(
    folder: Path,
    marker_name: str,
    is_complete: Callable[[Path], bool],
    write: Callable[[Path], dict],
    what: str,
) -> Path:
    """Return `folder`, building it first unless `is_complete(folder)`.

    `write(staging)` fills the staging folder and returns the marker's content, written last.
    An outdated or incomplete build is replaced; a non-empty folder without the marker is not
    one of ours and is never touched (ValueError), so real weights cannot be clobbered.
    """
    folder = Path(folder)
    if is_complete(folder):
        return folder
    if folder.exists() and any(folder.iterdir()) and not (folder / marker_name).exists():
        raise ValueError(
            f"{folder}: exists and is not a {what} build (no {marker_name}); "
            "refusing to overwrite it"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        marker = write(staging)
        (staging / marker_name).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        _install(staging, folder, is_complete)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _install(staging: Path, folder: Path, is_complete: Callable[[Path], bool]) -> None:
    """Move a finished staging folder into place, replacing an outdated build, tolerating a
    concurrent builder that got there first with an equivalent complete build."""
    if folder.exists():
        if is_complete(folder):
            return  # a concurrent builder finished first
        retired = folder.parent / f".{folder.name}.retired-{uuid.uuid4().hex[:8]}"
        os.replace(folder, retired)
        shutil.rmtree(retired, ignore_errors=True)
    try:
        os.replace(staging, folder)
    except OSError:
        if not is_complete(folder):
            raise


def build_seeded(
    folder: Path,
    marker_name: str,
    kind: str,
    seed: int,
    build_format: int,
    write: Callable[[Path, int], None],
    what: str,
) -> Path:
    """`build_atomically` for random weights generated from `seed`: `write(staging, seed)`
    fills the folder, with torch's global seed set first (module constructors draw before
    their weights are overwritten). The marker holds kind, seed and format: the same three
    mean the same bytes, so such a folder is reused as it is."""
    import torch

    marker = {"kind": kind, "seed": seed, "format": build_format}

    def is_complete(path: Path) -> bool:
        try:
            return json.loads((path / marker_name).read_text()) == marker
        except (OSError, ValueError):
            return False

    def fill(staging: Path) -> dict:
        torch.manual_seed(seed)
        write(staging, seed)
        return marker

    return build_atomically(Path(folder), marker_name, is_complete, fill, what)
