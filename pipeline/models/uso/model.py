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

`ModelOptions` (numerics-changing options are off by default):
- dtype "auto" (bf16 on CUDA, fp32 on CPU), or "bfloat16"/"float16"/"float32".
- fuse_lora: merge the LoRA into the base weights (bf16 rounding differs slightly).
- fp8: store the transformer blocks' Linear weights in row-scaled float8 (see flux_fp8).
- compile: torch.compile each transformer block (diffusers' regional compilation).
- offload: keep components on the CPU and move each to the GPU only while it runs.
- max_batch_size: items with the same token layout (size, steps, subject size, number of
  styles) share one forward.
- extra (USO-specific): "pe" (d/h/w/o, default d), "content_ref" (512), "subject_latent"
  ("mean"/"sample"), "style_cache_size" (256 images, 0 = off), "subject_cache_size" (64
  subject latents, "mean" mode only), "text_cache_size" (64 prompts),
  "siglip_dtype" / "vae_dtype" ("float32"), "max_side" (4096: larger sides are impossible sizes),
  "compile_mode" (passed to torch.compile), "attention_backend" (a diffusers attention backend
  such as "_native_cudnn" or "flash"; default: torch SDPA's own choice; no Hub kernels).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Hashable, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import ItemError, ItemStatus, WeightFileError
from pipeline.models.base import (
    GenerationOutcome,
    GenerationRequest,
    ModelOptions,
    StylizationModel,
)
from pipeline.models.flux.text_encoders import FluxTextEncoders
from pipeline.models.fp8 import store_linears_in_fp8
from pipeline.models.runtime import resolve_device, resolve_dtype
from pipeline.models.uso.components import USOComponents, load_uso_components, random_uso_components
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

log = logging.getLogger(__name__)



def is_out_of_memory(error: BaseException) -> bool:
    """CUDA OOM, or the CPU allocator refusing an allocation."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text
                                                or "can't allocate memory" in text)


def _check_text_widths(parts: USOComponents, text: FluxTextEncoders, files: USOFiles) -> None:
    """T5/CLIP widths must be what the transformer's context/pooled embedders read; found at
    load time (by encoding the empty prompt, which also warms the cache), not mid-batch."""
    t5, pooled = text.encode("")
    cfg = parts.transformer.flux.config
    if t5.shape[-1] != cfg.joint_attention_dim:
        raise WeightFileError(files.flux.t5, f"T5 width {t5.shape[-1]} != the transformer's "
                              f"context width {cfg.joint_attention_dim}")
    if pooled.shape[-1] != cfg.pooled_projection_dim:
        raise WeightFileError(files.flux.clip, f"CLIP pooled width {pooled.shape[-1]} != the "
                              f"transformer's pooled width {cfg.pooled_projection_dim}")


class USOModel(StylizationModel):
    """A loaded USO stack; one per actor. See the module docstring for options and deviations."""

    name = "uso"

    def __init__(self, components: USOComponents, text_encoders: FluxTextEncoders,
                 options: ModelOptions, settings: USOSettings, device: torch.device,
                 dtype: torch.dtype, files: dict[str, Path], random_weights: bool = False):
        self.components = components
        self.text_encoders = text_encoders
        self.options = options
        self.settings = settings
        self.device = device
        self.dtype = dtype
        self._files = files
        self.random_weights = random_weights  # True: benchmark-only weights, no provenance
        self.subject_cache = ImageTensorCache(settings.subject_cache_size)
        self._apply_speed_options()

    # ------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, weights_root: Path, options: ModelOptions) -> USOModel:
        settings = USOSettings.from_extra(options.extra)
        device = resolve_device(options.device)
        dtype = resolve_dtype(options.dtype, device)
        home = torch.device("cpu") if options.offload else device
        files = USOFiles.from_root(Path(weights_root))
        components = load_uso_components(
            transformer=files.flux.transformer, vae=files.flux.vae, dit_lora=files.dit_lora,
            projector=files.projector, siglip=files.siglip, flux_config=files.flux.flux_config,
            dtype=dtype, device=home, siglip_dtype=settings.siglip_dtype,
            vae_dtype=settings.vae_dtype, merge_lora=options.fuse_lora,
            style_cache_size=settings.style_cache_size)
        text = FluxTextEncoders.load(files.flux, device, dtype, cache_size=settings.text_cache_size,
                                     offload=options.offload)
        _check_text_widths(components, text, files)
        return cls(components, text, options, settings, device, dtype, files.named())

    @classmethod
    def load_random(cls, options: ModelOptions, size: str = "full") -> USOModel:
        """The USO architecture at `size` ("full": FLUX.1-dev + USO + SigLIP so400m + T5-XXL +
        CLIP-L; "small"/"tiny": CPU shapes) with random weights built on the device.
        For speed benchmarks only: `random_weights` is True and `weight_files()` is empty."""
        settings = USOSettings.from_extra(options.extra)
        device = resolve_device(options.device)
        dtype = resolve_dtype(options.dtype, device)
        home = torch.device("cpu") if options.offload else device
        components = random_uso_components(size, dtype=dtype, device=home,
                                           siglip_dtype=settings.siglip_dtype,
                                           vae_dtype=settings.vae_dtype,
                                           style_cache_size=settings.style_cache_size)
        text = FluxTextEncoders.random(size, device=home,
                                       dtype=dtype, cache_size=settings.text_cache_size,
                                       offload=options.offload)
        if options.offload:  # built on the CPU (its home when offloaded), encodes on the device
            text.device = device
        return cls(components, text, options, settings, device, dtype, {}, random_weights=True)

    def _apply_speed_options(self) -> None:
        flux = self.components.transformer.flux
        if self.options.fp8:
            for blocks in (flux.transformer_blocks, flux.single_transformer_blocks):
                store_linears_in_fp8(blocks)
        if self.settings.attention_backend:
            flux.set_attention_backend(self.settings.attention_backend)
        if self.options.compile:
            kwargs = {"fullgraph": True}
            if self.settings.compile_mode:
                kwargs["mode"] = self.settings.compile_mode
            flux.compile_repeated_blocks(**kwargs)

    # ----------------------------------------------------------------------- the interface
    def weight_files(self) -> dict[str, Path]:
        return dict(self._files)

    def batch_key(self, request: GenerationRequest) -> Hashable:
        """Requests that can share one forward: same target size, steps, subject token grid
        and number of style images (nothing is masked, so token counts must match)."""
        width = (request.width or self.settings.default_size) // 16 * 16
        height = (request.height or self.settings.default_size) // 16 * 16
        grid = None
        if request.subject is not None:
            try:
                grid = subject_grid(request.subject.size, self.settings.content_ref)
            except Exception:  # an unreadable image fails later as an item error
                grid = ("unreadable", id(request))
        return (width, height, request.steps or self.settings.default_steps, grid,
                len(request.styles))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationOutcome]:
        outcomes: list[GenerationOutcome | None] = [None] * len(requests)
        prepared: list[PreparedItem] = []
        for index, request in enumerate(requests):
            started = time.perf_counter()
            try:
                item = prepare_request(request, index, parts=self.components,
                                       text_encoders=self.text_encoders, settings=self.settings,
                                       dtype=self.dtype, resident=self._resident,
                                       subject_cache=self.subject_cache)
            except Exception as error:  # noqa: BLE001 - every failure becomes this item's record
                outcomes[index] = GenerationOutcome(request.item_id,
                                                    error=self._item_error(request, error))
                continue
            item.timings["prepare"] = time.perf_counter() - started
            item.parameters.update(self._option_parameters())
            prepared.append(item)
        for group in self._layout_groups(prepared):
            self._run_group(group, outcomes)
        return outcomes  # type: ignore[return-value]

    def close(self) -> None:
        self.components.style_encoder.cache.clear()
        self.subject_cache.clear()
        self.text_encoders.free()
        self.components = None  # type: ignore[assignment]
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # --------------------------------------------------------------------------- internals
    def _option_parameters(self) -> dict:
        """Execution choices that affect the pixels, for each item's provenance."""
        return {"lora": "merged" if self.options.fuse_lora else "unmerged",
                "fp8": self.options.fp8, "compile": self.options.compile,
                "random_weights": self.random_weights}

    def _item_error(self, request: GenerationRequest, error: BaseException) -> ItemError:
        if isinstance(error, ItemError):
            return error
        if is_out_of_memory(error):
            self._free_memory()
            return ItemError(request.item_id, ItemStatus.OUT_OF_MEMORY, f"out of memory: {error}")
        log.exception("USO failed on item %r", request.item_id)
        return ItemError(request.item_id, ItemStatus.MODEL_ERROR, f"{type(error).__name__}: {error}")

    def _free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @contextmanager
    def _resident(self, module: nn.Module):
        """With offload, bring `module` to the accelerator for the block and send it back."""
        if not self.options.offload or self.device.type == "cpu":
            yield
            return
        module.to(self.device)
        try:
            yield
        finally:
            module.to("cpu")

    def _layout_groups(self, items: list[PreparedItem]) -> list[list[PreparedItem]]:
        """Consecutive-agnostic grouping by token layout, each group cut to max_batch_size."""
        by_layout: dict[Hashable, list[PreparedItem]] = {}
        for item in items:
            by_layout.setdefault(item.layout, []).append(item)
        size = max(1, self.options.max_batch_size)
        return [group[i:i + size] for group in by_layout.values()
                for i in range(0, len(group), size)]

    def _run_group(self, group: list[PreparedItem], outcomes: list) -> None:
        """Run a batch; on any failure, retry its items one by one so one bad or too-large
        item cannot fail its neighbours (after an OOM, memory is freed first)."""
        try:
            images, timings = self._run_batch(group)
        except Exception as error:  # noqa: BLE001
            if is_out_of_memory(error):
                self._free_memory()
            if len(group) > 1:
                log.warning("USO batch of %d failed (%s); retrying one by one", len(group), error)
                for item in group:
                    self._run_group([item], outcomes)
                return
            item = group[0]
            outcomes[item.index] = GenerationOutcome(item.request.item_id,
                                                     error=self._item_error(item.request, error),
                                                     parameters=item.parameters,
                                                     timings=item.timings)
            return
        for item, image in zip(group, images):
            item.parameters["batch_size"] = len(group)
            outcomes[item.index] = GenerationOutcome(item.request.item_id, image=image,
                                                     parameters=item.parameters,
                                                     timings={**item.timings, **timings})

    def _run_batch(self, group: list[PreparedItem]) -> tuple[list, dict[str, float]]:
        first = group[0]
        batch = DenoiseBatch(
            noise=torch.cat([it.noise for it in group]),
            t5_states=torch.cat([it.t5_states for it in group]),
            pooled=torch.cat([it.pooled for it in group]),
            guidance=torch.tensor([it.guidance for it in group]),
            sigmas=first.sigmas,
            style_tokens=None if first.style_tokens is None else
            torch.cat([it.style_tokens for it in group]),
            subject_latents=None if first.subject_latents is None else
            torch.cat([it.subject_latents for it in group]),
            pe=self.settings.pe,
        )
        started = time.perf_counter()
        transformer = self.components.transformer
        with self._resident(transformer):
            packed = denoise(transformer, batch)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # once per batch, for honest stage timings
        denoised = time.perf_counter()
        latents = unpack_to_latents(packed, batch.latent_size)
        images = []
        with self._resident(self.components.vae):
            for row in range(latents.shape[0]):  # one at a time: VAE decode memory is per image
                decoded = decode_latents(self.components.vae, latents[row:row + 1])
                images.append(to_uint8_images(decoded)[0].cpu().numpy())
        finished = time.perf_counter()
        return images, {"denoise": denoised - started, "decode": finished - denoised}
