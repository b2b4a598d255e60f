"""Input images: references from manifests, fetched through `Storage` and decoded with PIL.

A manifest names an image by URI (local path or s3://) or carries its bytes inline; either way
it becomes an `ImageRef`. `load_image` turns one into an RGB `PIL.Image`, and a failure is the
item's failure, never the shard's: a missing or unreadable URI raises `ItemError` of kind
IO_ERROR, bytes that do not decode raise kind BAD_INPUT, each naming the item and the image.

EXIF orientation is applied (`ImageOps.exif_transpose`) so phone photos are upright, then the
image is converted to RGB as the authors' code does (`.convert("RGB")`; alpha is dropped).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from PIL import Image, ImageOps

from pipeline.errors import ItemError, ItemStatus
from pipeline.storage import Storage, StorageError, StorageNotFoundError


@dataclass(frozen=True)
class ImageRef:
    """One input image: exactly one of `uri` (resolved, full) or inline `data` bytes.

    `name` is the image's role in its row ("subject", "styles[1]"), used in messages.
    """

    uri: str | None = None
    data: bytes | None = field(default=None, repr=False)
    name: str = "image"

    def __post_init__(self) -> None:
        if (self.uri is None) == (self.data is None):
            raise ValueError(f"ImageRef {self.name!r} needs exactly one of uri or data")

    def describe(self) -> str:
        """The URI, or "inline <name> (<n> bytes)", for messages and provenance."""
        return (
            self.uri
            if self.uri is not None
            else f"inline {self.name} ({len(self.data or b'')} bytes)"
        )

    def __repr__(self) -> str:
        return f"ImageRef({self.name}: {self.describe()})"


def load_image(ref: ImageRef, storage: Storage, item_id: str) -> Image.Image:
    """Fetch (when `ref` is a URI) and decode one image as RGB, or raise `ItemError`."""
    if ref.uri is None:
        assert ref.data is not None
        return decode_image(ref.data, ref, item_id)
    try:
        data = storage.read_bytes(ref.uri)
    except StorageNotFoundError as error:
        raise ItemError(
            item_id, ItemStatus.IO_ERROR, f"{ref.name} image {ref.uri} not found: {error.reason}"
        ) from error
    except StorageError as error:
        raise ItemError(
            item_id,
            ItemStatus.IO_ERROR,
            f"{ref.name} image {ref.uri} could not be read: {error.reason}",
        ) from error
    return decode_image(data, ref, item_id)


def decode_image(data: bytes, ref: ImageRef, item_id: str) -> Image.Image:
    """Decode fully (truncation shows here, not later in the model) and convert to RGB."""
    if not data:
        raise ItemError(
            item_id, ItemStatus.BAD_INPUT, f"{ref.name} image {ref.describe()} is empty"
        )
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            return upright.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        reason = str(error) or type(error).__name__
        raise ItemError(
            item_id,
            ItemStatus.BAD_INPUT,
            f"{ref.name} image {ref.describe()} could not be decoded: {reason}",
        ) from error
