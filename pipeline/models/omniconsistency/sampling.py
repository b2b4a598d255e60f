"""OmniConsistency's computation on loaded modules, from text embeddings to pixels.

Reads top to bottom like the authors' pipeline (shared/reference/omniconsistency.md):
condition image squashed to cond x cond (PIL LANCZOS) -> VAE encode (posterior sample from the
item's CPU generator right after the noise, or the mean) -> packed condition tokens whose RoPE
positions are stretched over the output grid -> warm-up pass at t=0 filling the condition K/V
cache -> FLUX-dev Euler loop (sigmas linspace(1, 1/N, N) shifted with mu from the noise tokens
only; timesteps rounded to the pipeline dtype; Euler in fp32) -> decode
(z/scaling + shift, VAE in the pipeline dtype, round(clamp(x/2+0.5)*255)).

Text encoders are not here: every call takes (T5 embeddings, pooled CLIP) tensors, so the parity
runner and the model share exactly this code. The step loop has no host synchronisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from pipeline.models.architecture import FLUX_DEV_SCHEDULER
from pipeline.models.flux.packing import (
    LATENT_CHANNELS,
    grid_position_ids,
    linear_mu,
    pack_latents,
    unpack_latents,
)
from pipeline.models.omniconsistency.attention import (
    CONTEXT_KWARG,
    CondKVCache,
    OmniAttentionContext,
    Phase,
    check_lora_matches,
    install_processors,
)
from pipeline.models.omniconsistency.lora import ConsistencyLora
from pipeline.models.transfers import HostTransfers, upload

POSTERIOR_CHOICES = ("sample", "mean")
NOISE_DESCRIPTION = "diffusers randn_tensor on a CPU generator seeded with seed, in the model dtype"
MAX_SIDE = 4096  # pixels; beyond this a request is refused as an impossible size


@dataclass(frozen=True)
class TokenLayout:
    """Token grids and RoPE positions for one output size and condition size (reference sec. 3).

    The reference's pipeline factor is 2**len(vae.block_out_channels) = 16 (not the VAE's x8), so
    the noise latent is 2*(H//16) x 2*(W//16) and the output is floored to multiples of 16.
    """

    width: int
    height: int
    cond_size: int
    latent_factor: int = 16

    def __post_init__(self):
        for name, value in (("width", self.width), ("height", self.height)):
            if not isinstance(value, int) or value < self.latent_factor or value > MAX_SIDE:
                raise ValueError(
                    f"impossible {name} {value!r}: must be an integer in "
                    f"[{self.latent_factor}, {MAX_SIDE}]"
                )
        if (
            not isinstance(self.cond_size, int)
            or self.cond_size < self.latent_factor
            or self.cond_size % self.latent_factor
        ):
            raise ValueError(
                f"cond_size {self.cond_size!r} must be a positive multiple of {self.latent_factor}"
            )

    @property
    def latent_hw(self) -> tuple[int, int]:
        return 2 * (self.height // self.latent_factor), 2 * (self.width // self.latent_factor)

    @property
    def cond_latent_side(self) -> int:
        return 2 * (self.cond_size // self.latent_factor)

    @property
    def noise_grid(self) -> tuple[int, int]:
        h, w = self.latent_hw
        return h // 2, w // 2

    @property
    def cond_grid(self) -> tuple[int, int]:
        return self.cond_latent_side // 2, self.cond_latent_side // 2

    @property
    def n_noise(self) -> int:
        return math.prod(self.noise_grid)

    @property
    def n_cond(self) -> int:
        return math.prod(self.cond_grid)

    @property
    def position_scale(self) -> tuple[float, float]:
        """How far apart condition tokens sit on the noise grid (a Python double, as in the
        reference)."""
        h, w = self.latent_hw
        return h / self.cond_latent_side, w / self.cond_latent_side

    @property
    def output_hw(self) -> tuple[int, int]:
        h, w = self.latent_hw
        return h * self.latent_factor // 2, w * self.latent_factor // 2

    def noise_ids(self, dtype: torch.dtype) -> torch.Tensor:
        return grid_position_ids(*self.noise_grid, dtype=dtype)

    def cond_ids(self, dtype: torch.dtype) -> torch.Tensor:
        """Stretched onto the output canvas; computed in float32 then stored in `dtype` (the
        reference builds ids in the pipeline dtype, so bf16 rounds fractional positions)."""
        scale_h, scale_w = self.position_scale
        return grid_position_ids(*self.cond_grid, row_scale=scale_h, col_scale=scale_w, dtype=dtype)


@dataclass(frozen=True)
class Schedule:
    sigmas: torch.Tensor  # [N+1] float32, shifted, terminal 0
    timesteps: torch.Tensor  # [N] float32 = sigmas[:N] * 1000
    mu: float


def flux_dev_schedule(
    scheduler_config: dict, steps: int, n_noise: int, device: torch.device
) -> Schedule:
    """The reference's schedule: explicit sigmas linspace(1, 1/N, N), mu from noise tokens only."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config))
    config = scheduler.config
    mu = linear_mu(
        n_noise,
        config.base_image_seq_len,
        config.max_image_seq_len,
        config.base_shift,
        config.max_shift,
    )
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu, device=device)
    return Schedule(
        scheduler.sigmas.to(device=device, dtype=torch.float32),
        scheduler.timesteps.to(device=device, dtype=torch.float32),
        mu,
    )


@lru_cache(maxsize=8)
def _image_processor(latent_factor: int) -> VaeImageProcessor:
    return VaeImageProcessor(vae_scale_factor=latent_factor, resample="lanczos", do_normalize=True)


def condition_pixels(image: Image.Image, cond_size: int, latent_factor: int = 16) -> torch.Tensor:
    """Source image -> [1, 3, cond, cond] float32 in [-1, 1]: PIL LANCZOS squash, no crop/pad."""
    return (
        _image_processor(latent_factor)
        .preprocess(image.convert("RGB"), height=cond_size, width=cond_size)
        .to(torch.float32)
    )


def euler_step(
    latents: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """diffusers' FlowMatchEuler step: sample upcast to fp32, cast back to the velocity dtype."""
    return (latents.to(torch.float32) + (sigma_next - sigma) * velocity).to(velocity.dtype)


def to_uint8(decoded: torch.Tensor, transfers: HostTransfers | None = None) -> list[np.ndarray]:
    """diffusers' postprocess: clamp(x/2 + 0.5) in the decode dtype, then round(x*255) -> HWC
    uint8 (the copy to the host through `transfers` when given)."""
    scaled = (decoded / 2 + 0.5).clamp(0, 1)
    host = scaled.cpu() if transfers is None else transfers.to_host(scaled).wait()
    images = host.permute(0, 2, 3, 1).float().numpy()
    return list((images * 255).round().astype(np.uint8))


StepObserver = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step, velocity, latents_after)


class OmniConsistencySampler:
    """The OmniConsistency computation around one FLUX transformer, VAE and consistency LoRA.

    Holds no per-generation state: `warm_up` returns the generation's cache, `denoise` takes it.
    """

    def __init__(
        self,
        transformer: FluxTransformer2DModel,
        vae: AutoencoderKL,
        consistency_lora: ConsistencyLora,
        scheduler_config: dict | None = None,
        *,
        dtype: torch.dtype,
        device: torch.device,
        consistency_weight: float = 1.0,
        apply_proj_loras: bool = False,
    ):
        check_lora_matches(transformer, consistency_lora)
        install_processors(transformer)
        self.transformer = transformer
        self.vae = vae
        self.consistency_lora = consistency_lora
        self.scheduler_config = dict(scheduler_config or FLUX_DEV_SCHEDULER)
        self.dtype = dtype
        self.device = torch.device(device)
        self.consistency_weight = float(consistency_weight)
        self.apply_proj_loras = bool(apply_proj_loras)
        # The reference's pipeline factor (16 for FLUX's 4-level VAE; the VAE itself is x8).
        self.latent_factor = 2 ** len(vae.config.block_out_channels)
        self.transfers = HostTransfers(self.device)

    def layout(self, width: int, height: int, cond_size: int) -> TokenLayout:
        return TokenLayout(width, height, cond_size, self.latent_factor)

    def schedule(self, steps: int, layout: TokenLayout) -> Schedule:
        return flux_dev_schedule(self.scheduler_config, steps, layout.n_noise, self.device)

    # --- inputs -------------------------------------------------------------------------
    def initial_noise(
        self, layout: TokenLayout, generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        """[B, 16, h, w] in the pipeline dtype, drawn on the CPU from each item's generator (as
        diffusers' randn_tensor does for a device other than the generators'), then moved."""
        shape = (len(generators), LATENT_CHANNELS, *layout.latent_hw)
        cpu = torch.device("cpu")
        noise = randn_tensor(shape, generator=list(generators), device=cpu, dtype=self.dtype)
        return self.transfers.to_device(noise)

    def encode_condition(
        self,
        pixels: torch.Tensor,
        generators: Sequence[torch.Generator] | None,
        posterior: str = "sample",
    ) -> torch.Tensor:
        """[B, 3, c, c] pixels -> shifted/scaled latent [B, 16, c/8, c/8] in the pipeline dtype.

        "sample" draws from each item's generator (the reference; call right after the noise),
        "mean" takes the posterior mean (deterministic).
        """
        if posterior not in POSTERIOR_CHOICES:
            raise ValueError(f"posterior must be one of {POSTERIOR_CHOICES}, got {posterior!r}")
        dist = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        if posterior == "mean":
            latent = dist.mean
        elif generators is None:
            raise ValueError('posterior "sample" needs one generator per item')
        else:
            latent = dist.sample(list(generators))
        latent = latent.to(self.dtype)
        return (latent - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    # --- the two passes -----------------------------------------------------------------
    def _guidance(self, guidance: Sequence[float]) -> torch.Tensor | None:
        if not self.transformer.config.guidance_embeds:
            return None
        return upload(torch.tensor(list(guidance), dtype=torch.float32), self.device)

    def _text_ids(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        return torch.zeros(prompt_embeds.shape[1], 3, device=self.device, dtype=self.dtype)

    def warm_up(
        self,
        cond_latent: torch.Tensor,
        prompt_embeds: torch.Tensor,
        pooled: torch.Tensor,
        guidance: Sequence[float],
        layout: TokenLayout,
    ) -> CondKVCache:
        """One pass over [text, condition] at t=0 with the consistency LoRA; returns the cache."""
        batch = cond_latent.shape[0]
        cache = CondKVCache(n_cond=layout.n_cond)
        context = OmniAttentionContext(
            Phase.WARMUP,
            cache,
            self.consistency_lora,
            self.consistency_weight,
            self.apply_proj_loras,
        )
        self.transformer(
            hidden_states=pack_latents(cond_latent.to(self.device, self.dtype)),
            timestep=torch.zeros(batch, device=self.device, dtype=self.dtype),
            guidance=self._guidance(guidance),
            pooled_projections=pooled.to(self.device, self.dtype),
            encoder_hidden_states=prompt_embeds.to(self.device, self.dtype),
            txt_ids=self._text_ids(prompt_embeds),
            img_ids=upload(layout.cond_ids(self.dtype), self.device),
            joint_attention_kwargs={CONTEXT_KWARG: context},
            return_dict=False,
        )
        return cache

    def denoise(
        self,
        noise: torch.Tensor,
        cache: CondKVCache,
        prompt_embeds: torch.Tensor,
        pooled: torch.Tensor,
        guidance: Sequence[float],
        layout: TokenLayout,
        schedule: Schedule,
        on_step: StepObserver | None = None,
    ) -> torch.Tensor:
        """The FLUX-dev Euler loop reading the cache; returns the unpacked final latent."""
        if cache.n_cond != layout.n_cond:
            raise ValueError(
                f"cache holds {cache.n_cond} condition tokens, layout expects {layout.n_cond}"
            )
        batch = noise.shape[0]
        context = OmniAttentionContext(Phase.DENOISE, cache)
        latents = pack_latents(noise.to(self.device, self.dtype))
        img_ids = upload(
            torch.cat([layout.noise_ids(self.dtype), layout.cond_ids(self.dtype)]), self.device
        )
        prompt_embeds = prompt_embeds.to(self.device, self.dtype)
        pooled = pooled.to(self.device, self.dtype)
        guidance_tensor = self._guidance(guidance)
        text_ids = self._text_ids(prompt_embeds)
        steps = schedule.timesteps.shape[0]
        for i in range(steps):
            # The reference rounds t to the pipeline dtype, then divides by 1000 in that dtype.
            timestep = schedule.timesteps[i].expand(batch).to(self.dtype) / 1000
            velocity = self.transformer(
                hidden_states=latents,
                timestep=timestep,
                guidance=guidance_tensor,
                pooled_projections=pooled,
                encoder_hidden_states=prompt_embeds,
                txt_ids=text_ids,
                img_ids=img_ids,
                joint_attention_kwargs={CONTEXT_KWARG: context},
                return_dict=False,
            )[0]
            latents = euler_step(latents, velocity, schedule.sigmas[i], schedule.sigmas[i + 1])
            if on_step is not None:
                on_step(i, velocity, latents)
        return unpack_latents(latents, *layout.latent_hw)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Unpacked latent -> raw VAE output [B, 3, H, W] (before clamping), VAE in its own
        dtype."""
        latent = latent / self.vae.config.scaling_factor + self.vae.config.shift_factor
        return self.vae.decode(latent.to(self.vae.dtype), return_dict=False)[0]

    def generate_latent(
        self,
        cond_latent: torch.Tensor,
        noise: torch.Tensor,
        prompt_embeds: torch.Tensor,
        pooled: torch.Tensor,
        guidance: Sequence[float],
        layout: TokenLayout,
        steps: int,
        on_step: StepObserver | None = None,
    ) -> tuple[torch.Tensor, CondKVCache]:
        """Warm-up then denoise; returns (final latent, the generation's cache)."""
        cache = self.warm_up(cond_latent, prompt_embeds, pooled, guidance, layout)
        latent = self.denoise(
            noise,
            cache,
            prompt_embeds,
            pooled,
            guidance,
            layout,
            self.schedule(steps, layout),
            on_step,
        )
        return latent, cache
