"""FLUX loading: BFL single files and diffusers folders load strictly and to the same model.

A weight file that is missing, truncated, has a renamed key, an extra key or a mis-shaped
tensor must stop the load with a `WeightFileError` that names the file and the keys, before a
broken model can produce garbage in the middle of a batch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from support.paths import FIXTURES

from pipeline.errors import WeightFileError
from pipeline.models.flux.loading import (
    bfl_transformer_plan,
    flux_transformer_kwargs_from_bfl,
    load_flux_transformer,
    load_flux_vae,
)
from pipeline.models.flux.tensor_files import TensorFiles, read_safetensors_header
from pipeline.weights.tiny import build_tiny_weights

PARITY_WEIGHTS = FIXTURES / "parity" / "uso" / "weights"
OMNI_WEIGHTS = FIXTURES / "parity" / "omniconsistency" / "weights"


@pytest.fixture(scope="module")
def tiny_both(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny weights root holding the FLUX part in BOTH layouts with the same values."""
    return build_tiny_weights(tmp_path_factory.mktemp("tiny") / "root", flux_layout="both")


def _transformer_inputs(model, seed: int = 0):
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    tokens, text = 12, 5
    ids = torch.zeros(tokens, 3)
    ids[:, 1] = torch.arange(tokens) // 4
    ids[:, 2] = torch.arange(tokens) % 4
    return dict(
        hidden_states=torch.randn(1, tokens, cfg.in_channels, generator=gen),
        encoder_hidden_states=torch.randn(1, text, cfg.joint_attention_dim, generator=gen),
        pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=gen),
        timestep=torch.tensor([0.7]),
        guidance=torch.tensor([4.0]),
        img_ids=ids,
        txt_ids=torch.zeros(text, 3),
        return_dict=False,
    )


def test_bfl_and_diffusers_layouts_load_to_the_same_transformer(tiny_both: Path):
    flux_dir = tiny_both / "flux1-dev"
    from_bfl = load_flux_transformer(
        flux_dir / "flux1-dev.safetensors",
        config=flux_dir / "flux_config.json",
        dtype=torch.float32,
    )
    from_folder = load_flux_transformer(flux_dir / "transformer", dtype=torch.float32)
    bfl_state, folder_state = from_bfl.state_dict(), from_folder.state_dict()
    assert bfl_state.keys() == folder_state.keys()
    for key in bfl_state:
        assert torch.equal(bfl_state[key], folder_state[key]), key
    inputs = _transformer_inputs(from_bfl)
    torch.testing.assert_close(from_bfl(**inputs)[0], from_folder(**inputs)[0], rtol=0, atol=0)


def test_bfl_and_diffusers_layouts_load_to_the_same_vae(tiny_both: Path):
    flux_dir = tiny_both / "flux1-dev"
    from_bfl = load_flux_vae(flux_dir / "ae.safetensors")
    from_folder = load_flux_vae(flux_dir / "vae")
    assert from_bfl.config.block_out_channels == from_folder.config.block_out_channels
    latents = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            from_bfl.decode(latents).sample, from_folder.decode(latents).sample, rtol=0, atol=0
        )


def test_bfl_mapping_matches_diffusers_own_converter_for_full_width_layout():
    """Our general mapping, at FLUX.1-dev's width, covers the same keys as diffusers'
    hard-coded converter (checked on shapes only; nothing is allocated)."""
    kwargs = dict(
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=128,
        num_attention_heads=24,
        guidance_embeds=True,
    )
    plan = bfl_transformer_plan(kwargs)
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(**kwargs)
    assert set(plan) == set(model.state_dict())
    assert plan["single_transformer_blocks.1.proj_mlp.weight"].rows == (3 * 3072, 7 * 3072)
    assert plan["transformer_blocks.0.attn.add_v_proj.bias"].rows == (2 * 3072, 3 * 3072)


def test_parity_weight_set_infers_its_config():
    files = TensorFiles.single(PARITY_WEIGHTS / "flux1-dev.safetensors")
    config = json.loads((PARITY_WEIGHTS / "config.json").read_text())
    kwargs = flux_transformer_kwargs_from_bfl(files, "", config["flux_bfl_params"])
    expected = dict(config["flux_diffusers_kwargs"], axes_dims_rope=(8, 12, 12))
    assert kwargs == expected
    vae = load_flux_vae(PARITY_WEIGHTS / "ae.safetensors")
    for key, value in config["vae_diffusers_kwargs"].items():
        if key not in ("sample_size",):
            assert vae.config[key] == value, key


def test_loads_in_the_requested_dtype_with_no_meta_tensors():
    model = load_flux_transformer(
        PARITY_WEIGHTS / "flux1-dev.safetensors",
        config=PARITY_WEIGHTS / "config.json",
        dtype=torch.bfloat16,
    )
    tensors = list(model.parameters()) + list(model.buffers())
    assert all(t.dtype == torch.bfloat16 and not t.is_meta for t in tensors)
    assert not any(p.requires_grad for p in model.parameters())


def test_comfyui_prefixed_bfl_file_loads(tmp_path: Path):
    state = load_file(PARITY_WEIGHTS / "flux1-dev.safetensors")
    save_file(
        {f"model.diffusion_model.{k}": v for k, v in state.items()},
        tmp_path / "prefixed.safetensors",
    )
    plain = load_flux_transformer(
        PARITY_WEIGHTS / "flux1-dev.safetensors",
        config=PARITY_WEIGHTS / "config.json",
        dtype=torch.float32,
    )
    prefixed = load_flux_transformer(
        tmp_path / "prefixed.safetensors",
        config=PARITY_WEIGHTS / "config.json",
        dtype=torch.float32,
    )
    for key, value in plain.state_dict().items():
        assert torch.equal(value, prefixed.state_dict()[key])


def test_sharded_diffusers_folder_loads(tmp_path: Path):
    folder = tmp_path / "transformer"
    folder.mkdir()
    shutil.copy(OMNI_WEIGHTS / "transformer" / "config.json", folder / "config.json")
    state = load_file(OMNI_WEIGHTS / "transformer" / "diffusion_pytorch_model.safetensors")
    keys = sorted(state)
    shards = {
        "part-1.safetensors": keys[: len(keys) // 2],
        "part-2.safetensors": keys[len(keys) // 2 :],
    }
    for name, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, folder / name)
    index = {"weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    model = load_flux_transformer(folder, dtype=torch.float32)
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


# ------------------------------------------------------------------------------ bad files


def _rewrite(src: Path, dst: Path, edit) -> Path:
    state = dict(load_file(src))
    edit(state)
    save_file(state, dst)
    return dst


LOADERS = {
    "transformer": (
        PARITY_WEIGHTS / "flux1-dev.safetensors",
        lambda p: load_flux_transformer(
            p, config=PARITY_WEIGHTS / "config.json", dtype=torch.float32
        ),
        "double_blocks.0.img_attn.qkv.weight",
    ),
    "vae": (
        PARITY_WEIGHTS / "ae.safetensors",
        lambda p: load_flux_vae(p),
        "decoder.up.2.block.1.conv1.weight",
    ),
}


@pytest.mark.parametrize("part", sorted(LOADERS))
def test_truncated_file_is_named(tmp_path: Path, part: str):
    src, load, _ = LOADERS[part]
    broken = tmp_path / "truncated.safetensors"
    broken.write_bytes(src.read_bytes()[:-100])
    with pytest.raises(WeightFileError, match=r"truncated.safetensors.*not a readable safetensors"):
        load(broken)


@pytest.mark.parametrize("part", sorted(LOADERS))
def test_missing_file_is_named(tmp_path: Path, part: str):
    _, load, _ = LOADERS[part]
    with pytest.raises(WeightFileError, match=r"nowhere.safetensors: file not found"):
        load(tmp_path / "nowhere.safetensors")


@pytest.mark.parametrize("part", sorted(LOADERS))
def test_renamed_key_names_both_keys(tmp_path: Path, part: str):
    src, load, key = LOADERS[part]
    broken = _rewrite(
        src, tmp_path / "renamed.safetensors", lambda s: s.__setitem__(key + "_old", s.pop(key))
    )
    with pytest.raises(WeightFileError) as caught:
        load(broken)
    message = str(caught.value)
    assert "renamed.safetensors" in message
    assert f"unexpected {key}_old" in message
    assert "missing" in message


@pytest.mark.parametrize("part", sorted(LOADERS))
def test_wrong_shape_is_named(tmp_path: Path, part: str):
    src, load, key = LOADERS[part]
    broken = _rewrite(
        src, tmp_path / "misshaped.safetensors", lambda s: s.__setitem__(key, torch.zeros(3, 3))
    )
    with pytest.raises(WeightFileError, match=rf"misshaped.safetensors.*mis-shaped {key} \[3, 3\]"):
        load(broken)


@pytest.mark.parametrize("part", sorted(LOADERS))
def test_unexpected_extra_key_is_named(tmp_path: Path, part: str):
    src, load, _ = LOADERS[part]
    broken = _rewrite(
        src,
        tmp_path / "extra.safetensors",
        lambda s: s.__setitem__("stowaway.weight", torch.zeros(2)),
    )
    with pytest.raises(WeightFileError, match=r"extra.safetensors.*unexpected stowaway.weight"):
        load(broken)


def test_missing_key_in_diffusers_folder_is_named(tmp_path: Path):
    folder = tmp_path / "vae"
    shutil.copytree(OMNI_WEIGHTS / "vae", folder)
    key = "decoder.conv_out.bias"
    _rewrite(
        folder / "diffusion_pytorch_model.safetensors",
        folder / "diffusion_pytorch_model.safetensors",
        lambda s: s.pop(key),
    )
    with pytest.raises(WeightFileError, match=f"vae.*missing {key}"):
        load_flux_vae(folder)


def test_axes_dim_cannot_be_guessed_for_a_tiny_head():
    with pytest.raises(WeightFileError, match="axes_dim"):
        load_flux_transformer(PARITY_WEIGHTS / "flux1-dev.safetensors", dtype=torch.float32)


def test_config_contradicting_the_file_is_an_error():
    params = json.loads((PARITY_WEIGHTS / "config.json").read_text())["flux_bfl_params"]
    with pytest.raises(WeightFileError, match="depth=3"):
        load_flux_transformer(
            PARITY_WEIGHTS / "flux1-dev.safetensors",
            config={**params, "depth": 3},
            dtype=torch.float32,
        )


def test_header_reader_reports_shapes_without_reading_data():
    infos = read_safetensors_header(PARITY_WEIGHTS / "flux1-dev.safetensors")
    assert infos["img_in.weight"].shape == (64, 64)
    assert infos["img_in.weight"].dtype == "F32"
