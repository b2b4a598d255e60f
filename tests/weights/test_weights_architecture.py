"""The architecture tables describe the official files exactly.

The parity fixtures were written by the authors' own code in the official on-disk formats, so the
tables evaluated at the fixtures' configs must list exactly the fixtures' tensor names and shapes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from support.paths import FIXTURES

from pipeline.errors import WeightFileError
from pipeline.models.architecture import (
    FLUX_AE,
    FLUX_DEV,
    AutoEncoderParams,
    FluxParams,
    USOProjectorParams,
)
from pipeline.models.weight_tables import (
    compare_tables,
    flux_transformer_tensors,
    flux_vae_tensors,
    omniconsistency_lora_tensors,
    read_safetensors_shapes,
    release_tables,
    uso_dit_lora_tensors,
    uso_projector_tensors,
    verify_safetensors,
)

PARITY = FIXTURES / "parity"
USO_WEIGHTS = PARITY / "uso" / "weights"
OMNI_WEIGHTS = PARITY / "omniconsistency" / "weights"


def _uso_config() -> dict:
    return json.loads((USO_WEIGHTS / "config.json").read_text())


def _uso_flux() -> FluxParams:
    return FluxParams.from_dict(_uso_config()["flux_bfl_params"])


def _uso_projector() -> USOProjectorParams:
    p = _uso_config()["projector"]
    return USOProjectorParams(
        siglip_tokens=p["siglip_token_nums"],
        style_tokens=p["style_token_nums"],
        siglip_dim=p["siglip_token_dims"],
        hidden_size=p["hidden_size"],
    )


def _omni_lora_table() -> dict:
    cfg = json.loads((OMNI_WEIGHTS / "config.json").read_text())
    t = cfg["transformer"]
    return omniconsistency_lora_tensors(
        t["num_layers (double blocks)"],
        t["num_single_layers"],
        t["inner_dim"],
        cfg["consistency_lora"]["rank"],
    )


PARITY_FILES = {
    "uso flux1-dev": (
        USO_WEIGHTS / "flux1-dev.safetensors",
        lambda: flux_transformer_tensors(_uso_flux()),
    ),
    "uso ae": (
        USO_WEIGHTS / "ae.safetensors",
        lambda: flux_vae_tensors(AutoEncoderParams.from_dict(_uso_config()["vae_bfl_params"])),
    ),
    "uso dit_lora": (
        USO_WEIGHTS / "dit_lora.safetensors",
        lambda: uso_dit_lora_tensors(_uso_flux(), _uso_config()["lora"]["rank"]),
    ),
    "uso projector": (
        USO_WEIGHTS / "projector.safetensors",
        lambda: uso_projector_tensors(_uso_projector()),
    ),
    "omniconsistency lora": (OMNI_WEIGHTS / "omniconsistency_lora.safetensors", _omni_lora_table),
}


@pytest.mark.parametrize("name", sorted(PARITY_FILES))
def test_table_equals_the_parity_file_made_by_the_authors_code(name):
    path, table = PARITY_FILES[name]
    diff = compare_tables(read_safetensors_shapes(path), table())
    assert diff.ok, diff
    verify_safetensors(path, table())  # and the raising front-end agrees


def test_flux_and_vae_params_translate_to_the_diffusers_configs_the_parity_set_used():
    cfg = _uso_config()
    assert _uso_flux().diffusers_config() == cfg["flux_diffusers_kwargs"]
    vae = AutoEncoderParams.from_dict(cfg["vae_bfl_params"]).diffusers_config()
    assert vae == {k: v for k, v in cfg["vae_diffusers_kwargs"].items()}


def test_bfl_vae_table_loads_strictly_into_diffusers_autoencoder():
    """The VAE params are complete: diffusers' own LDM converter maps the fixture with no leftovers."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = AutoEncoderParams.from_dict(_uso_config()["vae_bfl_params"]).diffusers_config()
    model = AutoencoderKL(**config)
    converted = convert_ldm_vae_checkpoint(load_file(USO_WEIGHTS / "ae.safetensors"), config)
    model.load_state_dict(converted, strict=True)


def test_release_tables_match_the_published_sizes():
    tables = release_tables()
    flux = tables["flux1-dev.safetensors"]
    assert len(flux) == 780
    assert round(sum(math.prod(s) for s in flux.values()) / 1e9, 2) == 11.90  # FLUX.1-dev: 11.9B
    assert round(sum(math.prod(s) for s in tables["ae.safetensors"].values()) / 1e6, 1) == 83.8

    lora = tables["uso/dit_lora.safetensors"]
    assert len(lora) == 304
    assert lora["double_blocks.18.processor.qkv_lora2.up.weight"] == (9216, 128)
    assert lora["single_blocks.37.processor.qkv_lora.up.weight"] == (9216, 128)
    assert lora["single_blocks.0.processor.proj_lora.down.weight"] == (128, 15360)
    assert round(sum(math.prod(s) for s in lora.values()) / 1e6, 1) == 239.1

    projector = tables["uso/projector.safetensors"]
    assert len(projector) == 18
    assert projector["feature_embedder.high_embedding_linear.0.weight"] == (64, 729)
    assert projector["feature_embedder.mid_layer_norm.bias"] == (1152,)
    assert projector["feature_embedder.low_projection.weight"] == (3072, 1152)

    omni = tables["omniconsistency/OmniConsistency.safetensors"]
    assert len(omni) == 380
    assert sum(math.prod(s) for s in omni.values()) == 1_167_360 * 128
    assert omni["single_transformer_blocks.37.attn.processor.v_loras.0.up.weight"] == (3072, 128)


def test_release_presets_are_flux_dev():
    assert FLUX_DEV.head_dim == 128 and FLUX_DEV.axes_dim == (16, 56, 56)
    assert FLUX_AE.widths == (128, 256, 512, 512)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(hidden_size=64, num_heads=2, axes_dim=(8, 12, 14)),
            r"sum\(axes_dim\) 34 != head_dim 32",
        ),
        (dict(hidden_size=64, num_heads=2, axes_dim=(9, 11, 12)), "even"),
        (dict(hidden_size=65, num_heads=2, axes_dim=(8, 12, 12)), "multiple"),
    ],
)
def test_impossible_flux_params_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FluxParams(**kwargs)


def test_unknown_flux_param_is_refused():
    with pytest.raises(ValueError, match="unknown FluxParams keys"):
        FluxParams.from_dict({**FLUX_DEV.to_dict(), "depht": 3})


def test_vae_widths_must_fit_the_group_norm():
    with pytest.raises(ValueError, match="GroupNorm"):
        AutoEncoderParams(ch=24)


# ------------------------------------------------------------------------- verify errors
def _copy_projector(tmp_path: Path, mutate) -> Path:
    tensors = load_file(USO_WEIGHTS / "projector.safetensors")
    mutate(tensors)
    path = tmp_path / "projector.safetensors"
    save_file(tensors, str(path))
    return path


def test_verify_names_the_file_and_a_renamed_key(tmp_path):
    path = _copy_projector(
        tmp_path,
        lambda t: t.update(
            {"feature_embedder.high_proj.weight": t.pop("feature_embedder.high_projection.weight")}
        ),
    )
    with pytest.raises(WeightFileError) as err:
        verify_safetensors(path, uso_projector_tensors(_uso_projector()))
    assert str(path) in str(err.value)
    assert "feature_embedder.high_projection.weight" in str(err.value)
    assert "missing" in str(err.value)


def test_verify_names_an_unexpected_key(tmp_path):
    path = _copy_projector(tmp_path, lambda t: t.update({"extra.weight": torch.zeros(2)}))
    with pytest.raises(WeightFileError, match=r"unexpected tensors: extra.weight"):
        verify_safetensors(path, uso_projector_tensors(_uso_projector()))


def test_verify_names_a_misshaped_tensor(tmp_path):
    path = _copy_projector(
        tmp_path, lambda t: t.update({"feature_embedder.low_layer_norm.bias": torch.zeros(33)})
    )
    with pytest.raises(WeightFileError) as err:
        verify_safetensors(path, uso_projector_tensors(_uso_projector()))
    assert "feature_embedder.low_layer_norm.bias: file (33,) != expected (32,)" in str(err.value)


def test_truncated_and_missing_files_name_the_file(tmp_path):
    data = (USO_WEIGHTS / "projector.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match=r"truncated.safetensors: not a readable safetensors"):
        read_safetensors_shapes(truncated)
    header_only = tmp_path / "garbage.safetensors"
    header_only.write_bytes(b"\x05\x00")
    with pytest.raises(WeightFileError, match=r"garbage.safetensors"):
        read_safetensors_shapes(header_only)
    with pytest.raises(WeightFileError, match=r"absent.safetensors: file not found"):
        read_safetensors_shapes(tmp_path / "absent.safetensors")
