"""USO sampling arithmetic: subject preprocessing, schedule, Euler loop, VAE encode/decode.

Everything here follows the authors' inference (reference uso.md sections 1, 4; parity README
"call semantics"), including its quirks:
- schedule: t = linspace(1, 0, steps+1) in float32, shifted with mu taken at
  image_seq_len = (W//8)*(H//8)//256 -- 1/16 of the real token count (XLabs/UNO heritage);
- Euler step x += (t_next - t) * v in the latent dtype, with the difference of the two sigmas
  taken as Python floats;
- subject: LANCZOS resize to long side `content_ref` with a truncated short side, centre crop
  to multiples of 16, [-1, 1] pixels, VAE posterior -> 0.3611 * (z - 0.1159);
- decode: z / 0.3611 + 0.1159, VAE decoder, clamp(-1, 1), uint8 by truncating 127.5 * (x + 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from pipeline.models.finite import FiniteWatch
from pipeline.models.flux.packing import (
    LATENT_CHANNELS,
    grid_position_ids,
    linear_mu,
    pack_latents,
    time_shift,
    unpack_latents,
)
from pipeline.models.transfers import upload
from pipeline.models.uso.transformer import USOTransformer, subject_position_ids

SUBJECT_LATENT_MODES = ("mean", "sample")


def uso_mu(width: int, height: int) -> float:
    """The shift USO actually uses: mu at (W//8)*(H//8)//256 (1/16 of the packed length)."""
    return linear_mu((width // 8) * (height // 8) // 256)


def uso_sigmas(steps: int, width: int, height: int) -> torch.Tensor:
    """float32 [steps+1] from 1 down to 0, shifted as the reference does."""
    t = torch.linspace(1, 0, steps + 1)
    return time_shift(uso_mu(width, height), t)


def preprocess_subject(image: Image.Image, long_side: int = 512) -> Image.Image:
    """The reference's preprocess_ref: LANCZOS to long side `long_side` (short side truncated,
    width counts as long when square), centre crop each side to a multiple of 16, RGB.
    A 16x16 input passes through untouched, as in the reference."""
    w, h = image.size
    if w == h == 16:
        return image.convert("RGB")
    if w >= h:
        new_w, new_h = long_side, int(long_side / w * h)
    else:
        new_w, new_h = int(long_side / h * w), long_side
    resized = image.resize((new_w, new_h), resample=Image.Resampling.LANCZOS)
    target_w, target_h = new_w // 16 * 16, new_h // 16 * 16
    left, top = (new_w - target_w) // 2, (new_h - target_h) // 2
    return resized.crop((left, top, left + target_w, top + target_h)).convert("RGB")


def image_to_pixels(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> [1, 3, h, w] float32 in [-1, 1] (x/255*2-1, as to_tensor then *2-1)."""
    array = np.array(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).float().div(255.0) * 2.0 - 1.0


def draw_noise(generator: torch.Generator, width: int, height: int) -> torch.Tensor:
    """Initial latent [1, 16, 2*ceil(H/16), 2*ceil(W/16)], float32 from a CPU generator.

    Deviation (documented): the reference draws bf16 noise on the accelerator's generator, so
    the same seed gives other numbers there; a CPU generator is reproducible on any machine."""
    shape = (1, LATENT_CHANNELS, 2 * -(-height // 16), 2 * -(-width // 16))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


@torch.inference_mode()
def encode_subject(
    vae: AutoencoderKL,
    pixels: torch.Tensor,
    mode: str = "mean",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[1, 3, h, w] pixels in [-1, 1] -> scaled latent [1, 16, h/8, w/8] in float32.

    mode "mean" takes the posterior mean (deterministic; what the parity vectors use); "sample"
    draws mean + std * eps with eps from `generator` on the CPU (the reference samples too, but
    from the unseeded global RNG, so its subject latent is not reproducible)."""
    if mode not in SUBJECT_LATENT_MODES:
        raise ValueError(f"subject latent mode must be one of {SUBJECT_LATENT_MODES}, got {mode!r}")
    param = next(vae.parameters())
    dist = vae.encode(pixels.to(param.device, param.dtype)).latent_dist
    z = dist.mean
    if mode == "sample":
        eps = torch.randn(z.shape, generator=generator, dtype=torch.float32).to(z.device, z.dtype)
        z = z + dist.std * eps
    cfg = vae.config
    return cfg.scaling_factor * (z.float() - cfg.shift_factor)


@torch.inference_mode()
def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Unpacked latents [B, 16, h, w] -> decoder output [B, 3, H, W] (before the clamp)."""
    param = next(vae.parameters())
    cfg = vae.config
    z = latents.float() / cfg.scaling_factor + cfg.shift_factor
    return vae.decode(z.to(param.device, param.dtype), return_dict=False)[0].float()


def to_uint8_images(decoded: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, H, W, 3] uint8 by clamp and truncation, as the reference's .byte()."""
    x = decoded.clamp(-1, 1).permute(0, 2, 3, 1)
    return (127.5 * (x + 1.0)).to(torch.uint8)


@dataclass
class DenoiseBatch:
    """Everything one batched denoising run needs; rows share one token layout."""

    noise: torch.Tensor  # [B, 16, H/8, W/8] initial latents (any float dtype)
    t5_states: torch.Tensor  # [B, L, D_t5]
    pooled: torch.Tensor  # [B, D_clip]
    guidance: torch.Tensor  # [B]
    sigmas: list[float]  # steps + 1 values, 1 -> 0
    style_tokens: torch.Tensor | None = None  # [B, S, hidden]
    subject_latents: torch.Tensor | None = None  # [B, 16, hs, ws] scaled latents
    pe: str = "d"

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.noise.shape[-2], self.noise.shape[-1]


def position_ids(batch: DenoiseBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(img_ids [N + Ns, 3], txt_ids [S + L, 3]) for the batch's layout."""
    h, w = batch.latent_size
    grid = (h // 2, w // 2)
    ids = [grid_position_ids(*grid)]
    if batch.subject_latents is not None:
        hs, ws = batch.subject_latents.shape[-2:]
        ids += subject_position_ids(grid, [(hs // 2, ws // 2)], batch.pe)
    n_style = 0 if batch.style_tokens is None else batch.style_tokens.shape[1]
    txt_ids = torch.zeros(n_style + batch.t5_states.shape[1], 3)
    return torch.cat(ids), txt_ids


@torch.inference_mode()
def denoise(
    model: USOTransformer,
    batch: DenoiseBatch,
    on_velocity: Callable[[int, torch.Tensor], None] | None = None,
    watch: FiniteWatch | None = None,
) -> torch.Tensor:
    """Euler flow matching over `batch.sigmas`; returns packed final latents [B, N, 64] in the
    model dtype. No host synchronisation inside the loop (sigmas are Python floats); `watch`
    notes, on the device, the rows whose latents went non-finite."""
    device, dtype = model.device, model.dtype
    x = pack_latents(batch.noise.to(device, dtype))
    subject = None
    if batch.subject_latents is not None:
        subject = pack_latents(batch.subject_latents.to(device, dtype))
    img_ids, txt_ids = (upload(ids, device) for ids in position_ids(batch))
    t5 = batch.t5_states.to(device, dtype)
    pooled = batch.pooled.to(device, dtype)
    uses_guidance = model.flux.config.guidance_embeds
    guidance = upload(batch.guidance, device, dtype) if uses_guidance else None
    rows = x.shape[0]
    with model.style_tokens(
        None if batch.style_tokens is None else batch.style_tokens.to(device, dtype)
    ):
        for step, (sigma, sigma_next) in enumerate(
            zip(batch.sigmas[:-1], batch.sigmas[1:], strict=True)
        ):
            t = torch.full((rows,), sigma, device=device, dtype=dtype)
            v = model.velocity(x, subject, t5, pooled, t, guidance, img_ids, txt_ids)
            if on_velocity is not None:
                on_velocity(step, v)
            x = x + (sigma_next - sigma) * v
            if watch is not None:
                watch.observe(step, x)
    return x


def unpack_to_latents(packed: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """[B, N, 64] -> [B, 16, h, w]."""
    return unpack_latents(packed, *latent_size)
