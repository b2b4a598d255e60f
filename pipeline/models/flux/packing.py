"""FLUX latent packing and flow-matching schedule arithmetic shared by USO and OmniConsistency.

Both authors' codes pack a [B, 16, h, w] latent into [B, (h/2)(w/2), 64] tokens row-major over
2x2 patches (feature = channel*4 + dy*2 + dx) and shift a linear sigma schedule with
exp(mu) / (exp(mu) + 1/sigma - 1). Where they differ (how mu is computed, where the schedule
starts, how the Euler step is rounded) lives in each model's own module.
"""

from __future__ import annotations

import math

import torch

LATENT_CHANNELS = 16
BASE_SEQ_LEN, MAX_SEQ_LEN = 256, 4096
BASE_SHIFT, MAX_SHIFT = 0.5, 1.15


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/2)(w/2), C*4], i.e. b c (h 2) (w 2) -> b (h w) (c 2 2)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2)
    x = x.permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of `pack_latents` for a latent of spatial size (h, w)."""
    b, _, d = tokens.shape
    c = d // 4
    x = tokens.view(b, h // 2, w // 2, c, 2, 2)
    x = x.permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def grid_position_ids(
    rows: int,
    cols: int,
    row_offset: float = 0.0,
    col_offset: float = 0.0,
    row_scale: float = 1.0,
    col_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """RoPE ids (0, row*row_scale + row_offset, col*col_scale + col_offset), row-major, [rows*cols, 3]."""
    ids = torch.zeros(rows, cols, 3, dtype=dtype)
    ids[..., 1] = torch.arange(rows)[:, None] * row_scale + row_offset
    ids[..., 2] = torch.arange(cols)[None, :] * col_scale + col_offset
    return ids.reshape(rows * cols, 3)


def linear_mu(
    image_seq_len: float,
    base_seq_len: int = BASE_SEQ_LEN,
    max_seq_len: int = MAX_SEQ_LEN,
    base_shift: float = BASE_SHIFT,
    max_shift: float = MAX_SHIFT,
) -> float:
    """The FLUX resolution-dependent shift: linear through (256, 0.5) and (4096, 1.15)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + (base_shift - slope * base_seq_len)


def time_shift(mu: float, sigma: torch.Tensor | float, exponent: float = 1.0):
    """exp(mu) / (exp(mu) + (1/sigma - 1)^exponent), the FLUX timestep shift."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigma - 1) ** exponent)
