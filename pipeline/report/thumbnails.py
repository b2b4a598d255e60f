"""Small JPEG thumbnails of every ok sample's images (result, subject, style references),
streamed from the run's tars: the report folder stays light and opens anywhere."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable

from PIL import Image

from pipeline.outputs.provenance import input_uris
from pipeline.outputs.tar_reading import IMAGE_EXTENSIONS, tar_samples
from pipeline.report.data import Item, ReportData
from pipeline.storage import Storage

THUMB_SIDE = 192
ROLES = ("result", "subject", "style", "style1", "style2", "style3")


def thumbnail(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _role_images(storage: Storage, members: dict[str, bytes]) -> dict[str, bytes]:
    """role -> image bytes: from the sample itself (triplet runs store their references), else
    the subject and style URIs its provenance names (inline inputs were not kept: none)."""
    found = {}
    for role in ROLES:
        for ext in IMAGE_EXTENSIONS:
            name = ext if role == "result" and ext in members else f"{role}.{ext}"
            if name in members:
                found[role] = members[name]
                break
    provenance = json.loads(members["json"]) if "json" in members else {}
    subjects = input_uris(provenance, "subject")
    named = {
        "subject": subjects[0] if subjects else None,
        **{r: u for r, u in zip(ROLES[2:], input_uris(provenance, "style"), strict=False)},
    }
    for role, uri in named.items():
        if role in found or not uri or uri.startswith("inline:"):
            continue
        with contextlib.suppress(Exception):  # moved or unreadable: the sheet shows "-"
            found[role] = storage.read_bytes(uri)
    return found


def write_thumbnails(
    storage: Storage, data: ReportData, write: Callable[[str, bytes], None]
) -> int:
    """Thumbnails of every ok item's images, written as `thumbs/<key>.<role>.jpg`; each item's
    `images` then maps role -> that relative path. The count written."""
    wanted: dict[str, dict[str, Item]] = {}
    for item in data.ok:
        wanted.setdefault(item.commit.tar, {})[item.key] = item
    written = 0
    for tar, items in wanted.items():
        for key, members in tar_samples(storage, tar):
            found = items.get(key)
            if found is None:
                continue
            for role, image in _role_images(storage, members).items():
                path = f"thumbs/{key}.{role}.jpg"
                try:
                    write(path, thumbnail(image))
                except OSError:  # not a decodable image (PIL's UnidentifiedImageError)
                    continue
                found.images[role] = path
                written += 1
    return written
