"""Is a generated image plausible enough to record as ok? A model whose numbers overflowed
(a guidance or LoRA scale of 1e308 makes NaN/inf latents, which decode to one flat colour) must
give that item an error, not a black image recorded ok."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.models.base import GenerationRequest


def _constant(pixels: np.ndarray) -> bool:
    """Every pixel the same colour (an HWC or HW array)."""
    flat = pixels.reshape(-1, pixels.shape[-1]) if pixels.ndim == 3 else pixels.reshape(-1, 1)
    return flat.shape[0] > 1 and bool((flat == flat[0]).all())


def output_problem(image: np.ndarray, request: GenerationRequest) -> str | None:
    """Why `image` cannot be the result of `request`, or None. Refused: non-finite values (a
    float image), and one flat colour when the item's input images are not flat themselves."""
    pixels = np.asarray(image)
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        return "output: the model produced non-finite values (NaN or inf)"
    if not _constant(pixels):
        return None
    inputs: list[Image.Image] = [i for i in [request.subject, *request.styles] if i is not None]
    if inputs and all(_constant(np.asarray(i)) for i in inputs):
        return None  # flat inputs may legitimately give a flat result
    colour = tuple(int(v) for v in pixels.reshape(-1, pixels.shape[-1])[0])
    return (
        f"output: a constant image (every pixel {colour}): the model's values overflowed "
        f"(guidance {request.guidance}, style LoRA scale "
        f"{request.style_lora.scale if request.style_lora else None})"
    )
