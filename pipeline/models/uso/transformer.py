"""USO's token layout on a stock diffusers FluxTransformer2DModel (reference uso.md section 2).

One velocity evaluation sees:
    text stream  = [style tokens (already projected, no context_embedder) ; context_embedder(T5)]
    image stream = [x_embedder(noisy target tokens) ; x_embedder(clean subject tokens)]
with RoPE ids 0 for every text/style token, (0, row, col) for the target and, for the subject,
(0, row + dh, col + dw) where (dh, dw) is the target grid size for pe "d" (diagonal), only dh for
"h", only dw for "w", nothing for "o". All tokens share the timestep/guidance modulation. Only
the first N image tokens (the target) are returned.

Style tokens bypass context_embedder by wrapping it (`StyleTokenPrepender`); the tokens are set
for the span of one denoising run with `USOTransformer.style_tokens(...)`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers import FluxTransformer2DModel
from torch import nn

from pipeline.models.flux.packing import grid_position_ids

PE_MODES = ("d", "h", "w", "o")


class StyleTokenPrepender(nn.Module):
    """context_embedder wrapper: [style tokens ; Linear(T5 states)] along the sequence."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear
        self.style_tokens: torch.Tensor | None = None  # [B, S, hidden], set per denoising run

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    def forward(self, t5_states: torch.Tensor) -> torch.Tensor:
        text = self.linear(t5_states)
        if self.style_tokens is None:
            return text
        style = self.style_tokens.to(text.dtype)
        if style.shape[0] != text.shape[0]:
            style = style.expand(text.shape[0], -1, -1)
        return torch.cat([style, text], dim=1)


def subject_position_ids(
    target_grid: tuple[int, int], subject_grids: list[tuple[int, int]], pe: str = "d"
) -> list[torch.Tensor]:
    """RoPE ids of each subject's tokens; offsets accumulate over several subjects as in the
    reference (each next subject starts after the previous one's grid)."""
    if pe not in PE_MODES:
        raise ValueError(f"pe must be one of {PE_MODES}, got {pe!r}")
    shift_h, shift_w = target_grid
    out = []
    for rows, cols in subject_grids:
        out.append(
            grid_position_ids(
                rows,
                cols,
                row_offset=shift_h if pe in ("d", "h") else 0,
                col_offset=shift_w if pe in ("d", "w") else 0,
            )
        )
        shift_h += rows
        shift_w += cols
    return out


class USOTransformer(nn.Module):
    """The FLUX transformer with USO's conditioning wired in; `velocity` is one model call."""

    def __init__(self, transformer: FluxTransformer2DModel):
        super().__init__()
        if not isinstance(transformer.context_embedder, StyleTokenPrepender):
            transformer.context_embedder = StyleTokenPrepender(transformer.context_embedder)
        self.flux = transformer

    @property
    def dtype(self) -> torch.dtype:
        return self.flux.x_embedder.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.flux.x_embedder.weight.device

    @contextmanager
    def style_tokens(self, tokens: torch.Tensor | None):
        """Prepend `tokens` ([B or 1, S, hidden]) to the text stream inside the block."""
        prepender: StyleTokenPrepender = self.flux.context_embedder
        prepender.style_tokens = tokens
        try:
            yield
        finally:
            prepender.style_tokens = None

    def velocity(
        self,
        latents: torch.Tensor,
        subject_tokens: torch.Tensor | None,
        t5_states: torch.Tensor,
        pooled: torch.Tensor,
        sigma: torch.Tensor,
        guidance: torch.Tensor | None,
        img_ids: torch.Tensor,
        txt_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Packed target tokens [B, N, 64] (+ packed subject tokens [B, Ns, 64]) -> velocity
        [B, N, 64]. `sigma`/`guidance` are [B] in 0..1 / guidance units (the model scales them
        by 1000; `guidance` is None for a transformer without guidance embeds). `img_ids` covers
        target then subject tokens; `txt_ids` style then T5 tokens."""
        n_target = latents.shape[1]
        hidden = latents if subject_tokens is None else torch.cat([latents, subject_tokens], dim=1)
        out = self.flux(
            hidden_states=hidden,
            encoder_hidden_states=t5_states,
            pooled_projections=pooled,
            timestep=sigma,
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=guidance,
            return_dict=False,
        )[0]
        return out[:, :n_target]
