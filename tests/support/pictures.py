"""Random-pixel pictures for metric tests: the same seed gives the same pictures."""

from __future__ import annotations

import numpy as np
from PIL import Image


def pictures(count: int, seed: int = 0, size: tuple[int, int] = (64, 48)) -> list[Image.Image]:
    """`count` RGB pictures of `size` (width, height), uniform noise from `seed`."""
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        for _ in range(count)
    ]
