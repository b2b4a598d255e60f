"""From a `GenerationRequest` to what one OmniConsistency generation needs, or an item error.

`OmniConsistencySettings` are the model's own switches (`ModelOptions.extra`). `prepare_request`
finds everything item-specific that can go wrong (no or unreadable source image, impossible
size, bad steps or guidance) before any batch runs, as an `ItemError` of kind `bad_input`
naming the item, and does the CPU work: the condition pixels (the source squashed to
cond_size) and the prompt with a shipped style's trigger phrase in front.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import torch
from PIL import Image

from pipeline.errors import ItemError, ItemStatus
from pipeline.models.base import GenerationRequest
from pipeline.models.omniconsistency.sampling import (
    NOISE_DESCRIPTION,
    POSTERIOR_CHOICES,
    TokenLayout,
    condition_pixels,
)
from pipeline.models.omniconsistency.styles import shipped_style, with_trigger
from pipeline.models.runtime import Runtime, check_extra_keys

DEFAULT_SIZE, DEFAULT_STEPS, DEFAULT_GUIDANCE = 1024, 25, 3.5
MAX_STEPS = 1000


@dataclass(frozen=True)
class OmniConsistencySettings:
    """OmniConsistency-specific switches (`ModelOptions.extra`), with the authors' defaults.

    - cond_size: condition side in pixels, a multiple of 16.
    - posterior: "sample" (the reference) or "mean", which encodes the condition
      deterministically (outputs then depend on the seed through the noise only).
    - apply_proj_loras: apply the file's proj_loras in the warm-up as EasyControl does; the
      released inference code loads them and never applies them.
    - consistency_weight: the reference's `lora_weights[0]`.
    - style_lora_max_rank: with `compile`, style LoRAs up to this rank swap without a
      recompile (`flux.style_lora.StyleLoraSlot`); the shipped styles are rank 128.
    """

    cond_size: int = 512
    posterior: str = "sample"
    apply_proj_loras: bool = False
    consistency_weight: float = 1.0
    style_lora_max_rank: int = 128

    @classmethod
    def from_extra(cls, extra: Mapping) -> OmniConsistencySettings:
        """Validate `extra`; an unknown key or a bad value raises ValueError naming it."""
        check_extra_keys("OmniConsistency", extra, [f.name for f in fields(cls)])
        values = Runtime.model_extra(extra)  # the shared speed keys are the Runtime's
        for key, kind in (
            ("style_lora_max_rank", int),
            ("cond_size", int),
            ("consistency_weight", float),
            ("apply_proj_loras", bool),
        ):
            if key in values:
                values[key] = kind(values[key])
        settings = cls(**values)
        if settings.posterior not in POSTERIOR_CHOICES:
            raise ValueError(
                f"extra['posterior'] must be one of {POSTERIOR_CHOICES}, got {settings.posterior!r}"
            )
        TokenLayout(DEFAULT_SIZE, DEFAULT_SIZE, settings.cond_size)  # validates cond_size
        if settings.style_lora_max_rank < 1:
            raise ValueError(
                f"extra['style_lora_max_rank'] must be >= 1, got {settings.style_lora_max_rank!r}"
            )
        return settings


@dataclass
class PreparedItem:
    """One validated request with its condition pixels; `parameters` and `timings` become the
    outcome's (the style LoRA's format and the batch's stages are added when it runs)."""

    index: int
    request: GenerationRequest
    layout: TokenLayout
    steps: int
    guidance: float
    prompt: str  # with the shipped style's trigger phrase
    pixels: torch.Tensor  # [1, 3, cond, cond] float32 in [-1, 1]
    style_name: str | None  # the shipped style the LoRA is, if any
    parameters: dict
    timings: dict[str, float] = field(default_factory=dict)


def prepare_request(
    index: int, request: GenerationRequest, *, settings: OmniConsistencySettings, latent_factor: int
) -> PreparedItem:
    """Validate one request and compute its condition pixels; raises ItemError (bad input)."""

    def bad(message: str) -> ItemError:
        return ItemError(request.item_id, ItemStatus.BAD_INPUT, message)

    if request.subject is None:
        raise bad("OmniConsistency needs exactly one source image (request.subject), got none")
    if not isinstance(request.subject, Image.Image):
        raise bad(f"source image must be a PIL image, got {type(request.subject).__name__}")
    width = DEFAULT_SIZE if request.width is None else request.width
    height = DEFAULT_SIZE if request.height is None else request.height
    steps = DEFAULT_STEPS if request.steps is None else request.steps
    guidance = DEFAULT_GUIDANCE if request.guidance is None else request.guidance
    try:
        layout = TokenLayout(width, height, settings.cond_size, latent_factor)
    except ValueError as error:
        raise bad(str(error)) from None
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise bad(f"steps must be an integer in [1, {MAX_STEPS}], got {steps!r}")
    if not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise bad(f"guidance must be a finite number, got {guidance!r}")
    try:
        pixels = condition_pixels(request.subject, settings.cond_size, latent_factor)
    except Exception as error:  # truncated/corrupt image data surfaces on first decode
        raise bad(f"unreadable source image ({type(error).__name__}: {error})") from None
    style = request.style_lora
    style_name = None if style is None else shipped_style(style.name, style.path)
    prompt = with_trigger(request.prompt, style_name)
    out_h, out_w = layout.output_hw
    parameters = {
        "model": "omniconsistency",
        "prompt": prompt,
        "seed": request.seed,
        "width": out_w,
        "height": out_h,
        "requested_width": width,
        "requested_height": height,
        "steps": steps,
        "guidance": float(guidance),
        "noise": NOISE_DESCRIPTION,
        "cond_size": settings.cond_size,
        "posterior": settings.posterior,
        "consistency_weight": settings.consistency_weight,
        "apply_proj_loras": settings.apply_proj_loras,
    }
    return PreparedItem(
        index, request, layout, steps, float(guidance), prompt, pixels, style_name, parameters
    )
