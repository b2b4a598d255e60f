"""Token layout and schedule arithmetic, checked against the numbers the reference brief states
(shared/reference/omniconsistency.md sections 3 and 5), including the bf16 rounding of ids."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.architecture import FLUX_DEV_SCHEDULER
from pipeline.models.omniconsistency.sampling import TokenLayout, flux_dev_schedule


def test_default_layout_has_4096_noise_and_1024_condition_tokens_at_scale_2():
    layout = TokenLayout(1024, 1024, 512)
    assert (layout.n_noise, layout.n_cond, layout.position_scale) == (4096, 1024, (2.0, 2.0))
    assert layout.output_hw == (1024, 1024)
    ids = layout.cond_ids(torch.float32)
    assert ids[1].tolist() == [0.0, 0.0, 2.0] and ids[32].tolist() == [0.0, 2.0, 0.0]


def test_output_is_floored_to_multiples_of_16():
    layout = TokenLayout(1024, 680, 512)
    assert layout.output_hw == (672, 1024) and layout.noise_grid == (42, 64)


def test_non_dyadic_scale_is_a_float32_product_like_the_reference():
    layout = TokenLayout(64, 64, 48)  # 8-wide latent over a 6-wide condition latent: 4/3
    assert layout.cond_grid == (3, 3)
    assert (
        layout.cond_ids(torch.float32)[1, 2].item()
        == torch.tensor(4 / 3, dtype=torch.float32).item()
    )


def test_bf16_ids_round_the_stretched_positions_as_the_reference_does():
    layout = TokenLayout(1024, 672, 512)  # scale_h = 1.3125
    exact, rounded = layout.cond_ids(torch.float32), layout.cond_ids(torch.bfloat16).float()
    off = (exact - rounded).abs()
    assert int((off > 0).any(dim=1).sum()) == 384 and off.max().item() == pytest.approx(0.125)


def test_schedule_matches_the_reference_numbers():
    schedule = flux_dev_schedule(
        FLUX_DEV_SCHEDULER, 25, TokenLayout(1024, 1024, 512).n_noise, torch.device("cpu")
    )
    assert schedule.mu == pytest.approx(1.15)
    assert schedule.timesteps[:3].tolist() == pytest.approx([1000.0, 986.98, 973.20], abs=0.01)
    assert schedule.timesteps[-1].item() == pytest.approx(116.29, abs=0.01)
    assert schedule.sigmas[-1].item() == 0.0 and schedule.sigmas.shape == (26,)
    short = flux_dev_schedule(
        FLUX_DEV_SCHEDULER, 25, TokenLayout(1024, 672, 512).n_noise, torch.device("cpu")
    )
    assert short.mu == pytest.approx(0.9117, abs=1e-4)


@pytest.mark.parametrize(
    "width, height, cond", [(8, 64, 32), (64, 0, 32), (64, 5000, 32), (64, 64, 40), (64.0, 64, 32)]
)
def test_impossible_sizes_are_refused_with_the_reason(width, height, cond):
    with pytest.raises(ValueError, match=r"width|height|cond_size"):
        TokenLayout(width, height, cond)
