"""The OmniConsistency model through its public API, on a tiny weights root in the official
formats: per-item errors never stop a batch, trigger phrases, style LoRA groups, options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import ItemStatus
from pipeline.models.base import GenerationRequest, ModelOptions, StyleLora
from pipeline.models.fp8 import Float8WeightLinear
from pipeline.models.omniconsistency.model import OmniConsistencyModel
from pipeline.models.omniconsistency.styles import SHIPPED_STYLES, shipped_style, with_trigger

SIZE = dict(width=64, height=48, steps=2)
OPTIONS = ModelOptions(device="cpu", extra={"cond_size": 32})


@pytest.fixture(scope="module")
def root(tiny_weights: Path) -> Path:
    return tiny_weights


@pytest.fixture(scope="module")
def model(root) -> OmniConsistencyModel:
    return OmniConsistencyModel.load(root, OPTIONS)


def source_image(seed: int = 0, size=(70, 50)) -> Image.Image:
    pixels = (np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype(np.uint8)
    return Image.fromarray(pixels)


def request(
    item_id: str, seed: int = 1, style: StyleLora | None = None, **overrides
) -> GenerationRequest:
    fields = dict(
        prompt="a red house by a lake",
        seed=seed,
        subject=source_image(seed),
        style_lora=style,
        **SIZE,
    )
    fields.update(overrides)
    return GenerationRequest(item_id, **fields)


def ghibli(root: Path, scale: float = 1.0) -> StyleLora:
    return StyleLora(root / "style_loras" / "Ghibli_rank128_bf16.safetensors", scale, "Ghibli")


def test_generates_an_image_floored_to_multiples_of_16_and_reports_parameters(model, root):
    [outcome] = model.generate([request("a", style=ghibli(root), width=70, height=50)])
    assert outcome.ok, outcome.error
    assert outcome.image.shape == (48, 64, 3) and outcome.image.dtype == np.uint8
    params = outcome.parameters
    assert params["prompt"] == "Ghibli style, a red house by a lake"
    assert (params["width"], params["height"], params["requested_width"]) == (64, 48, 70)
    assert (
        params["style_lora"]["format"] == "kohya"
        and params["style_lora"]["shipped_style"] == "Ghibli"
    )
    assert params["posterior"] == "sample" and params["apply_proj_loras"] is False
    assert set(outcome.timings) == {"text_s", "prepare_s", "denoise_s", "decode_s", "model_s"}
    assert set(model.weight_files()) >= {
        "flux_transformer",
        "flux_vae",
        "omniconsistency_lora",
        "t5",
        "clip",
    }


def test_same_seed_same_image_and_the_seed_matters(model):
    first, again, other = model.generate(
        [request("a"), request("b"), request("c", seed=2, subject=source_image(1))]
    )
    assert np.array_equal(first.image, again.image)
    assert not np.array_equal(first.image, other.image)


def test_bad_items_become_item_errors_and_the_model_keeps_working(model, root, tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    truncated = Image.open(_truncated_png(tmp_path))
    good_alone = model.generate([request("good")])[0]
    outcomes = model.generate(
        [
            request("no_source", subject=None),
            request("tiny", width=8),
            request("huge", height=100_000),
            request("bad_steps", steps=0),
            request("truncated", subject=truncated),
            request("bad_lora", style=StyleLora(corrupt, 1.0, "corrupt")),
            request("missing_lora", style=StyleLora(tmp_path / "nope.safetensors", 1.0, "nope")),
            request("good"),
        ]
    )
    kinds = {o.item_id: (o.error.kind if o.error else "ok") for o in outcomes}
    assert kinds == {
        "no_source": ItemStatus.BAD_INPUT,
        "tiny": ItemStatus.BAD_INPUT,
        "huge": ItemStatus.BAD_INPUT,
        "bad_steps": ItemStatus.BAD_INPUT,
        "truncated": ItemStatus.BAD_INPUT,
        "bad_lora": ItemStatus.LORA_ERROR,
        "missing_lora": ItemStatus.LORA_ERROR,
        "good": "ok",
    }
    errors = {o.item_id: str(o.error) for o in outcomes if o.error}
    assert str(corrupt) in errors["bad_lora"] and "'bad_lora'" in errors["bad_lora"]
    assert "source image" in errors["no_source"]
    assert np.array_equal(outcomes[-1].image, good_alone.image)
    assert np.array_equal(model.generate([request("good")])[0].image, good_alone.image)


def _truncated_png(tmp_path: Path) -> Path:
    path = tmp_path / "truncated.png"
    source_image(3).save(path)
    path.write_bytes(path.read_bytes()[:200])
    return path


def test_consecutive_items_sharing_a_lora_load_it_once(root):
    model = OmniConsistencyModel.load(root, OPTIONS)
    examples = root / "style_loras" / "examples"
    outcomes = model.generate([request(f"g{i}", style=ghibli(root)) for i in range(3)])
    assert all(o.ok for o in outcomes) and model.style_slot.loads == 1
    model.generate([request("g3", style=ghibli(root))])  # still mounted across calls
    assert model.style_slot.loads == 1
    formats = {}
    for name in ("Watercolor_diffusers_peft", "Sketch_xlabs", "Comic_kohya"):
        [outcome] = model.generate(
            [request(name, style=StyleLora(examples / f"{name}.safetensors", 1.0, name))]
        )
        assert outcome.ok, outcome.error
        formats[name] = outcome.parameters["style_lora"]["format"]
    assert formats == {
        "Watercolor_diffusers_peft": "diffusers",
        "Sketch_xlabs": "xlabs",
        "Comic_kohya": "kohya",
    }
    assert model.style_slot.loads == 4


def test_style_swaps_inside_a_call_leave_no_residue(root):
    plain = OmniConsistencyModel.load(root, OPTIONS).generate([request("x")])[0].image
    model = OmniConsistencyModel.load(root, OPTIONS)
    with_style, without = model.generate([request("s", style=ghibli(root)), request("x")])
    assert not np.array_equal(with_style.image, without.image)
    assert np.array_equal(without.image, plain)


def test_batched_items_match_their_single_runs(root):
    single = OmniConsistencyModel.load(root, OPTIONS)
    batched = OmniConsistencyModel.load(
        root, ModelOptions(device="cpu", max_batch_size=4, extra={"cond_size": 32})
    )
    requests = [request(f"b{i}", seed=i, prompt=f"prompt {i}", guidance=2.0 + i) for i in range(3)]
    alone = [single.generate([r])[0].image for r in requests]
    together = batched.generate(requests)
    for a, b in zip(alone, together, strict=True):
        assert b.ok and np.abs(a.astype(int) - b.image.astype(int)).max() <= 1


def test_posterior_mean_option_is_deterministic_in_the_condition(root):
    model = OmniConsistencyModel.load(
        root, ModelOptions(device="cpu", extra={"cond_size": 32, "posterior": "mean"})
    )
    [outcome] = model.generate([request("m")])
    assert outcome.ok and outcome.parameters["posterior"] == "mean"
    [sampled] = OmniConsistencyModel.load(root, OPTIONS).generate([request("m")])
    assert not np.array_equal(outcome.image, sampled.image)


def test_unknown_options_are_refused(root):
    with pytest.raises(ValueError, match="unknown OmniConsistency option"):
        OmniConsistencyModel.load(root, ModelOptions(device="cpu", extra={"cond_sise": 32}))
    with pytest.raises(ValueError, match="cond_size"):
        OmniConsistencyModel.load(root, ModelOptions(device="cpu", extra={"cond_size": 40}))


def test_batch_key_groups_by_lora_and_size(model, root):
    assert model.batch_key(request("a", style=ghibli(root))) == model.batch_key(
        request("b", style=ghibli(root))
    )
    assert model.batch_key(request("a", style=ghibli(root))) != model.batch_key(
        request("a", style=ghibli(root, 0.5))
    )
    assert model.batch_key(request("a")) != model.batch_key(request("a", width=128))


def test_trigger_phrases_for_the_22_shipped_styles():
    assert len(SHIPPED_STYLES) == 22
    assert with_trigger("a cat", "3D_Chibi") == "3D Chibi style, a cat"
    assert with_trigger("Ghibli style, a cat", "Van_Gogh") == "Van Gogh style, a cat"
    assert with_trigger("Van Gogh style, a cat", "Van_Gogh") == "Van Gogh style, a cat"
    assert with_trigger("a cat", None) == "a cat"
    assert shipped_style("Rick_Morty") == "Rick_Morty"
    assert shipped_style("my-lora", Path("x/Pop_Art_rank128_bf16.safetensors")) == "Pop_Art"
    assert shipped_style("s3://bucket/custom.safetensors", Path("custom.safetensors")) is None


def test_random_tiny_model_runs_and_says_it_is_random():
    model = OmniConsistencyModel.load_random(OPTIONS, size="tiny")
    [outcome] = model.generate([request("r")])
    assert outcome.ok and outcome.parameters["random_weights"] is True
    assert model.weight_files() == {}


def test_out_of_memory_on_one_item_spares_its_batch_neighbours(root, monkeypatch):
    model = OmniConsistencyModel.load(
        root, ModelOptions(device="cpu", max_batch_size=3, extra={"cond_size": 32})
    )
    real_denoise = model.sampler.denoise

    def denoise_that_runs_out_of_memory_on_seed_13(noise, *args, **kwargs):
        if any(torch_equal_seed(noise, 13)):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_denoise(noise, *args, **kwargs)

    def torch_equal_seed(noise, seed):
        layout = model.sampler.layout(SIZE["width"], SIZE["height"], 32)
        reference = model.sampler.initial_noise(layout, [torch.Generator().manual_seed(seed)])
        return [bool((row == reference[0]).all()) for row in noise]

    monkeypatch.setattr(model.sampler, "denoise", denoise_that_runs_out_of_memory_on_seed_13)
    outcomes = model.generate(
        [request("a", seed=11), request("oom", seed=13), request("c", seed=12)]
    )
    assert [o.ok for o in outcomes] == [True, False, True]
    assert (
        outcomes[1].error.kind == ItemStatus.OUT_OF_MEMORY
        and "injected" in outcomes[1].error.message
    )


def test_fp8_storage_runs_with_a_style_lora_and_stays_close_to_bf16(root):
    bf16 = OmniConsistencyModel.load(
        root, ModelOptions(device="cpu", dtype="bfloat16", extra={"cond_size": 32})
    )
    fp8 = OmniConsistencyModel.load(
        root, ModelOptions(device="cpu", dtype="bfloat16", fp8=True, extra={"cond_size": 32})
    )
    reference, quantized = (m.generate([request("q", style=ghibli(root))])[0] for m in (bf16, fp8))
    assert quantized.ok, quantized.error
    difference = np.abs(reference.image.astype(int) - quantized.image.astype(int))
    assert difference.max() > 0 and difference.mean() < 32
    with pytest.raises(ValueError, match="fp8 and fuse_lora"):
        OmniConsistencyModel.load(root, ModelOptions(device="cpu", fp8=True, fuse_lora=True))


def test_fp8_base_weights_take_peft_style_loras_in_the_compute_dtype_and_swaps_leave_no_residue(
    root,
):
    """PEFT wraps the fp8 layers like any Linear: adapters in bf16 (never float8), outputs
    finite, and a LoRA swapped out leaves the fp8 model exactly as it was."""
    from peft.tuners.lora import LoraLayer

    options = ModelOptions(device="cpu", dtype="bfloat16", fp8=True, extra={"cond_size": 32})
    model, fresh = (
        OmniConsistencyModel.load(root, options),
        OmniConsistencyModel.load(root, options),
    )
    transformer = model.components.transformer
    fp8_layers = sum(isinstance(m, Float8WeightLinear) for m in transformer.modules())
    watercolor = StyleLora(
        root / "style_loras" / "examples" / "Watercolor_diffusers_peft.safetensors",
        1.0,
        "Watercolor",
    )
    finite: list[bool] = []
    handle = transformer.register_forward_hook(
        lambda _module, _args, output: finite.append(bool(torch.isfinite(output[0]).all()))
    )
    try:
        first, plain, other, again = model.generate(
            [
                request("a1", style=ghibli(root)),
                request("plain"),
                request("b", style=watercolor),
                request("a2", style=ghibli(root)),
            ]
        )
    finally:
        handle.remove()
    assert all(o.ok for o in (first, plain, other, again)) and finite and all(finite)
    layers = [m for m in transformer.modules() if isinstance(m, LoraLayer)]  # Ghibli mounted
    assert layers and all(
        isinstance(layer.get_base_layer(), Float8WeightLinear) for layer in layers
    )
    assert {layer.lora_A["style"].weight.dtype for layer in layers} == {torch.bfloat16}
    assert {layer.lora_B["style"].weight.dtype for layer in layers} == {torch.bfloat16}

    fresh_plain, fresh_other = fresh.generate([request("plain"), request("b", style=watercolor)])
    assert np.array_equal(plain.image, fresh_plain.image)  # Ghibli left nothing behind
    assert np.array_equal(other.image, fresh_other.image)
    assert np.array_equal(first.image, again.image)  # nor did the Watercolor LoRA
    assert not np.array_equal(first.image, plain.image)
    model.style_slot.unload()
    assert not any(isinstance(m, LoraLayer) for m in transformer.modules())
    assert sum(isinstance(m, Float8WeightLinear) for m in transformer.modules()) == fp8_layers
