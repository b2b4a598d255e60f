"""OmniConsistency (showlab, arXiv 2505.18445): consistent stylization with any FLUX style LoRA.

The source image (`request.subject`, exactly one) is squashed to cond_size, VAE-encoded, and its
tokens condition a FLUX.1-dev generation through a K/V cache filled by one warm-up pass with the
consistency LoRA (see `sampling` and `attention`). `request.style_lora` is mounted with PEFT
(`flux.style_lora.StyleLoraSlot`) and stays mounted while consecutive items share it. For the
22 styles the authors ship, "<Name> style, " is put in front of the prompt (`styles`).

Defaults reproduce the authors' inference: 1024x1024, 25 steps, guidance 3.5, cond_size 512,
bf16 on CUDA (fp32 on CPU), the condition latent a posterior SAMPLE drawn from the item's CPU
generator right after the noise, proj_loras loaded but not applied.

Options (`ModelOptions`; everything that changes numerics is off by default; the shared rules
are `pipeline.models.runtime`'s):
- extra (`prepare.OmniConsistencySettings`; an unknown key is an error): "cond_size" (512),
  "posterior" ("sample" | "mean"), "apply_proj_loras" (False), "consistency_weight" (1.0).
- `fuse_lora`: merge the style LoRA into the base weights while a group of items shares it
  (faster steps; bf16 rounding differs; exact originals restored on swap).
- `fp8`: store the transformer blocks' Linear weights in row-scaled float8 (`models.fp8`, the
  same scheme as USO): ~half the transformer memory, not faster, lossy. Style LoRAs mount on
  the fp8 layers through PEFT and stay in the compute dtype. Not together with fuse_lora.
- `compile`: regional compilation of the repeated blocks (`models.compilation`; same math,
  different kernels): two graphs per block kind and layout (warm-up, steps), plus two more once
  a style LoRA is mounted. Style LoRAs are then hot-swapped (`StyleLoraSlot`, up to
  extra["style_lora_max_rank"]) so a swap, a new scale or "no LoRA" never recompiles.
- `offload`: keep the transformer and VAE on the CPU and move each to the GPU while it runs
  (text encoders offload themselves). Slow; for GPUs too small to hold everything.
- `max_batch_size`: consecutive items with the same style LoRA, size and steps run in one
  forward (each keeps its own seed, prompt, guidance and cache rows).
Requests may set width/height (floored to multiples of 16, as the reference does), steps and
guidance; `request.styles` is not used by this model.

Timings: the warm-up pass is part of `prepare_s` (with the noise and the condition's VAE
encode): it conditions the item before the denoising loop, as USO's style tokens do.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import ItemError, ItemStatus
from pipeline.models.base import (
    GenerationOutcome,
    GenerationRequest,
    ModelOptions,
    StylizationModel,
)
from pipeline.models.finite import FiniteWatch, non_finite_error
from pipeline.models.flux.style_lora import StyleLoraError, StyleLoraSlot
from pipeline.models.flux.text_encoders import FluxTextEncoders
from pipeline.models.omniconsistency.components import (
    OmniConsistencyComponents,
    load_components,
    random_components,
)
from pipeline.models.omniconsistency.prepare import (
    DEFAULT_SIZE,
    DEFAULT_STEPS,
    OmniConsistencySettings,
    PreparedItem,
    prepare_request,
)
from pipeline.models.omniconsistency.sampling import OmniConsistencySampler, to_uint8
from pipeline.models.runtime import Runtime, prepare_all, run_splitting_failures
from pipeline.models.weight_layout import OmniConsistencyFiles


class OmniConsistencyModel(StylizationModel):
    """See the module docstring. One instance per actor; no per-generation state survives a call."""

    name = "omniconsistency"

    def __init__(
        self,
        components: OmniConsistencyComponents,
        text_encoders: FluxTextEncoders,
        settings: OmniConsistencySettings,
        runtime: Runtime,
        files: dict[str, Path],
        random_weights: bool = False,
    ):
        self.components = components
        self.text_encoders = text_encoders
        self.settings = settings
        self.runtime = runtime
        self._files = files
        self.random_weights = random_weights  # True: benchmark-only weights, no provenance
        transformer = components.transformer
        runtime.store_in_fp8(transformer)  # before any style LoRA: PEFT then wraps fp8 layers
        self.sampler = OmniConsistencySampler(
            transformer,
            components.vae,
            components.consistency_lora,
            components.scheduler_config,
            dtype=runtime.dtype,
            device=runtime.device,
            consistency_weight=settings.consistency_weight,
            apply_proj_loras=settings.apply_proj_loras,
        )
        options = runtime.options
        hot = options.compile and not options.fuse_lora
        self.style_slot = StyleLoraSlot(
            transformer,
            fuse=options.fuse_lora,
            hotswap_rank=settings.style_lora_max_rank if hot else None,
        )
        # Regional: the per-block cache views come from eager pre-hooks (`attention`).
        runtime.compile(transformer)

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, weights_root: Path, options: ModelOptions) -> OmniConsistencyModel:
        settings = OmniConsistencySettings.from_extra(options.extra)
        runtime = Runtime.from_options(options)
        files = OmniConsistencyFiles.from_root(Path(weights_root))
        components = load_components(
            transformer=files.flux.transformer,
            vae=files.flux.vae,
            consistency_lora=files.consistency_lora,
            flux_config=files.flux.flux_config,
            scheduler_config=files.scheduler_config,
            dtype=runtime.dtype,
            device=runtime.home,
            lora_device=runtime.device,
        )
        text = FluxTextEncoders.load(
            files.flux, runtime.device, runtime.dtype, offload=options.offload
        )
        text.check_widths(components.transformer.config, files.flux)
        return cls(components, text, settings, runtime, files.named())

    @classmethod
    def load_random(cls, options: ModelOptions, size: str = "full") -> OmniConsistencyModel:
        """Random weights with the real architecture ("full": FLUX.1-dev, rank-128 consistency
        LoRA, T5-XXL, CLIP-L; "small"/"tiny" for CPU), built where they live. Benchmarks and
        tests only: `random_weights` is True and `weight_files()` is empty."""
        settings = OmniConsistencySettings.from_extra(options.extra)
        runtime = Runtime.from_options(options)
        components = random_components(
            size, dtype=runtime.dtype, device=runtime.home, lora_device=runtime.device
        )
        text = FluxTextEncoders.random(
            size, device=runtime.device, dtype=runtime.dtype, offload=options.offload
        )
        return cls(components, text, settings, runtime, {}, random_weights=True)

    def weight_files(self) -> dict[str, Path]:
        return dict(self._files)

    def batch_key(self, request: GenerationRequest) -> Hashable:
        style = request.style_lora
        return (
            None if style is None else (str(style.path), float(style.scale)),
            request.width or DEFAULT_SIZE,
            request.height or DEFAULT_SIZE,
            request.steps or DEFAULT_STEPS,
        )

    def close(self) -> None:
        self.style_slot.unload()
        for module in (
            self.components.transformer,
            self.components.vae,
            self.components.consistency_lora,
        ):
            module.to("cpu")
        self.runtime.free_memory()

    # -------------------------------------------------------------------------- generation
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationOutcome]:
        prepared, outcomes = prepare_all(requests, self._prepare, self.runtime, "OmniConsistency")
        for group in self._groups(prepared):
            for item, outcome in zip(group, self._run_group(group), strict=True):
                outcomes[item.index] = outcome
        return outcomes  # type: ignore[return-value]

    def _prepare(self, index: int, request: GenerationRequest) -> PreparedItem:
        item = prepare_request(
            index, request, settings=self.settings, latent_factor=self.sampler.latent_factor
        )
        item.parameters.update(self.runtime.parameters(self.random_weights))
        return item

    def _groups(self, prepared: list[PreparedItem]) -> Iterator[list[PreparedItem]]:
        """Consecutive items of equal batch key (one style LoRA), at most max_batch_size each."""
        limit = self.runtime.options.max_batch_size
        group: list[PreparedItem] = []
        for item in prepared:
            if group and (
                self.batch_key(item.request) != self.batch_key(group[0].request)
                or len(group) >= limit
            ):
                yield group
                group = []
            group.append(item)
        if group:
            yield group

    def _run_group(self, group: list[PreparedItem]) -> list[GenerationOutcome]:
        style = group[0].request.style_lora
        try:
            self.style_slot.activate(
                None if style is None else style.path, 1.0 if style is None else style.scale
            )
        except (StyleLoraError, OSError) as error:
            return [
                GenerationOutcome(
                    item.request.item_id,
                    error=ItemError(item.request.item_id, ItemStatus.LORA_ERROR, str(error)),
                )
                for item in group
            ]
        return run_splitting_failures(group, self._run_batch, self.runtime, "OmniConsistency")

    @torch.inference_mode()
    def _run_batch(self, group: Sequence[PreparedItem]) -> list[GenerationOutcome]:
        sampler, runtime = self.sampler, self.runtime
        layout, steps = group[0].layout, group[0].steps
        start = time.perf_counter()
        prompt_embeds, pooled = self.text_encoders.encode_many([item.prompt for item in group])
        mark = time.perf_counter()
        timings = {"text_s": mark - start}
        generators = [torch.Generator("cpu").manual_seed(item.request.seed) for item in group]
        guidance = [item.guidance for item in group]
        noise = sampler.initial_noise(layout, generators)  # first draw, as in the reference
        with runtime.resident(sampler.vae):
            cond_latent = sampler.encode_condition(
                torch.cat([item.pixels for item in group]), generators, self.settings.posterior
            )
        schedule = sampler.schedule(steps, layout)
        with runtime.resident(sampler.transformer), runtime.attention():
            cache = sampler.warm_up(cond_latent, prompt_embeds, pooled, guidance, layout)
            runtime.synchronize()
            timings["prepare_s"] = time.perf_counter() - mark
            mark = time.perf_counter()
            watch = FiniteWatch(len(group), runtime.device)
            latent = sampler.denoise(
                noise,
                cache,
                prompt_embeds,
                pooled,
                guidance,
                layout,
                schedule,
                on_step=lambda step, _velocity, latents: watch.observe(step, latents),
            )
            cache.clear()  # the cache belongs to this generation only
            runtime.synchronize()
            bad_steps = watch.first_bad_steps()  # once per batch, after the loop's own sync
            timings["denoise_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        images = self._decode_finite(latent, bad_steps)
        timings["decode_s"] = time.perf_counter() - mark
        timings["model_s"] = (time.perf_counter() - start) / len(group)
        return [
            GenerationOutcome(
                item.request.item_id,
                image=image,
                error=None if bad is None else self._non_finite(item, bad, steps),
                timings=dict(timings),
                parameters={
                    **item.parameters,
                    "mu": schedule.mu,
                    "batch_size": len(group),
                    "style_lora": self._style_parameters(item),
                },
            )
            for item, image, bad in zip(group, images, bad_steps, strict=True)
        ]

    def _decode_finite(
        self, latent: torch.Tensor, bad_steps: list[int | None]
    ) -> list[np.ndarray | None]:
        """Decoded images of the rows whose latents stayed finite; None for the others."""
        good = [row for row, bad in enumerate(bad_steps) if bad is None]
        images: list[np.ndarray | None] = [None] * len(bad_steps)
        if good:
            rows = latent if len(good) == len(bad_steps) else latent[good]
            with self.runtime.resident(self.sampler.vae):
                decoded = to_uint8(self.sampler.decode(rows), self.sampler.transfers)
            for row, image in zip(good, decoded, strict=True):
                images[row] = image
        return images

    @staticmethod
    def _non_finite(item: PreparedItem, step: int, steps: int) -> ItemError:
        style = item.request.style_lora
        return non_finite_error(
            item.request.item_id, step, steps, item.guidance, None if style is None else style.scale
        )

    def _style_parameters(self, item: PreparedItem) -> dict | None:
        style, converted = item.request.style_lora, self.style_slot.current
        if style is None:
            return None
        return {
            "name": style.name,
            "file": style.path.name,  # not the machine's cache path
            "scale": style.scale,
            "shipped_style": item.style_name,
            "format": None if converted is None else converted.source_format,
            "ignored_keys": 0 if converted is None else len(converted.ignored_keys),
        }
