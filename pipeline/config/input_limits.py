"""Budgets for everything a manifest makes an actor read: a hostile or broken input is that
item's error, never an actor that grows until it is killed.

The defaults fit real catalogs with room to spare (an 8192 x 8192 photo, a 64 MiB image file,
a FLUX style LoRA of rank 128 in fp32). They are run settings (`limits.*` in a job spec), not
part of the fingerprint: a budget changes which items fail, never the bytes of one that runs.
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import BaseModel, ConfigDict
from pydantic.types import Strict

from pipeline.config.values import AtLeastOne, Text

MiB = 1 << 20


class InputLimits(BaseModel):
    """What one item may make an actor read, and from where."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    max_image_bytes: AtLeastOne = 64 * MiB
    """Largest image file fetched for an item (subject or style; inline bytes too)."""
    max_image_pixels: AtLeastOne = 8192 * 8192
    """Largest image, in pixels, read from its header before anything is decoded."""
    max_member_bytes: AtLeastOne = 64 * MiB
    """Largest member of a WebDataset manifest sample (after decompression)."""
    max_lora_bytes: AtLeastOne = 4096 * MiB
    """Largest style LoRA file."""
    local_roots: Annotated[tuple[Text, ...], Strict(False)] = ()
    """When set, local manifest files and the local files they name (images, style LoRAs) must
    lie under one of these folders: for manifests from untrusted sources. Empty: any readable
    regular file."""

    def allows_local(self, path: str) -> bool:
        """True when `path` (resolved, symlinks followed) lies under an allowed root, or when
        no roots are set."""
        if not self.local_roots:
            return True
        real = os.path.realpath(path)
        roots = [os.path.realpath(root) for root in self.local_roots]
        return any(real == root or real.startswith(root.rstrip("/") + "/") for root in roots)


DEFAULT_LIMITS = InputLimits()
