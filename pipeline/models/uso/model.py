"""USO (ByteDance, arXiv 2508.18966): subject-, style-, subject+style- and multi-style generation.

`USOModel` implements the runner's `StylizationModel` interface on diffusers' FLUX classes and
computes what the authors' inference computes (parity-tested against vectors made with their
code; see pipeline/parity/uso.py). A request's `subject` is the content image P0 (VAE tokens
appended to the image stream), its `styles` are P1..Pn (SigLIP + projector tokens prepended to
the text stream); either may be absent, and the prompt may be empty.

Defaults are the authors': 1024x1024, 25 steps, distilled guidance 4.0, content_ref 512, pe "d",
bf16 transformer/LoRA/projector on CUDA (fp32 on CPU), fp32 VAE and SigLIP, LoRA unmerged, USO's
timestep shift.

Documented deviations (all deliberate):
- Noise comes from a CPU `torch.Generator` seeded with `request.seed` (float32, then cast), so a
  seed gives the same image on any machine; the reference draws bf16 noise on the accelerator's
  generator, so the same seed gives other noise there.
- Subject latent: the posterior MEAN by default (`extra["subject_latent"] = "mean"`); the
  reference samples from the unseeded global RNG (not reproducible). "sample" draws from the
  item's generator right after the noise.
- SigLIP + projector run once per style image and are cached per image (hash of the pixels)
  across items; the reference recomputes them on every step (same values).

`ModelOptions` (numerics-changing options are off by default; the shared rules are
`pipeline.models.runtime`'s):
- dtype "auto" (bf16 on CUDA, fp32 on CPU), or "bfloat16"/"float16"/"float32".
- fuse_lora: merge the LoRA into the base weights (bf16 rounding differs slightly).
- fp8: store the transformer blocks' Linear weights in row-scaled float8 (`models.fp8`); not
  together with fuse_lora.
- compile: torch.compile each transformer block (regional compilation, `models.compilation`).
- offload: keep components on the CPU and move each to the GPU only while it runs.
- max_batch_size: items with the same token layout (size, steps, subject size, number of
  styles) share one forward.
- extra (USO-specific, `prepare.USOSettings`; an unknown key is an error): "pe" (d/h/w/o,
  default d), "content_ref" (512), "subject_latent" ("mean"/"sample"), "style_cache_size" (256
  images, 0 = off), "subject_cache_size" (64 subject latents, "mean" mode only),
  "text_cache_size" (64 prompts), "siglip_dtype" / "vae_dtype" ("float32"), "max_side" (4096:
  larger sides are impossible sizes), "attention_backend" (a diffusers attention backend such
  as "_native_cudnn" or "flash" instead of torch SDPA; no Hub kernels), "default_size",
  "default_steps", "default_guidance"; and the speed switches both models share
  (`models.speed`: "sdpa_backend", "fp8_matmul", "compile_mode", "compile_backend").
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from pathlib import Path

import torch

from pipeline.models.base import (
    GenerationOutcome,
    GenerationRequest,
    ModelOptions,
    StylizationModel,
)
from pipeline.models.finite import FiniteWatch, non_finite_error
from pipeline.models.flux.text_encoders import FluxTextEncoders
from pipeline.models.runtime import Runtime, prepare_all, run_splitting_failures
from pipeline.models.transfers import HostTransfers
from pipeline.models.uso.components import USOComponents, load_components, random_components
from pipeline.models.uso.prepare import PreparedItem, USOSettings, prepare_request, subject_grid
from pipeline.models.uso.projector import ImageTensorCache
from pipeline.models.uso.sampling import (
    DenoiseBatch,
    decode_latents,
    denoise,
    to_uint8_images,
    unpack_to_latents,
)
from pipeline.models.weight_layout import USOFiles


def _cat_all_or_none(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    """One optional tensor per item of a batch, concatenated; None when the first has none.
    Items of a batch share a token layout (`batch_key`), so all have the tensor or none does."""
    if tensors[0] is None:
        return None
    present = [t for t in tensors if t is not None]
    assert len(present) == len(tensors)  # one layout: all or none
    return torch.cat(present)


class USOModel(StylizationModel):
    """A loaded USO stack; one per actor. See the module docstring for options and deviations."""

    name = "uso"

    def __init__(
        self,
        components: USOComponents,
        text_encoders: FluxTextEncoders,
        settings: USOSettings,
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
        self.subject_cache = ImageTensorCache(settings.subject_cache_size)
        self.transfers = HostTransfers(runtime.device)
        flux = components.transformer.flux
        runtime.store_in_fp8(flux)
        if settings.attention_backend:
            flux.set_attention_backend(settings.attention_backend)
        runtime.compile(flux)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def dtype(self) -> torch.dtype:
        return self.runtime.dtype

    # ------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, weights_root: Path, options: ModelOptions) -> USOModel:
        settings = USOSettings.from_extra(options.extra)
        runtime = Runtime.from_options(options)
        files = USOFiles.from_root(Path(weights_root))
        components = load_components(
            transformer=files.flux.transformer,
            vae=files.flux.vae,
            dit_lora=files.dit_lora,
            projector=files.projector,
            siglip=files.siglip,
            flux_config=files.flux.flux_config,
            dtype=runtime.dtype,
            device=runtime.home,
            siglip_dtype=settings.siglip_dtype,
            vae_dtype=settings.vae_dtype,
            merge_lora=options.fuse_lora,
            style_cache_size=settings.style_cache_size,
        )
        text = FluxTextEncoders.load(
            files.flux,
            runtime.device,
            runtime.dtype,
            cache_size=settings.text_cache_size,
            offload=options.offload,
        )
        text.check_widths(components.transformer.flux.config, files.flux)
        return cls(components, text, settings, runtime, files.named())

    @classmethod
    def load_random(cls, options: ModelOptions, size: str = "full") -> USOModel:
        """The USO architecture at `size` ("full": FLUX.1-dev + USO + SigLIP so400m + T5-XXL +
        CLIP-L; "small"/"tiny": CPU shapes) with random weights built where they live.
        For speed benchmarks only: `random_weights` is True and `weight_files()` is empty."""
        settings = USOSettings.from_extra(options.extra)
        runtime = Runtime.from_options(options)
        components = random_components(
            size,
            dtype=runtime.dtype,
            device=runtime.home,
            siglip_dtype=settings.siglip_dtype,
            vae_dtype=settings.vae_dtype,
            style_cache_size=settings.style_cache_size,
        )
        text = FluxTextEncoders.random(
            size,
            device=runtime.device,
            dtype=runtime.dtype,
            cache_size=settings.text_cache_size,
            offload=options.offload,
        )
        return cls(components, text, settings, runtime, {}, random_weights=True)

    # ----------------------------------------------------------------------- the interface
    def weight_files(self) -> dict[str, Path]:
        return dict(self._files)

    def batch_key(self, request: GenerationRequest) -> Hashable:
        """Requests that can share one forward: same target size, steps, subject token grid
        and number of style images (nothing is masked, so token counts must match)."""
        width = (request.width or self.settings.default_size) // 16 * 16
        height = (request.height or self.settings.default_size) // 16 * 16
        grid: tuple[int, int] | tuple[str, int] | None = None
        if request.subject is not None:
            try:
                grid = subject_grid(request.subject.size, self.settings.content_ref)
            except Exception:  # an unreadable image fails later as an item error
                grid = ("unreadable", id(request))
        return (
            width,
            height,
            request.steps or self.settings.default_steps,
            grid,
            len(request.styles),
        )

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationOutcome]:
        prepared, outcomes = prepare_all(requests, self._prepare, self.runtime, "USO")
        for group in self._layout_groups(prepared):
            results = run_splitting_failures(group, self._run_batch, self.runtime, "USO")
            for item, outcome in zip(group, results, strict=True):
                outcomes[item.index] = outcome
        return outcomes  # type: ignore[return-value]

    def close(self) -> None:
        self.components.style_encoder.cache.clear()
        self.subject_cache.clear()
        self.text_encoders.free()
        self.components = None  # type: ignore[assignment]
        self.runtime.free_memory()

    # --------------------------------------------------------------------------- internals
    def _prepare(self, index: int, request: GenerationRequest) -> PreparedItem:
        item = prepare_request(
            index,
            request,
            components=self.components,
            text_encoders=self.text_encoders,
            settings=self.settings,
            runtime=self.runtime,
            subject_cache=self.subject_cache,
        )
        item.parameters.update(self.runtime.parameters(self.random_weights))
        return item

    def _layout_groups(self, items: list[PreparedItem]) -> list[list[PreparedItem]]:
        """Consecutive-agnostic grouping by token layout, each group cut to max_batch_size."""
        by_layout: dict[Hashable, list[PreparedItem]] = {}
        for item in items:
            by_layout.setdefault(item.layout, []).append(item)
        size = self.runtime.options.max_batch_size
        return [
            group[i : i + size] for group in by_layout.values() for i in range(0, len(group), size)
        ]

    def _run_batch(self, group: Sequence[PreparedItem]) -> list[GenerationOutcome]:
        first = group[0]
        batch = DenoiseBatch(
            noise=self.transfers.to_device(torch.cat([it.noise for it in group])),
            t5_states=torch.cat([it.t5_states for it in group]),
            pooled=torch.cat([it.pooled for it in group]),
            guidance=torch.tensor([it.guidance for it in group]),
            sigmas=first.sigmas,
            style_tokens=_cat_all_or_none([it.style_tokens for it in group]),
            subject_latents=_cat_all_or_none([it.subject_latents for it in group]),
            pe=self.settings.pe,
        )
        started = time.perf_counter()
        transformer = self.components.transformer
        watch = FiniteWatch(len(group), self.device)
        with self.runtime.resident(transformer), self.runtime.attention():
            packed = denoise(transformer, batch, watch=watch)
            self.runtime.synchronize()
        bad_steps = watch.first_bad_steps()  # once per batch, after the loop's own sync
        denoised = time.perf_counter()
        latents = unpack_to_latents(packed, batch.latent_size)
        copies: list = []
        with self.runtime.resident(self.components.vae):
            for row in range(latents.shape[0]):  # one at a time: VAE decode memory is per image
                if bad_steps[row] is not None:  # nothing to decode: the item's error instead
                    copies.append(None)
                    continue
                decoded = decode_latents(self.components.vae, latents[row : row + 1])
                copies.append(self.transfers.to_host(to_uint8_images(decoded)[0]))
        images = [None if copy is None else copy.wait().numpy() for copy in copies]
        batch_timings = {
            "denoise_s": denoised - started,
            "decode_s": time.perf_counter() - denoised,
        }
        shared = sum(batch_timings.values()) / len(group)
        outcomes = []
        for item, image, bad_step in zip(group, images, bad_steps, strict=True):
            timings = {
                **item.timings,
                **batch_timings,
                "model_s": item.timings["text_s"] + item.timings["prepare_s"] + shared,
            }
            error = None
            if bad_step is not None:
                steps = len(batch.sigmas) - 1
                error = non_finite_error(item.request.item_id, bad_step, steps, item.guidance, None)
            outcomes.append(
                GenerationOutcome(
                    item.request.item_id,
                    image=image,
                    error=error,
                    parameters={**item.parameters, "batch_size": len(group)},
                    timings=timings,
                )
            )
        return outcomes
