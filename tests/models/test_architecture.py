"""The three sizes of the FLUX stack are written once and fit together."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.models.architecture import (
    FLUX_DEV,
    FULL,
    MODEL_SIZES,
    SMALL,
    TINY,
    architecture,
)


def test_every_size_name_has_one_architecture():
    assert MODEL_SIZES == ("full", "small", "tiny")
    assert [architecture(size) for size in MODEL_SIZES] == [FULL, SMALL, TINY]
    with pytest.raises(ValueError, match="size must be one of full, small, tiny, got 'mid'"):
        architecture("mid")


def test_full_is_the_release_and_small_keeps_the_cost_shape_of_flux():
    assert FULL.flux == FLUX_DEV and FULL.t5["d_model"] == 4096
    assert FULL.uso_projector.siglip_tokens == 729 and FULL.uso_projector.hidden_size == 3072
    assert (SMALL.flux.head_dim, SMALL.flux.axes_dim, SMALL.flux.mlp_ratio) == (
        FLUX_DEV.head_dim,
        FLUX_DEV.axes_dim,
        FLUX_DEV.mlp_ratio,
    )
    assert SMALL.flux.depth_single_blocks == 2 * SMALL.flux.depth


def test_tiny_is_the_tiny_weights_shape():
    """The values the tiny weights root (and so the demo's images) depend on."""
    assert (TINY.flux.hidden_size, TINY.flux.num_heads, TINY.flux.axes_dim) == (64, 2, (8, 12, 12))
    assert (TINY.flux.depth, TINY.flux.depth_single_blocks) == (2, 2)
    assert TINY.vae.widths == (32, 32, 64, 64) and TINY.siglip["num_hidden_layers"] == 20
    assert (TINY.uso_lora_rank, TINY.omniconsistency_lora_rank, TINY.style_lora_rank) == (4, 4, 4)
    assert TINY.uso_projector.siglip_tokens == 16 and TINY.uso_projector.style_tokens == 4


def test_parts_that_do_not_fit_together_are_refused():
    with pytest.raises(ValueError, match="T5 d_model vs FLUX context_in_dim: 4096 != 48"):
        dataclasses.replace(TINY, t5=FULL.t5)
    with pytest.raises(ValueError, match="CLIP width vs FLUX vec_in_dim: 768 != 32"):
        dataclasses.replace(TINY, clip_text=FULL.clip_text)


def test_presets_cannot_be_edited_by_a_caller():
    with pytest.raises(TypeError):
        TINY.t5["d_model"] = 64  # type: ignore[index]
