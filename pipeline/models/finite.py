"""Non-finite latents are an item's error, found without stalling the denoising loop.

A guidance or style-LoRA scale that overflows the compute dtype (1e308, say) turns an item's
latents into NaN or inf; decoded, they give one flat colour that looks like a result. The loops
never read a tensor back to the host (`tests/models/test_speed.py`), so the check is kept on
the device: after each step `FiniteWatch.observe` records, per batch row, the first step whose
latents were not all finite (a few element-wise ops, no sync); the model reads the B numbers
back once after the loop, where it synchronizes anyway, and gives each bad row its error
instead of decoding it. Rows are independent, so one item's overflow never touches another's.
"""

from __future__ import annotations

import torch

from pipeline.errors import ItemError, ItemStatus

NOT_SEEN = -1


class FiniteWatch:
    """Per batch row, the first denoising step after which the latents held a NaN or inf."""

    def __init__(self, rows: int, device: torch.device):
        self.first_bad = torch.full((rows,), NOT_SEEN, dtype=torch.int64, device=device)

    def observe(self, step: int, latents: torch.Tensor) -> None:
        """Note `step` for the rows of `latents` ([B, ...]) that are not all finite and were
        fine before; stays on the device (no host read)."""
        bad = ~torch.isfinite(latents).flatten(1).all(dim=1)
        self.first_bad.masked_fill_(bad & (self.first_bad == NOT_SEEN), step)

    def first_bad_steps(self) -> list[int | None]:
        """One host read for the whole batch: per row, the first bad step (0-based) or None."""
        return [None if step == NOT_SEEN else int(step) for step in self.first_bad.tolist()]


def non_finite_error(
    item_id: str, step: int, steps: int, guidance: float | None, lora_scale: float | None
) -> ItemError:
    """The item's error for latents that went non-finite after `step` (0-based) of `steps`."""
    return ItemError(
        item_id,
        ItemStatus.MODEL_ERROR,
        f"non-finite latents (NaN or inf) after denoising step {step + 1} of {steps}: the "
        f"model's values overflowed (guidance {guidance}, style LoRA scale {lora_scale})",
    )
