"""Input images: references from manifests, fetched through `Storage` and decoded with PIL.

A manifest names an image by URI (local path or s3://) or carries its bytes inline; either way
it becomes an `ImageRef`. `load_image` turns one into an RGB `PIL.Image`, and a failure is the
item's failure, never the shard's: a missing or unreadable URI raises `ItemError` of kind
IO_ERROR, bytes that do not decode raise kind BAD_INPUT, each naming the item and the image.

Budgets (`config.InputLimits`) bound what one item can cost: the file's bytes are capped while
it is read, its pixel count is checked from the header before anything is decoded, local
devices and kernel files are refused, and `local_roots` (when set) confines local paths.

EXIF orientation is applied (`ImageOps.exif_transpose`) so phone photos are upright, then the
image is converted to RGB as the authors' code does (`.convert("RGB")`; alpha is dropped).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

from PIL import Image, ImageOps

from pipeline.config.input_limits import DEFAULT_LIMITS, InputLimits
from pipeline.errors import ItemError, ItemStatus
from pipeline.storage import (
    Storage,
    StorageError,
    StorageNotFoundError,
    StorageSpecialFileError,
    StorageTooLargeError,
)


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


def load_image(
    ref: ImageRef, storage: Storage, item_id: str, limits: InputLimits = DEFAULT_LIMITS
) -> Image.Image:
    """Fetch (when `ref` is a URI) and decode one image as RGB, or raise `ItemError`."""
    if ref.uri is None:
        assert ref.data is not None
        if len(ref.data) > limits.max_image_bytes:
            raise ItemError(
                item_id,
                ItemStatus.BAD_INPUT,
                f"{ref.name} image {ref.describe()} is larger than the "
                f"{limits.max_image_bytes}-byte budget (limits.max_image_bytes)",
            )
        return decode_image(ref.data, ref, item_id, limits.max_image_pixels)
    if not storage.is_remote(ref.uri) and not limits.allows_local(ref.uri):
        raise ItemError(
            item_id,
            ItemStatus.BAD_INPUT,
            f"{ref.name} image {ref.uri} lies outside the allowed local roots "
            f"(limits.local_roots: {', '.join(limits.local_roots)})",
        )
    try:
        data = storage.read_bytes(ref.uri, max_bytes=limits.max_image_bytes)
    except StorageNotFoundError as error:
        raise ItemError(
            item_id, ItemStatus.IO_ERROR, f"{ref.name} image {ref.uri} not found: {error.reason}"
        ) from error
    except (StorageTooLargeError, StorageSpecialFileError) as error:
        hint = " (limits.max_image_bytes)" if isinstance(error, StorageTooLargeError) else ""
        raise ItemError(
            item_id, ItemStatus.BAD_INPUT, f"{ref.name} image {ref.uri}: {error.reason}{hint}"
        ) from error
    except StorageError as error:
        raise ItemError(
            item_id,
            ItemStatus.IO_ERROR,
            f"{ref.name} image {ref.uri} could not be read: {error.reason}",
        ) from error
    return decode_image(data, ref, item_id, limits.max_image_pixels)


def decode_image(
    data: bytes, ref: ImageRef, item_id: str, max_pixels: int = DEFAULT_LIMITS.max_image_pixels
) -> Image.Image:
    """Decode fully (truncation shows here, not later in the model) and convert to RGB; an
    image of more than `max_pixels` is refused from its header, before it is decoded."""
    if not data:
        raise ItemError(
            item_id, ItemStatus.BAD_INPUT, f"{ref.name} image {ref.describe()} is empty"
        )
    try:
        with warnings.catch_warnings():  # `max_pixels` is the budget, not PIL's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise ItemError(
                    item_id,
                    ItemStatus.BAD_INPUT,
                    f"{ref.name} image {ref.describe()} is {width}x{height} = "
                    f"{width * height} pixels, more than the {max_pixels}-pixel budget "
                    "(limits.max_image_pixels)",
                )
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
