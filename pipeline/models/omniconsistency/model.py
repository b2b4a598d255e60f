"""OmniConsistency (showlab, arXiv 2505.18445): consistent stylization with any FLUX style LoRA.

The source image (`request.subject`, exactly one) is squashed to cond_size, VAE-encoded, and its
tokens condition a FLUX.1-dev generation through a K/V cache filled by one warm-up pass with the
consistency LoRA (see `omni_sampler` and `omni_attention`). `request.style_lora` is mounted with
PEFT (`style_lora.StyleLoraSlot`) and stays mounted while consecutive items share it. For the 22
styles the authors ship, "<Name> style, " is put in front of the prompt (`omni_styles`).

Defaults reproduce the authors' inference: 1024x1024, 25 steps, guidance 3.5, cond_size 512,
bf16 on CUDA (fp32 on CPU), the condition latent a posterior SAMPLE drawn from the item's CPU
generator right after the noise, proj_loras loaded but not applied.

Options (`ModelOptions`; everything that changes numerics is off by default):
- `extra["cond_size"]` (int, 512): condition side in pixels, a multiple of 16.
- `extra["posterior"]` ("sample" | "mean"): "mean" encodes the condition deterministically
  (a deviation from the reference; outputs then depend on the seed through the noise only).
- `extra["apply_proj_loras"]` (False): apply the file's proj_loras to the condition rows of the
  double blocks' attention output in the warm-up, as EasyControl (which OmniConsistency derives
  from) does. The released inference code loads them and never applies them.
- `extra["consistency_weight"]` (1.0): the reference's `lora_weights[0]`.
- `fuse_lora`: merge the style LoRA into the base weights while a group of items shares it
  (faster steps; bf16 rounding differs; exact originals restored on swap).
- `fp8`: store transformer Linear weights in float8_e4m3fn and upcast per layer to the compute
  dtype (diffusers layerwise casting): ~half the transformer memory, not faster, lossy.
- `compile`: torch.compile the whole transformer (same math, different kernels). Two graphs per
  output size (warm-up, steps). A PEFT style LoRA changes the module structure, so each swap
  or scale recompiles; combine with `fuse_lora` for runs that change LoRAs often.
- `offload`: keep the transformer and VAE on the CPU and move each to the GPU while it runs
  (text encoders offload themselves). Slow; for GPUs too small to hold everything.
- `max_batch_size`: consecutive items with the same style LoRA, size and steps run in one
  forward (each keeps its own seed, prompt, guidance and cache rows).
Requests may set width/height (floored to multiples of 16, as the reference does), steps and
guidance; `request.styles` is not used by this model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from pipeline.errors import ItemError, ItemStatus
from pipeline.models.base import (
    GenerationOutcome,
    GenerationRequest,
    ModelOptions,
    StylizationModel,
)
from pipeline.models.flux.style_lora import StyleLoraError, StyleLoraSlot
from pipeline.models.omniconsistency.components import (
    OmniComponents,
    load_components,
    random_components,
)
from pipeline.models.omniconsistency.sampling import (
    POSTERIOR_CHOICES,
    OmniConsistencySampler,
    TokenLayout,
    condition_pixels,
    to_uint8,
)
from pipeline.models.omniconsistency.styles import shipped_style, with_trigger
from pipeline.models.weight_layout import OmniConsistencyFiles

DEFAULT_SIZE, DEFAULT_STEPS, DEFAULT_GUIDANCE, DEFAULT_COND_SIZE = 1024, 25, 3.5, 512
MAX_STEPS = 1000
EXTRA_DEFAULTS = {"cond_size": DEFAULT_COND_SIZE, "posterior": "sample", "apply_proj_loras": False,
                  "consistency_weight": 1.0}


@dataclass
class _Prepared:
    """One validated request, with its condition pixels (CPU work done before the model runs)."""

    index: int
    request: GenerationRequest
    layout: TokenLayout
    steps: int
    guidance: float
    prompt: str
    pixels: torch.Tensor
    style_name: str | None


def _extra(options: ModelOptions) -> dict:
    unknown = sorted(set(options.extra) - set(EXTRA_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown OmniConsistency option(s) {unknown}; known: {sorted(EXTRA_DEFAULTS)}")
    extra = {**EXTRA_DEFAULTS, **options.extra}
    if extra["posterior"] not in POSTERIOR_CHOICES:
        raise ValueError(f"extra['posterior'] must be one of {POSTERIOR_CHOICES}, got {extra['posterior']!r}")
    return extra


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (torch.OutOfMemoryError, MemoryError))


class OmniConsistencyModel(StylizationModel):
    """See the module docstring. One instance per actor; no per-generation state survives a call."""

    name = "omniconsistency"

    def __init__(self, components: OmniComponents, options: ModelOptions):
        extra = _extra(options)
        self.options = options
        self.components = components
        self.cond_size = int(extra["cond_size"])
        self.posterior = extra["posterior"]
        self.sampler = OmniConsistencySampler(
            components.transformer, components.vae, components.consistency_lora, components.scheduler_config,
            dtype=components.dtype, device=components.device,
            consistency_weight=float(extra["consistency_weight"]),
            apply_proj_loras=bool(extra["apply_proj_loras"]))
        TokenLayout(DEFAULT_SIZE, DEFAULT_SIZE, self.cond_size, self.sampler.latent_factor)  # validates cond_size
        self.text_encoders = components.text_encoders
        self.style_slot = StyleLoraSlot(components.transformer, fuse=options.fuse_lora,
                                        compute_dtype=components.dtype if options.fp8 else None)
        if options.compile:
            # The whole transformer, not its repeated blocks: each block's processor reads its own
            # cache entry, so per-block graphs would differ and exhaust dynamo's recompile limit.
            components.transformer.compile(dynamic=False)

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, weights_root: Path, options: ModelOptions) -> OmniConsistencyModel:
        _extra(options)
        files = OmniConsistencyFiles.from_root(Path(weights_root))
        return cls(load_components(files, options), options)

    @classmethod
    def load_random(cls, options: ModelOptions, size: str = "full") -> OmniConsistencyModel:
        """Random weights with the real architecture ("full": FLUX.1-dev, rank-128 consistency
        LoRA, T5-XXL, CLIP-L; "small"/"tiny" for CPU), built on the device. Benchmarks only."""
        _extra(options)
        return cls(random_components(options, size), options)

    def weight_files(self) -> dict[str, Path]:
        return dict(self.components.files)

    def batch_key(self, request: GenerationRequest) -> Hashable:
        style = request.style_lora
        return (None if style is None else (str(style.path), float(style.scale)),
                request.width or DEFAULT_SIZE, request.height or DEFAULT_SIZE,
                request.steps or DEFAULT_STEPS)

    def close(self) -> None:
        self.style_slot.unload()
        for name in ("transformer", "vae", "consistency_lora"):
            module = getattr(self.components, name, None)
            if module is not None:
                module.to("cpu")
        if self.components.device.type == "cuda":
            torch.cuda.empty_cache()

    # -------------------------------------------------------------------------- generation
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationOutcome]:
        outcomes: list[GenerationOutcome | None] = [None] * len(requests)
        prepared: list[_Prepared] = []
        for index, request in enumerate(requests):
            try:
                prepared.append(self._prepare(index, request))
            except ItemError as error:
                outcomes[index] = GenerationOutcome(request.item_id, error=error)
        for group in self._groups(prepared):
            for item, outcome in zip(group, self._run_group(group)):
                outcomes[item.index] = outcome
        return outcomes

    def _prepare(self, index: int, request: GenerationRequest) -> _Prepared:
        item = request.item_id

        def bad(message: str) -> ItemError:
            return ItemError(item, ItemStatus.BAD_INPUT, message)

        if request.subject is None:
            raise bad("OmniConsistency needs exactly one source image (request.subject), got none")
        if not isinstance(request.subject, Image.Image):
            raise bad(f"source image must be a PIL image, got {type(request.subject).__name__}")
        width = DEFAULT_SIZE if request.width is None else request.width
        height = DEFAULT_SIZE if request.height is None else request.height
        steps = DEFAULT_STEPS if request.steps is None else request.steps
        guidance = DEFAULT_GUIDANCE if request.guidance is None else request.guidance
        try:
            layout = self.sampler.layout(width, height, self.cond_size)
        except ValueError as error:
            raise bad(str(error)) from None
        if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise bad(f"steps must be an integer in [1, {MAX_STEPS}], got {steps!r}")
        if not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
            raise bad(f"guidance must be a finite number, got {guidance!r}")
        try:
            pixels = condition_pixels(request.subject, self.cond_size, self.sampler.latent_factor)
        except Exception as error:  # truncated/corrupt image data surfaces on first decode
            raise bad(f"unreadable source image ({type(error).__name__}: {error})") from None
        style = request.style_lora
        style_name = None if style is None else shipped_style(style.name, style.path)
        return _Prepared(index, request, layout, steps, float(guidance),
                         with_trigger(request.prompt, style_name), pixels, style_name)

    def _groups(self, prepared: list[_Prepared]) -> Iterator[list[_Prepared]]:
        """Consecutive items of equal batch key, at most max_batch_size each."""
        limit = max(1, self.options.max_batch_size)
        group: list[_Prepared] = []
        for item in prepared:
            if group and (self.batch_key(item.request) != self.batch_key(group[0].request) or len(group) >= limit):
                yield group
                group = []
            group.append(item)
        if group:
            yield group

    def _run_group(self, group: list[_Prepared]) -> list[GenerationOutcome]:
        style = group[0].request.style_lora
        try:
            self.style_slot.activate(None if style is None else style.path, 1.0 if style is None else style.scale)
        except (StyleLoraError, OSError) as error:
            return [GenerationOutcome(item.request.item_id, error=ItemError(
                item.request.item_id, ItemStatus.LORA_ERROR, str(error))) for item in group]
        try:
            return self._run_batch(group)
        except Exception as error:
            oom, message = _is_out_of_memory(error), f"{type(error).__name__}: {error}"
        # Out of the except block: the traceback (and the tensors its frames hold) is released.
        if oom and self.components.device.type == "cuda":
            torch.cuda.empty_cache()  # only after an OOM, never per image
        if len(group) > 1:  # retry alone, so one item cannot spoil its neighbours
            return [outcome for item in group for outcome in self._run_group([item])]
        kind = ItemStatus.OUT_OF_MEMORY if oom else ItemStatus.MODEL_ERROR
        item_id = group[0].request.item_id
        return [GenerationOutcome(item_id, error=ItemError(item_id, kind, message))]

    @contextmanager
    def _resident(self, module: torch.nn.Module):
        """With `offload`, hold `module` on the GPU only while it runs."""
        if not self.options.offload:
            yield
            return
        module.to(self.components.device)
        try:
            yield
        finally:
            module.to("cpu")

    def _sync(self) -> None:
        if self.components.device.type == "cuda":
            torch.cuda.synchronize(self.components.device)

    @torch.inference_mode()
    def _run_batch(self, group: list[_Prepared]) -> list[GenerationOutcome]:
        sampler, layout, steps = self.sampler, group[0].layout, group[0].steps
        timings: dict[str, float] = {}
        start = time.perf_counter()
        prompt_embeds, pooled = self.text_encoders.encode_many([item.prompt for item in group])
        timings["text_s"] = time.perf_counter() - start
        generators = [torch.Generator("cpu").manual_seed(item.request.seed) for item in group]
        guidance = [item.guidance for item in group]
        mark = time.perf_counter()
        noise = sampler.initial_noise(layout, generators)  # first draw, as in the reference
        with self._resident(sampler.vae):
            cond_latent = sampler.encode_condition(torch.cat([item.pixels for item in group]), generators,
                                                   self.posterior)
        with self._resident(sampler.transformer):
            cache = sampler.warm_up(cond_latent, prompt_embeds, pooled, guidance, layout)
            self._sync()
            timings["warmup_s"] = time.perf_counter() - mark
            mark = time.perf_counter()
            latent = sampler.denoise(noise, cache, prompt_embeds, pooled, guidance, layout,
                                     sampler.schedule(steps, layout))
            cache.clear()  # the cache belongs to this generation only
            self._sync()
            timings["denoise_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        with self._resident(sampler.vae):
            images = to_uint8(sampler.decode(latent))
        timings["decode_s"] = time.perf_counter() - mark
        timings["model_s"] = (time.perf_counter() - start) / len(group)
        return [GenerationOutcome(item.request.item_id, image=image, parameters=self._parameters(item),
                                  timings=dict(timings)) for item, image in zip(group, images)]

    def _parameters(self, item: _Prepared) -> dict:
        style = item.request.style_lora
        out_h, out_w = item.layout.output_hw
        converted = self.style_slot.current
        return {
            "model": self.name, "prompt": item.prompt, "width": out_w, "height": out_h,
            "requested_width": item.layout.width, "requested_height": item.layout.height,
            "steps": item.steps, "guidance": item.guidance, "cond_size": self.cond_size,
            "posterior": self.posterior, "consistency_weight": self.sampler.consistency_weight,
            "apply_proj_loras": self.sampler.apply_proj_loras, "dtype": str(self.components.dtype),
            "fuse_lora": self.options.fuse_lora, "fp8": self.options.fp8,
            "style_lora": None if style is None else {
                # the file name only: the local cache path differs between machines
                "name": style.name, "file": style.path.name, "scale": style.scale,
                "shipped_style": item.style_name,
                "format": None if converted is None else converted.source_format,
                "ignored_keys": 0 if converted is None else len(converted.ignored_keys)},
            "weights": self.components.provenance,
        }
