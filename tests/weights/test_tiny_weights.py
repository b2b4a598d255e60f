"""A tiny weights root is complete, in the official formats, reproducible and crash-safe."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pipeline.weights.tiny as tiny
from pipeline.models.architecture import TINY
from pipeline.models.weight_layout import FluxFiles, OmniConsistencyFiles, USOFiles
from pipeline.models.weight_tables import (
    compare_tables,
    flux_transformer_tensors,
    flux_vae_tensors,
    omniconsistency_lora_tensors,
    read_safetensors_shapes,
    uso_dit_lora_tensors,
    uso_projector_tensors,
)
from pipeline.weights.tiny import (
    MARKER,
    TINY_STYLE_NAMES,
    build_tiny_weights,
    is_complete_build,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return build_tiny_weights(tmp_path_factory.mktemp("tiny") / "weights")


@pytest.fixture(scope="module")
def snapshot_root(tmp_path_factory) -> Path:
    return build_tiny_weights(tmp_path_factory.mktemp("tiny") / "weights", flux_layout="both")


def _hashes(root: Path) -> dict[str, str]:
    return {
        rel: info["sha256"]
        for rel, info in json.loads((root / MARKER).read_text())["files"].items()
    }


# ------------------------------------------------------------------------------ contents
def test_every_model_finds_all_its_files(root):
    flux = FluxFiles.from_root(root)
    assert flux.transformer == root / "flux1-dev" / "flux1-dev.safetensors"
    assert flux.vae == root / "flux1-dev" / "ae.safetensors"
    assert flux.t5 == flux.t5_tokenizer == root / "t5"
    assert flux.clip == flux.clip_tokenizer == root / "clip"
    assert flux.flux_config == root / "flux1-dev" / "flux_config.json"
    uso = USOFiles.from_root(root)
    assert uso.dit_lora.is_file() and uso.projector.is_file() and uso.siglip.is_dir()
    omni = OmniConsistencyFiles.from_root(root)
    assert omni.consistency_lora.is_file()
    for name in TINY_STYLE_NAMES:
        assert (omni.style_lora_dir / f"{name}_rank128_bf16.safetensors").is_file()


@pytest.mark.parametrize(
    "rel, table",
    [
        ("flux1-dev/flux1-dev.safetensors", lambda: flux_transformer_tensors(TINY.flux)),
        ("flux1-dev/ae.safetensors", lambda: flux_vae_tensors(TINY.vae)),
        ("uso/dit_lora.safetensors", lambda: uso_dit_lora_tensors(TINY.flux, TINY.uso_lora_rank)),
        ("uso/projector.safetensors", lambda: uso_projector_tensors(TINY.uso_projector)),
        (
            "omniconsistency/OmniConsistency.safetensors",
            lambda: omniconsistency_lora_tensors(
                TINY.flux.depth,
                TINY.flux.depth_single_blocks,
                TINY.flux.hidden_size,
                TINY.omniconsistency_lora_rank,
            ),
        ),
    ],
)
def test_files_follow_the_official_architecture_tables(root, rel, table):
    diff = compare_tables(read_safetensors_shapes(root / rel), table())
    assert diff.ok, diff


def test_files_use_the_release_dtypes_and_hold_finite_random_values(root):
    assert {t.dtype for t in load_file(root / "flux1-dev/flux1-dev.safetensors").values()} == {
        torch.bfloat16
    }
    assert {t.dtype for t in load_file(root / "flux1-dev/ae.safetensors").values()} == {
        torch.float32
    }
    for rel in (
        "uso/dit_lora.safetensors",
        "omniconsistency/OmniConsistency.safetensors",
        "style_loras/Ghibli_rank128_bf16.safetensors",
    ):
        tensors = load_file(root / rel)
        assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
        ups = [t for k, t in tensors.items() if ".up." in k or "lora_up" in k]
        assert ups and all(t.float().abs().max() > 0 for t in ups), f"{rel}: an up weight is zero"
    flux = load_file(root / "flux1-dev/flux1-dev.safetensors")
    assert all(torch.isfinite(t.float()).all() for t in flux.values())
    scale = flux["double_blocks.0.img_attn.norm.query_norm.scale"].float()
    assert 0.5 < scale.mean() < 1.5  # norm scales sit near 1, weights are small
    assert flux["img_in.weight"].float().std() < 0.2


def test_flux_config_json_tells_what_shapes_cannot(root):
    config = json.loads((root / "flux1-dev" / "flux_config.json").read_text())
    assert config["axes_dim"] == [8, 12, 12]
    assert sum(config["axes_dim"]) == config["hidden_size"] // config["num_heads"]
    assert config["in_channels"] == 64


def test_text_encoder_widths_feed_flux(root):
    from transformers import CLIPTextConfig, T5Config

    assert T5Config.from_pretrained(root / "t5").d_model == TINY.flux.context_in_dim
    assert CLIPTextConfig.from_pretrained(root / "clip").hidden_size == TINY.flux.vec_in_dim


def test_tokenizers_load_with_transformers_from_the_folders(root):
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTokenizer, T5Config, T5Tokenizer

    clip = CLIPTokenizer.from_pretrained(root / "clip", local_files_only=True)
    auto_clip = AutoTokenizer.from_pretrained(root / "clip", local_files_only=True)
    assert isinstance(auto_clip, CLIPTokenizer)
    ids = clip("A photo of a cat").input_ids
    assert clip.convert_ids_to_tokens(ids)[0] == "<|startoftext|>"
    assert clip.convert_ids_to_tokens(ids)[-1] == "<|endoftext|>"
    assert clip.eos_token_id == len(clip) - 1  # end-of-text is the highest id, as in CLIP-L
    assert clip.unk_token_id not in clip("zebra quokka ünïcødé").input_ids[1:-1]  # byte-level
    assert len(clip) <= CLIPTextConfig.from_pretrained(root / "clip").vocab_size

    t5 = T5Tokenizer.from_pretrained(root / "t5", local_files_only=True)
    assert isinstance(
        AutoTokenizer.from_pretrained(root / "t5", local_files_only=True), T5Tokenizer
    )
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    assert t5("A photo of a cat").input_ids[-1] == t5.eos_token_id
    assert "<extra_id_0>" in t5.get_vocab()
    assert len(t5) <= T5Config.from_pretrained(root / "t5").vocab_size


def test_siglip_has_the_layers_the_projector_reads_and_a_pil_processor(root):
    from PIL import Image
    from transformers import SiglipImageProcessorPil, SiglipVisionModel

    model = SiglipVisionModel.from_pretrained(root / "siglip", local_files_only=True)
    processor = SiglipImageProcessorPil.from_pretrained(root / "siglip", local_files_only=True)
    pixels = processor(
        images=Image.new("RGB", (80, 30), (200, 30, 60)), return_tensors="pt"
    ).pixel_values
    assert pixels.shape == (1, 3, 56, 56)
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(hidden) >= 21  # hidden_states[-20] exists and is a transformer layer output
    assert hidden[-20].shape == (1, TINY.uso_projector.siglip_tokens, TINY.uso_projector.siglip_dim)


# -------------------------------------------------------------- reproducible and idempotent
def test_same_seed_gives_identical_bytes_other_seed_other_weights(root, tmp_path):
    again = build_tiny_weights(tmp_path / "again")
    assert _hashes(again) == _hashes(root)
    assert (again / "flux1-dev/flux1-dev.safetensors").read_bytes() == (
        root / "flux1-dev/flux1-dev.safetensors"
    ).read_bytes()
    other = _hashes(build_tiny_weights(tmp_path / "other", seed=1))
    for rel in (
        "flux1-dev/flux1-dev.safetensors",
        "t5/model.safetensors",
        "uso/dit_lora.safetensors",
    ):
        assert other[rel] != _hashes(root)[rel]
    assert other["t5/tokenizer.json"] == _hashes(root)["t5/tokenizer.json"]


def test_complete_build_is_reused_untouched(root):
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert build_tiny_weights(root) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before


def test_missing_or_truncated_file_triggers_a_rebuild(tmp_path):
    root = build_tiny_weights(tmp_path / "w")
    reference = _hashes(root)
    (root / "uso" / "projector.safetensors").unlink()
    assert not is_complete_build(root)
    build_tiny_weights(root)
    assert _hashes(root) == reference and (root / "uso" / "projector.safetensors").is_file()

    flux = root / "flux1-dev" / "flux1-dev.safetensors"
    flux.write_bytes(flux.read_bytes()[:1000])
    assert not is_complete_build(root)
    build_tiny_weights(root)
    assert read_safetensors_shapes(flux) == flux_transformer_tensors(TINY.flux)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_a_crash_mid_build_leaves_no_build_that_looks_complete(tmp_path, monkeypatch):
    def crash(root, seed, flux_layout):
        (root / "flux1-dev").mkdir()
        (root / "flux1-dev" / "flux1-dev.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny, "_write_all", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        build_tiny_weights(tmp_path / "w")
    assert not (tmp_path / "w").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_foreign_directory_is_never_overwritten(tmp_path):
    real = tmp_path / "real"
    (real / "flux1-dev").mkdir(parents=True)
    (real / "flux1-dev" / "flux1-dev.safetensors").write_bytes(b"23 GB of real weights")
    with pytest.raises(ValueError, match="is not a tiny weights build"):
        build_tiny_weights(real)
    assert (real / "flux1-dev" / "flux1-dev.safetensors").read_bytes() == b"23 GB of real weights"


def test_an_empty_directory_is_a_fine_target(tmp_path):
    (tmp_path / "w").mkdir()
    assert is_complete_build(build_tiny_weights(tmp_path / "w"))


def test_unknown_layout_is_refused(tmp_path):
    with pytest.raises(ValueError, match="flux_layout"):
        build_tiny_weights(tmp_path / "w", flux_layout="comfy")


# ------------------------------------------------------------- diffusers snapshot layout
def test_both_layouts_hold_the_same_values(root, snapshot_root):
    flux_dir = snapshot_root / "flux1-dev"
    for sub in (
        "transformer",
        "vae",
        "text_encoder",
        "tokenizer",
        "text_encoder_2",
        "tokenizer_2",
        "scheduler",
    ):
        assert (flux_dir / sub).is_dir(), sub
    assert json.loads((flux_dir / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    assert not (snapshot_root / "t5").exists() and not (snapshot_root / "clip").exists()
    files = FluxFiles.from_root(snapshot_root)  # BFL files first, snapshot text encoders
    assert files.transformer.name == "flux1-dev.safetensors"
    assert (
        files.t5 == flux_dir / "text_encoder_2" and files.t5_tokenizer == flux_dir / "tokenizer_2"
    )
    assert (
        files.clip == flux_dir / "text_encoder" and files.clip_tokenizer == flux_dir / "tokenizer"
    )

    bfl = load_file(root / "flux1-dev/flux1-dev.safetensors")
    assert load_file(snapshot_root / "flux1-dev/flux1-dev.safetensors").keys() == bfl.keys()
    diff = load_file(flux_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    h = TINY.flux.hidden_size
    assert torch.equal(diff["x_embedder.weight"], bfl["img_in.weight"])
    qkv = bfl["double_blocks.1.img_attn.qkv.weight"]
    assert torch.equal(diff["transformer_blocks.1.attn.to_k.weight"], qkv[h : 2 * h])
    linear1 = bfl["single_blocks.1.linear1.weight"]
    assert torch.equal(diff["single_transformer_blocks.1.proj_mlp.weight"], linear1[3 * h :])
    shift, scale = bfl["final_layer.adaLN_modulation.1.weight"].chunk(2)
    assert torch.equal(diff["norm_out.linear.weight"], torch.cat([scale, shift]))
    assert torch.equal(
        load_file(flux_dir / "text_encoder_2" / "model.safetensors")["shared.weight"],
        load_file(root / "t5" / "model.safetensors")["shared.weight"],
    )


def test_snapshot_runs_in_diffusers_flux_pipeline_with_every_style_lora_format(snapshot_root):
    """The snapshot is a real FLUX.1-dev-shaped diffusers pipeline, and every example style LoRA
    is accepted by diffusers' converters and changes the output (non-zero up weights)."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(snapshot_root / "flux1-dev", local_files_only=True)

    def run() -> torch.Tensor:
        out = pipe(
            "a cat",
            height=32,
            width=32,
            num_inference_steps=1,
            guidance_scale=3.5,
            max_sequence_length=16,
            output_type="pt",
            generator=torch.Generator().manual_seed(0),
        )
        return out.images

    base = run()
    assert torch.isfinite(base).all()
    styles = snapshot_root / "style_loras"
    for i, path in enumerate(
        [
            styles / f"{TINY_STYLE_NAMES[0]}_rank128_bf16.safetensors",
            *sorted((styles / "examples").glob("*.safetensors")),
        ]
    ):
        pipe.load_lora_weights(str(path), adapter_name=f"style{i}")
        pipe.set_adapters([f"style{i}"])
        styled = run()
        assert not torch.equal(styled, base), path.name
        pipe.unload_lora_weights()


def test_build_is_quick_enough_to_measure(tmp_path, record_property):
    """Not a speed assertion: records the build time for the test report."""
    import time

    start = time.perf_counter()
    build_tiny_weights(tmp_path / "w")
    record_property("tiny_build_seconds", round(time.perf_counter() - start, 2))
    size = sum(p.stat().st_size for p in (tmp_path / "w").rglob("*") if p.is_file())
    record_property("tiny_build_bytes", size)
    assert size < 50 * 2**20
    assert os.listdir(tmp_path) == ["w"]
