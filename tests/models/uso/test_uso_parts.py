"""USO's building blocks on their own: LoRA, projector files, schedule, subject geometry, ids.

These pin down the reference behaviours that the parity cases exercise only at one size
(uso.md sections 1, 2, 4, 5), so a regression points at the part that broke.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from support.paths import FIXTURES

from pipeline.errors import WeightFileError
from pipeline.models.flux.loading import load_flux_transformer
from pipeline.models.uso.lora import LoRAParallelLinear, apply_uso_lora, fuse_qkv
from pipeline.models.uso.prepare import subject_grid
from pipeline.models.uso.projector import (
    ImageTensorCache,
    image_digest,
    load_siglip,
    load_uso_projector,
)
from pipeline.models.uso.sampling import preprocess_subject, uso_mu, uso_sigmas
from pipeline.models.uso.transformer import subject_position_ids

WEIGHTS = FIXTURES / "parity" / "uso" / "weights"


def _transformer():
    return load_flux_transformer(
        WEIGHTS / "flux1-dev.safetensors", config=WEIGHTS / "config.json", dtype=torch.float32
    )


def _run(model) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.zeros(6), torch.arange(6.0) // 3, torch.arange(6.0) % 3], dim=1)
    with torch.no_grad():
        return model(
            hidden_states=torch.randn(1, 6, 64, generator=gen),
            encoder_hidden_states=torch.randn(1, 4, 32, generator=gen),
            pooled_projections=torch.randn(1, 32, generator=gen),
            timestep=torch.tensor([0.5]),
            guidance=torch.tensor([4.0]),
            img_ids=ids,
            txt_ids=torch.zeros(4, 3),
            return_dict=False,
        )[0]


def test_fusing_qkv_does_not_change_the_transformer():
    model = _transformer()
    before = _run(model)
    for module in model.modules():
        if hasattr(module, "to_q") and hasattr(module, "norm_q"):
            fuse_qkv(module)
    assert not any(hasattr(m, "to_q") for m in model.modules())  # unfused copies are freed
    torch.testing.assert_close(_run(model), before, rtol=1e-5, atol=1e-6)


def test_lora_branch_changes_outputs_and_merging_is_equivalent_in_fp32():
    base = _run(_transformer())
    unmerged_model = apply_uso_lora(
        _transformer(), WEIGHTS / "dit_lora.safetensors", dtype=torch.float32
    )
    merged_model = apply_uso_lora(
        _transformer(), WEIGHTS / "dit_lora.safetensors", dtype=torch.float32, merge=True
    )
    unmerged, merged = _run(unmerged_model), _run(merged_model)
    assert (unmerged - base).abs().max() > 1e-3
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)
    wrapped = [m for m in unmerged_model.modules() if isinstance(m, LoRAParallelLinear)]
    assert len(wrapped) == 4 + 2  # one double block (4 projections) and one single block (2)
    assert not any(isinstance(m, LoRAParallelLinear) for m in merged_model.modules())


def test_lora_parallel_linear_is_base_plus_up_down():
    linear = torch.nn.Linear(8, 6)
    down, up = torch.randn(2, 8), torch.randn(6, 2)
    x = torch.randn(3, 8)
    expected = linear(x) + x @ down.T @ up.T
    torch.testing.assert_close(LoRAParallelLinear(linear, down, up)(x), expected)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda s: s.pop("single_blocks.0.processor.proj_lora.up.weight"),
            "missing single_blocks.0.processor.proj_lora.up.weight",
        ),
        (
            lambda s: s.__setitem__(
                "double_blocks.1.processor.qkv_lora1.down.weight", torch.zeros(4, 64)
            ),
            "unexpected double_blocks.1.processor.qkv_lora1.down.weight",
        ),
        (
            lambda s: s.__setitem__(
                "single_blocks.0.processor.proj_lora.down.weight", torch.zeros(4, 64)
            ),
            r"mis-shaped single_blocks.0.processor.proj_lora.down.weight \[4, 64\] \(expected \[4, 320\]\)",
        ),
        (
            lambda s: s.__setitem__(
                "double_blocks.0.processor.qkv_lora1.down.weight", torch.zeros(8, 64)
            ),
            "mixed ranks",
        ),
    ],
)
def test_bad_dit_lora_files_name_file_and_keys(tmp_path: Path, edit, message: str):
    state = dict(load_file(WEIGHTS / "dit_lora.safetensors"))
    edit(state)
    save_file(state, tmp_path / "dit_lora.safetensors")
    with pytest.raises(WeightFileError, match=rf"dit_lora.safetensors.*{message}"):
        apply_uso_lora(_transformer(), tmp_path / "dit_lora.safetensors", dtype=torch.float32)


def test_projector_keys_are_the_official_ones_and_checked(tmp_path: Path):
    projector = load_uso_projector(
        WEIGHTS / "projector.safetensors", dtype=torch.float32, device="cpu"
    )
    assert projector.tokens_per_image == 12
    state = dict(load_file(WEIGHTS / "projector.safetensors"))
    state["feature_embedder.mid_layer_norm.bias"] = torch.zeros(7)
    save_file(state, tmp_path / "projector.safetensors")
    with pytest.raises(WeightFileError, match=r"mis-shaped feature_embedder.mid_layer_norm.bias"):
        load_uso_projector(tmp_path / "projector.safetensors", dtype=torch.float32, device="cpu")


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", "cannot load SigLIP"),
        ("drop", "missing encoder.layers.3.mlp.fc1.bias"),
    ],
)
def test_bad_siglip_folder_is_named(tmp_path: Path, damage: str, message: str):
    folder = tmp_path / "siglip"
    shutil.copytree(WEIGHTS / "siglip", folder)
    model_file = folder / "model.safetensors"
    if damage == "truncate":
        model_file.write_bytes(model_file.read_bytes()[:-100])
    else:
        state = dict(load_file(model_file))
        state.pop("encoder.layers.3.mlp.fc1.bias")
        save_file(state, model_file)
    with pytest.raises(WeightFileError, match=rf"siglip.*{message}"):
        load_siglip(folder, dtype=torch.float32, device="cpu")


def test_uso_schedule_has_the_reference_quirk():
    """mu at 1024^2 is 0.4675 (seq 64, not 4096); first sigmas 1.0, 0.9746, 0.9483, 0.9213."""
    assert uso_mu(1024, 1024) == pytest.approx(0.4675, abs=1e-4)
    assert uso_mu(1536, 1536) == pytest.approx(0.4810, abs=1e-4)
    sigmas = uso_sigmas(25, 1024, 1024)
    assert sigmas.dtype == torch.float32 and len(sigmas) == 26
    assert sigmas[:4].tolist() == pytest.approx([1.0, 0.9746, 0.9483, 0.9213], abs=1e-4)
    assert sigmas[-1] == 0.0


@pytest.mark.parametrize(
    "size", [(40, 32), (32, 40), (50, 50), (1000, 33), (16, 16), (17, 16), (640, 480), (33, 1000)]
)
def test_subject_geometry_is_known_without_resizing(size: tuple[int, int]):
    image = Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8))
    assert preprocess_subject(image, 48).size == subject_grid(size, 48)


def test_subject_preprocessing_truncates_and_centre_crops():
    image = Image.fromarray(np.arange(30 * 70 * 3, dtype=np.uint8).reshape(30, 70, 3))
    out = preprocess_subject(image, 64)  # 70x30 -> 64x27 (int(27.43)) -> crop to 64x16
    assert out.size == (64, 16)
    resized = np.asarray(image.resize((64, 27), Image.LANCZOS))
    assert np.array_equal(np.asarray(out), resized[5:21])  # top = (27 - 16) // 2


def test_subject_ids_follow_the_pe_mode_and_accumulate():
    grid = (3, 4)  # target rows, cols
    (d,) = subject_position_ids(grid, [(2, 2)], "d")
    assert d[:, 1].tolist() == [3, 3, 4, 4] and d[:, 2].tolist() == [4, 5, 4, 5]
    (h,) = subject_position_ids(grid, [(2, 2)], "h")
    assert h[:, 1].min() == 3 and h[:, 2].min() == 0
    (w,) = subject_position_ids(grid, [(2, 2)], "w")
    assert w[:, 1].min() == 0 and w[:, 2].min() == 4
    (o,) = subject_position_ids(grid, [(2, 2)], "o")
    assert o[:, 1].min() == 0 and o[:, 2].min() == 0  # overlaps the target's positions
    _first, second = subject_position_ids(grid, [(2, 2), (1, 1)], "d")
    assert second[0].tolist() == [0, 3 + 2, 4 + 2]
    assert (d[:, 0] == 0).all()
    with pytest.raises(ValueError, match="pe must be one of"):
        subject_position_ids(grid, [(1, 1)], "x")


def test_image_cache_is_an_lru_keyed_by_pixels():
    cache = ImageTensorCache(max_items=2)
    a, b, c = (Image.fromarray(np.full((4, 4, 3), v, np.uint8)) for v in (1, 2, 3))
    assert image_digest(a) == image_digest(a.copy()) != image_digest(b)
    cache.put(image_digest(a), torch.zeros(1))
    cache.put(image_digest(b), torch.ones(1))
    assert cache.get(image_digest(a)) is not None  # a becomes most recent
    cache.put(image_digest(c), torch.ones(1))
    assert cache.get(image_digest(b)) is None and len(cache) == 2
    assert (cache.hits, cache.misses) == (1, 1)
    disabled = ImageTensorCache(max_items=0)
    disabled.put("k", torch.zeros(1))
    assert disabled.get("k") is None
