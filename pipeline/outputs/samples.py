"""Turning one finished item into the members of its WebDataset sample.

`<key>.<ext>` is the result image, `<key>.txt` the caption, `<key>.json` the provenance
(model, weight sha256s, every sampling parameter, seed, source ids and URIs, code version).
Triplet runs also carry `<key>.subject.<ext>` and `<key>.style.<ext>` (the first style; further
styles as `<key>.style1.<ext>` ...), so a trainer reads (style, subject, result) directly.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
from PIL import Image

from pipeline.config import OutputOptions

_PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


def encode_image(image: np.ndarray | Image.Image, options: OutputOptions) -> bytes:
    """Encode deterministically (same pixels -> same bytes) in the run's format."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    pil = pil.convert("RGB")
    ext = options.extension
    buffer = io.BytesIO()
    if ext == "png":
        pil.save(buffer, format="PNG", compress_level=6)
    elif ext == "jpg":
        pil.save(buffer, format="JPEG", quality=options.quality, subsampling=0)
    else:
        pil.save(buffer, format="WEBP", quality=options.quality, method=4)
    return buffer.getvalue()


def describe_image_ref(ref) -> str | None:
    """A provenance string for an input image: its URI, or a hash of inline bytes."""
    if ref is None:
        return None
    if getattr(ref, "uri", None):
        return ref.uri
    return "inline:sha256:" + hashlib.sha256(ref.data).hexdigest()


def sample_members(
    image_bytes: bytes,
    caption: str,
    provenance: dict,
    options: OutputOptions,
    references: dict[str, bytes] | None = None,
) -> dict[str, bytes]:
    """The tar members of one sample (extension -> bytes); `references` adds triplet images."""
    ext = options.extension
    result_name = f"result.{ext}" if options.include_references else ext
    members = {
        result_name: image_bytes,
        "txt": caption.encode("utf-8"),
        "json": json.dumps(provenance, sort_keys=True, indent=1, default=str).encode("utf-8"),
    }
    if options.include_references and references:
        for name, data in references.items():
            members[f"{name}.{ext}"] = data
    return members
