"""From a `GenerationRequest` to the tensors one USO generation needs, or an item error.

`USOSettings` are the USO-specific switches (`ModelOptions.extra`). Everything item-specific
that can go wrong (unreadable or too-small images, impossible sizes, bad field values) is found
by `prepare_request`, before any batch runs, and becomes an `ItemError` of kind `bad_input`
naming the item and the field. Preparation also does the per-item work outside the denoising
loop: the prompt embeddings (through the text encoders' cache; timed as `text_s`), then noise
from the item's seed, the subject's VAE latent and the style tokens through their caches
(`prepare_s`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, fields

import torch
from PIL import Image

from pipeline.errors import ItemError, ItemStatus
from pipeline.models.base import GenerationRequest
from pipeline.models.flux.text_encoders import FluxTextEncoders
from pipeline.models.runtime import DTYPES, Runtime, check_extra_keys
from pipeline.models.uso.components import USOComponents
from pipeline.models.uso.projector import ImageTensorCache, image_digest
from pipeline.models.uso.sampling import (
    SUBJECT_LATENT_MODES,
    draw_noise,
    encode_subject,
    image_to_pixels,
    preprocess_subject,
    uso_mu,
    uso_sigmas,
)
from pipeline.models.uso.transformer import PE_MODES

# PIL raises these for truncated, corrupt or hostile image data
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError)


@dataclass(frozen=True)
class USOSettings:
    """USO-specific switches (`ModelOptions.extra`), with the authors' defaults."""

    pe: str = "d"
    content_ref: int = 512
    subject_latent: str = "mean"
    style_cache_size: int = 256
    subject_cache_size: int = 64
    text_cache_size: int = 64
    siglip_dtype: torch.dtype = torch.float32
    vae_dtype: torch.dtype = torch.float32
    max_side: int = 4096
    attention_backend: str | None = None
    default_size: int = 1024
    default_steps: int = 25
    default_guidance: float = 4.0

    @classmethod
    def from_extra(cls, extra: Mapping) -> USOSettings:
        """Validate `extra`; an unknown key or a bad value of a known key raises ValueError
        naming it."""
        check_extra_keys("USO", extra, [f.name for f in fields(cls)])
        values = Runtime.model_extra(extra)  # the shared speed keys are the Runtime's
        for key in ("siglip_dtype", "vae_dtype"):
            if key in values and not isinstance(values[key], torch.dtype):
                if values[key] not in DTYPES:
                    raise ValueError(
                        f"extra[{key!r}] must be one of {sorted(DTYPES)}, got {values[key]!r}"
                    )
                values[key] = DTYPES[values[key]]
        settings = cls(**values)
        if settings.pe not in PE_MODES:
            raise ValueError(f"extra['pe'] must be one of {PE_MODES}, got {settings.pe!r}")
        if settings.subject_latent not in SUBJECT_LATENT_MODES:
            raise ValueError(
                f"extra['subject_latent'] must be one of {SUBJECT_LATENT_MODES}, "
                f"got {settings.subject_latent!r}"
            )
        for key in ("content_ref", "max_side", "default_size"):
            if not _is_int(getattr(settings, key)) or getattr(settings, key) < 16:
                raise ValueError(
                    f"extra[{key!r}] must be an integer >= 16, got {getattr(settings, key)!r}"
                )
        for key, low in (
            ("default_steps", 1),
            ("style_cache_size", 0),
            ("subject_cache_size", 0),
            ("text_cache_size", 0),
        ):
            if not _is_int(getattr(settings, key)) or getattr(settings, key) < low:
                raise ValueError(
                    f"extra[{key!r}] must be an integer >= {low}, got {getattr(settings, key)!r}"
                )
        backend = settings.attention_backend
        if backend is not None and (not isinstance(backend, str) or "hub" in backend):
            raise ValueError(
                "extra['attention_backend'] must name an installed diffusers "
                "attention backend (Hub-downloaded kernels are not allowed), got "
                f"{backend!r}"
            )
        return settings


@dataclass
class PreparedItem:
    """One request turned into tensors; `layout` groups items that can share a forward.
    `parameters` and `timings` become the outcome's."""

    index: int
    request: GenerationRequest
    noise: torch.Tensor  # [1, 16, H/8, W/8] float32, CPU
    t5_states: torch.Tensor
    pooled: torch.Tensor
    guidance: float
    sigmas: list[float]
    style_tokens: torch.Tensor | None
    subject_latents: torch.Tensor | None
    layout: Hashable
    parameters: dict
    timings: dict[str, float] = field(default_factory=dict)


def subject_grid(size: tuple[int, int], content_ref: int) -> tuple[int, int]:
    """(width, height) of the preprocessed subject for a raw image size, without resizing."""
    w, h = size
    if w == h == 16:
        return 16, 16
    new_w, new_h = (
        (content_ref, int(content_ref / w * h))
        if w >= h
        else (int(content_ref / h * w), content_ref)
    )
    return new_w // 16 * 16, new_h // 16 * 16


def _bad(request: GenerationRequest, message: str) -> ItemError:
    return ItemError(request.item_id, ItemStatus.BAD_INPUT, message)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _resolve_numbers(
    request: GenerationRequest, settings: USOSettings
) -> tuple[int, int, int, float]:
    """(requested width, requested height, steps, guidance), defaults filled in, all checked."""
    width = settings.default_size if request.width is None else request.width
    height = settings.default_size if request.height is None else request.height
    for name, value in (("width", width), ("height", height)):
        if not _is_int(value) or not 16 <= value <= settings.max_side:
            raise _bad(
                request,
                f"impossible size: {name} {value!r} (must be an integer in "
                f"[16, {settings.max_side}])",
            )
    steps = settings.default_steps if request.steps is None else request.steps
    if not _is_int(steps) or steps < 1:
        raise _bad(request, f"steps must be a positive integer, got {steps!r}")
    guidance = settings.default_guidance if request.guidance is None else request.guidance
    if (
        isinstance(guidance, bool)
        or not isinstance(guidance, (int, float))
        or not math.isfinite(guidance)
    ):
        raise _bad(request, f"guidance must be a finite number, got {guidance!r}")
    if not _is_int(request.seed) or not 0 <= request.seed < 2**63:
        raise _bad(request, f"seed must be an integer in [0, 2**63), got {request.seed!r}")
    if not isinstance(request.prompt, str):
        raise _bad(request, f"prompt must be a string, got {type(request.prompt).__name__}")
    if request.style_lora is not None:
        raise _bad(request, "USO takes style images, not a style LoRA (style_lora is set)")
    return width, height, steps, float(guidance)


def _decoded(request: GenerationRequest, image, what: str) -> Image.Image:
    """Force PIL's lazy decoding now, so a truncated/corrupt file is this item's bad input."""
    if not isinstance(image, Image.Image):
        raise _bad(request, f"{what} must be a decoded PIL image, got {type(image).__name__}")
    try:
        image.load()
        return image.convert("RGB")
    except IMAGE_ERRORS as err:
        raise _bad(request, f"{what} is unreadable: {type(err).__name__}: {err}") from err


def prepare_request(
    index: int,
    request: GenerationRequest,
    *,
    components: USOComponents,
    text_encoders: FluxTextEncoders,
    settings: USOSettings,
    runtime: Runtime,
    subject_cache: ImageTensorCache,
) -> PreparedItem:
    """Validate and pre-compute one request. Raises ItemError (bad input) or whatever the
    model raised (the caller turns that into an out-of-memory or model error).

    Subject latents are cached per subject image in "mean" mode only (a sampled latent
    depends on the item's seed)."""
    requested_width, requested_height, steps, guidance = _resolve_numbers(request, settings)
    width, height = requested_width // 16 * 16, requested_height // 16 * 16
    subject = (
        None if request.subject is None else _decoded(request, request.subject, "subject image")
    )
    if not isinstance(request.styles, (list, tuple)):
        raise _bad(request, f"styles must be a list of images, got {type(request.styles).__name__}")
    styles = [_decoded(request, im, f"style image {i}") for i, im in enumerate(request.styles)]
    grid: tuple[int, int] | None = None
    if subject is not None:
        grid = subject_grid(subject.size, settings.content_ref)
        if min(grid) < 16:
            raise _bad(
                request,
                f"subject image {subject.size[0]}x{subject.size[1]} is too small: "
                f"after resizing to content_ref {settings.content_ref} it is "
                f"{grid[0]}x{grid[1]}, below 16 pixels",
            )

    started = time.perf_counter()
    t5_states, pooled = text_encoders.encode(request.prompt)
    encoded = time.perf_counter()
    generator = torch.Generator().manual_seed(request.seed)
    noise = draw_noise(generator, width, height)  # first draw from the item's generator
    subject_latents = None
    if subject is not None:
        key = None
        if settings.subject_latent == "mean":
            key = f"{image_digest(subject)}:{settings.content_ref}"
            subject_latents = subject_cache.get(key)
        if subject_latents is None:
            pixels = image_to_pixels(preprocess_subject(subject, settings.content_ref))
            with runtime.resident(components.vae):
                subject_latents = encode_subject(
                    components.vae, pixels, settings.subject_latent, generator
                )
            if key is not None:
                subject_cache.put(key, subject_latents)
    style_tokens = None
    if styles:
        encoder = components.style_encoder
        with runtime.resident(encoder.siglip, encoder.projector):
            style_tokens = encoder.tokens(styles)
    timings = {"text_s": encoded - started, "prepare_s": time.perf_counter() - encoded}
    sigmas = uso_sigmas(steps, width, height).tolist()
    layout = (
        width,
        height,
        steps,
        None if subject_latents is None else tuple(subject_latents.shape),
        0 if style_tokens is None else style_tokens.shape[1],
        tuple(t5_states.shape[1:]),
    )
    parameters = {
        "model": "uso",
        "prompt": request.prompt,
        "width": width,
        "height": height,
        "requested_width": requested_width,
        "requested_height": requested_height,
        "steps": steps,
        "guidance": guidance,
        "seed": request.seed,
        "pe": settings.pe,
        "content_ref": settings.content_ref,
        "subject_latent": settings.subject_latent if subject is not None else None,
        "subject_size": None if grid is None else list(grid),
        "num_styles": len(styles),
        "mu": uso_mu(width, height),
        "noise": "torch.randn on a CPU generator seeded with seed, float32",
    }
    return PreparedItem(
        index,
        request,
        noise,
        t5_states,
        pooled,
        guidance,
        sigmas,
        style_tokens,
        subject_latents,
        layout,
        parameters,
        timings,
    )
