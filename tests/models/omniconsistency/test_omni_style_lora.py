"""Community style LoRAs: every format people download gives the same delta, a swap leaves no
residue, fusing restores the exact weights, and a bad file is a clear error naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from support.paths import FIXTURES

from pipeline.models.flux.loading import load_flux_transformer
from pipeline.models.flux.style_lora import StyleLoraError, StyleLoraSlot, read_style_lora

WEIGHTS = FIXTURES / "parity" / "omniconsistency" / "weights"
RANK = 4


@pytest.fixture(scope="module")
def transformer():
    return load_flux_transformer(WEIGHTS / "transformer", dtype=torch.float32, device="cpu").eval()


def _random(shape, gen):
    return torch.randn(shape, generator=gen) * 0.3


def shared_delta(transformer, seed: int = 0) -> dict:
    """One style delta expressible in kohya, diffusers/PEFT and XLabs formats alike:
    q/k/v share one down matrix (kohya and XLabs fuse them), no MLP in the double blocks."""
    gen = torch.Generator().manual_seed(seed)
    d = transformer.inner_dim
    mlp = transformer.single_transformer_blocks[0].proj_mlp.out_features
    delta = {}
    for i in range(len(transformer.transformer_blocks)):
        for stream in ("img", "txt"):
            delta[("double", i, stream, "qkv")] = (
                _random((RANK, d), gen),
                [_random((d, RANK), gen) for _ in range(3)],
            )
            delta[("double", i, stream, "proj")] = (
                _random((RANK, d), gen),
                _random((d, RANK), gen),
            )
    for i in range(len(transformer.single_transformer_blocks)):
        delta[("single", i, "qkv")] = (
            _random((RANK, d), gen),
            [_random((d, RANK), gen) for _ in range(3)],
        )
        delta[("single", i, "proj")] = (_random((RANK, d + mlp), gen), _random((d, RANK), gen))
    return delta


def diffusers_file(delta, path: Path) -> Path:
    out = {}

    def put(module, down, up):
        out[f"transformer.{module}.lora_A.weight"] = down
        out[f"transformer.{module}.lora_B.weight"] = up

    for key, (down, up) in delta.items():
        if key[0] == "double":
            _, i, stream, kind = key
            names = {
                ("img", "qkv"): ("to_q", "to_k", "to_v"),
                ("txt", "qkv"): ("add_q_proj", "add_k_proj", "add_v_proj"),
                ("img", "proj"): ("to_out.0",),
                ("txt", "proj"): ("to_add_out",),
            }[(stream, kind)]
            for name, u in zip(names, up if kind == "qkv" else [up], strict=True):
                put(f"transformer_blocks.{i}.attn.{name}", down, u)
        else:
            _, i, kind = key
            if kind == "qkv":
                for name, u in zip(("to_q", "to_k", "to_v"), up, strict=True):
                    put(f"single_transformer_blocks.{i}.attn.{name}", down, u)
            else:
                put(f"single_transformer_blocks.{i}.proj_out", down, up)
    save_file({k: v.clone().contiguous() for k, v in out.items()}, str(path))
    return path


def kohya_file(delta, path: Path, mlp: int) -> Path:
    """alpha = rank/2, so the file's down is stored x2 (exact) and diffusers halves it back.
    Single blocks use the fused linear1 (q, k, v, mlp) with zero mlp rows."""
    out = {}

    def put(name, down, up):
        out[f"{name}.lora_down.weight"] = down * 2
        out[f"{name}.lora_up.weight"] = up
        out[f"{name}.alpha"] = torch.tensor(RANK / 2)

    for key, (down, up) in delta.items():
        if key[0] == "double":
            _, i, stream, kind = key
            put(
                f"lora_unet_double_blocks_{i}_{stream}_attn_{kind}",
                down,
                torch.cat(up) if kind == "qkv" else up,
            )
        else:
            _, i, kind = key
            if kind == "qkv":
                put(
                    f"lora_unet_single_blocks_{i}_linear1",
                    down,
                    torch.cat([*up, torch.zeros(mlp, RANK)]),
                )
            else:
                put(f"lora_unet_single_blocks_{i}_linear2", down, up)
    save_file(out, str(path), metadata={"ss_network_module": "networks.lora_flux"})
    return path


def xlabs_file(delta, path: Path) -> Path:
    out = {}
    for key, (down, up) in delta.items():
        if key[0] == "double":
            _, i, stream, kind = key
            name = f"double_blocks.{i}.processor.{kind}_lora{1 if stream == 'img' else 2}"
        else:
            _, i, kind = key
            name = f"single_blocks.{i}.processor.{kind}_lora"
        out[f"{name}.down.weight"] = down
        out[f"{name}.up.weight"] = torch.cat(up) if kind == "qkv" else up
    save_file(out, str(path))
    return path


def forward(transformer, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    with torch.inference_mode():
        return transformer(
            hidden_states=torch.randn(1, 12, cfg.in_channels, generator=gen),
            encoder_hidden_states=torch.randn(1, 8, cfg.joint_attention_dim, generator=gen),
            pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=gen),
            timestep=torch.tensor([0.5]),
            guidance=torch.tensor([3.5]),
            img_ids=torch.rand(12, 3, generator=gen) * 8,
            txt_ids=torch.zeros(8, 3),
            return_dict=False,
        )[0]


@pytest.fixture(scope="module")
def lora_files(transformer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("style_loras")
    delta = shared_delta(transformer)
    mlp = transformer.single_transformer_blocks[0].proj_mlp.out_features
    return {
        "diffusers": diffusers_file(delta, folder / "style_diffusers.safetensors"),
        "kohya": kohya_file(delta, folder / "style_kohya.safetensors", mlp),
        "xlabs": xlabs_file(delta, folder / "style_xlabs.safetensors"),
        "other": diffusers_file(shared_delta(transformer, seed=1), folder / "other.safetensors"),
    }


def test_formats_are_detected_and_converted(transformer, lora_files):
    for fmt in ("diffusers", "kohya", "xlabs"):
        converted = read_style_lora(lora_files[fmt], transformer)
        assert converted.source_format == fmt
        assert any(".lora_A." in k for k in converted.state_dict)


def test_kohya_diffusers_and_xlabs_files_of_one_delta_give_the_same_output(transformer, lora_files):
    slot = StyleLoraSlot(transformer)
    outputs = {}
    for fmt in ("diffusers", "kohya", "xlabs"):
        slot.activate(lora_files[fmt], 0.75)
        outputs[fmt] = forward(transformer)
    slot.unload()
    base = forward(transformer)
    assert not torch.equal(outputs["diffusers"], base)
    assert torch.equal(outputs["kohya"], outputs["diffusers"])
    assert torch.equal(outputs["xlabs"], outputs["diffusers"])


def test_the_parity_kohya_file_converts_with_per_module_alphas(transformer):
    converted = read_style_lora(WEIGHTS / "style_lora_kohya.safetensors", transformer)
    assert converted.source_format == "kohya"
    assert "transformer_blocks.0.attn.add_k_proj.lora_B.weight" in converted.state_dict


def test_a_swap_leaves_no_residue_bit_for_bit(transformer, lora_files):
    never_loaded = forward(transformer)
    slot = StyleLoraSlot(transformer)
    slot.activate(lora_files["kohya"], 1.0)
    first = forward(transformer)
    slot.activate(lora_files["other"], 1.0)
    assert not torch.equal(forward(transformer), first)
    slot.activate(None)
    assert torch.equal(forward(transformer), never_loaded)
    assert not getattr(transformer, "peft_config", None)
    assert not any("lora" in name for name, _ in transformer.named_modules())


def test_scale_zero_equals_unloaded_and_scale_changes_need_no_reload(transformer, lora_files):
    never_loaded = forward(transformer)
    slot = StyleLoraSlot(transformer)
    slot.activate(lora_files["diffusers"], 1.0)
    full = forward(transformer)
    slot.activate(lora_files["diffusers"], 0.0)
    assert torch.equal(forward(transformer), never_loaded)
    slot.activate(lora_files["diffusers"], 1.0)
    assert torch.equal(forward(transformer), full)
    assert slot.loads == 1
    slot.unload()


def test_fused_lora_matches_unfused_and_restores_exact_weights(transformer, lora_files):
    before = {k: v.clone() for k, v in transformer.state_dict().items()}
    unfused = StyleLoraSlot(transformer)
    unfused.activate(lora_files["kohya"], 0.8)
    reference = forward(transformer)
    unfused.unload()
    fused = StyleLoraSlot(transformer, fuse=True)
    fused.activate(lora_files["kohya"], 0.8)
    assert not any(
        "lora" in name for name, _ in transformer.named_modules()
    )  # merged, wrappers gone
    torch.testing.assert_close(forward(transformer), reference, atol=1e-5, rtol=1e-5)
    fused.activate(lora_files["other"], 0.8)
    fused.unload()
    after = transformer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"this is not a safetensors file", "not a readable safetensors file"),
        (None, "does not fit this FLUX transformer"),
    ],
)
def test_bad_files_raise_errors_naming_the_file(transformer, tmp_path, content, reason):
    path = tmp_path / "broken.safetensors"
    if content is None:  # a FLUX.1-dev sized LoRA on a tiny transformer
        save_file(
            {
                "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 3072),
                "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(3072, 4),
            },
            str(path),
        )
    else:
        path.write_bytes(content)
    slot = StyleLoraSlot(transformer)
    never_loaded = forward(transformer)
    with pytest.raises(StyleLoraError, match=reason) as info:
        slot.activate(path, 1.0)
    assert str(path) in str(info.value)
    assert not slot.mounted and torch.equal(forward(transformer), never_loaded)
