"""Recognising a tiny random-weight build without torch: its marker and its completeness.

`pipeline.weights.tiny` writes the build (it needs torch); this module only reads the marker,
so the light commands (`restyle plan`, `status`) and the driver can tell a finished tiny build,
and that its weights are random, without importing torch.
"""

from __future__ import annotations

import json
from pathlib import Path

BUILD_FORMAT = 2  # bump when the content of a tiny build changes, so old builds are replaced
MARKER = "tiny_build.json"


def marker_header(seed: int, flux_layout: str) -> dict:
    return {"format": BUILD_FORMAT, "seed": seed, "flux_layout": flux_layout}


def is_tiny_build(root: Path) -> bool:
    """True when `root` is a tiny random-weight build (of any seed or layout)."""
    return (Path(root) / MARKER).is_file()


def is_complete_build(root: Path, seed: int = 0, flux_layout: str = "bfl") -> bool:
    """True when `root` holds a finished build for (seed, layout) whose files are all present
    with their recorded sizes (sizes, not hashes: cheap enough to call before every test)."""
    try:
        marker = json.loads((Path(root) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if {k: marker.get(k) for k in ("format", "seed", "flux_layout")} != marker_header(
        seed, flux_layout
    ):
        return False
    files = marker.get("files") or {}
    for rel, info in files.items():
        path = Path(root) / rel
        if not path.is_file() or path.stat().st_size != info.get("size"):
            return False
    return bool(files)
