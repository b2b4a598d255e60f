"""USO and OmniConsistency follow one policy: the same option errors, the same timing keys and
shared provenance keys, the same size names for random weights, the same fp8 scheme within a
stated bound of the unquantised output, the same out-of-memory handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.torch_features import SCALED_MM_ON_CPU

from pipeline.errors import ItemStatus
from pipeline.models.base import (
    SHARED_PARAMETER_KEYS,
    TIMING_KEYS,
    GenerationRequest,
    ModelOptions,
)
from pipeline.models.omniconsistency.model import OmniConsistencyModel
from pipeline.models.uso.model import USOModel

# model class, its extra options for tiny inputs, its name in messages
MODELS = {
    "uso": (USOModel, {}, "USO"),
    "omniconsistency": (OmniConsistencyModel, {"cond_size": 32}, "OmniConsistency"),
}

# fp8 (row-scaled e4m3 storage, fp32 compute) vs fp32 on the tiny weights, 64x48, 3 steps, three
# items each: measured mean |diff| over the three items 0.51 (USO) and 0.81 (OmniConsistency) of
# 255, max 4 and 6, with the dequantise kernel; with torch._scaled_mm (activations rounded to e4m3
# per token too) 0.64 and 1.11, max 5 and 7. The bound leaves room for other CPUs' kernels.
FP8_MEAN_BOUND, FP8_MAX_BOUND = 1.5, 12


def picture(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def request(item_id: str, seed: int = 3, **overrides) -> GenerationRequest:
    fields = dict(
        prompt="a red house by a lake",
        seed=seed,
        subject=picture(seed, 40, 32),
        styles=[picture(seed + 100, 60, 44)],
        width=64,
        height=48,
        steps=3,
    )
    fields.update(overrides)
    return GenerationRequest(item_id, **fields)


def options(name: str, **kwargs) -> ModelOptions:
    extra = {**MODELS[name][1], **kwargs.pop("extra", {})}
    return ModelOptions(device="cpu", extra=extra, **kwargs)


@pytest.fixture(scope="module")
def loaded(tiny_weights: Path) -> dict:
    return {name: cls.load(tiny_weights, options(name)) for name, (cls, _, _) in MODELS.items()}


@pytest.mark.parametrize("name", MODELS)
def test_unknown_extra_keys_are_refused_with_one_message_shape(tiny_weights, name):
    cls, extra, label = MODELS[name]
    pattern = rf"^unknown {label} option\(s\) \['bogus'\]; known: \[.*'{next(iter(extra), 'pe')}'"
    with pytest.raises(ValueError, match=pattern):
        cls.load(tiny_weights, options(name, extra={"bogus": 1}))
    with pytest.raises(ValueError, match=pattern):
        cls.load_random(options(name, extra={"bogus": 1}), size="tiny")


@pytest.mark.parametrize("name", MODELS)
def test_fp8_with_fuse_lora_is_refused_the_same_way(tiny_weights, name):
    cls = MODELS[name][0]
    both = options(name, fp8=True, fuse_lora=True)
    with pytest.raises(ValueError, match=r"^fp8 and fuse_lora cannot be combined"):
        cls.load(tiny_weights, both)
    with pytest.raises(ValueError, match=r"^fp8 and fuse_lora cannot be combined"):
        cls.load_random(both, size="tiny")


def test_both_models_report_the_same_timing_keys_and_shared_parameters(loaded):
    outcomes = {name: model.generate([request(name)])[0] for name, model in loaded.items()}
    for name, outcome in outcomes.items():
        assert outcome.ok, outcome.error
        assert set(outcome.timings) == set(TIMING_KEYS)
        stages = sum(outcome.timings[key] for key in TIMING_KEYS if key != "model_s")
        assert all(value >= 0 for value in outcome.timings.values())
        assert outcome.timings["model_s"] == pytest.approx(stages, rel=0.1, abs=0.05)  # batch of 1
        assert set(SHARED_PARAMETER_KEYS) <= set(outcome.parameters), name
        assert outcome.parameters["model"] == name and outcome.parameters["batch_size"] == 1
        assert (outcome.parameters["width"], outcome.parameters["height"]) == (64, 48)
    uso, omni = outcomes["uso"].parameters, outcomes["omniconsistency"].parameters
    execution = ("dtype", "fp8", "compile", "fuse_lora", "random_weights")
    assert (
        {k: uso[k] for k in execution}
        == {k: omni[k] for k in execution}
        == {
            "dtype": "torch.float32",
            "fp8": False,
            "compile": False,
            "fuse_lora": False,
            "random_weights": False,
        }
    )
    for key in ("seed", "steps", "requested_width", "requested_height", "prompt"):
        assert uso[key] == omni[key], key
    assert isinstance(uso["mu"], float) and isinstance(omni["mu"], float)


@pytest.mark.parametrize("kernel", ["dequantize", SCALED_MM_ON_CPU])
@pytest.mark.parametrize("name", MODELS)
def test_fp8_stays_within_the_stated_bound_of_the_unquantised_output(
    tiny_weights, loaded, name, kernel
):
    """Both kernels of the one fp8 path (torch._scaled_mm also runs on a CPU)."""
    fp8 = MODELS[name][0].load(tiny_weights, options(name, fp8=True, extra={"fp8_matmul": kernel}))
    requests = [request(f"q{seed}", seed=seed) for seed in (3, 4, 5)]
    reference = loaded[name].generate(requests)
    quantized = fp8.generate(requests)
    difference = np.stack(
        [
            np.abs(a.image.astype(int) - b.image.astype(int))
            for a, b in zip(reference, quantized, strict=True)
        ]
    )
    assert all(o.ok and o.parameters["fp8"] == "e4m3fn-rowwise" for o in quantized)
    assert all(o.parameters["fp8_matmul"] == kernel for o in quantized)
    assert difference.max() > 0  # the weights really are stored in fp8
    assert difference.mean() < FP8_MEAN_BOUND and difference.max() <= FP8_MAX_BOUND


@pytest.mark.parametrize("name", MODELS)
def test_load_random_knows_the_same_size_names(tiny_weights, name):
    cls = MODELS[name][0]
    for size in ("tiny", "small"):
        model = cls.load_random(options(name), size=size)
        [outcome] = model.generate([request("r", width=32, height=32, steps=1)])
        assert outcome.ok and outcome.parameters["random_weights"] is True
        assert model.weight_files() == {}
    with pytest.raises(ValueError, match="size must be one of full, small, tiny, got 'mid'"):
        cls.load_random(options(name), size="mid")


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def test_random_tiny_models_have_the_tiny_weights_shapes(loaded):
    uso, omni = loaded["uso"], loaded["omniconsistency"]
    random_uso = USOModel.load_random(options("uso"), size="tiny")
    random_omni = OmniConsistencyModel.load_random(options("omniconsistency"), size="tiny")
    for files, random in (
        (uso.components.transformer, random_uso.components.transformer),
        (uso.components.vae, random_uso.components.vae),
        (uso.components.style_encoder.projector, random_uso.components.style_encoder.projector),
        (uso.components.style_encoder.siglip, random_uso.components.style_encoder.siglip),
        (omni.components.transformer, random_omni.components.transformer),
        (omni.components.vae, random_omni.components.vae),
        (omni.components.consistency_lora, random_omni.components.consistency_lora),
    ):
        assert _shapes(random) == _shapes(files), type(files).__name__
    for model, random in ((uso, random_uso), (omni, random_omni)):
        for encoder in ("_t5", "_clip"):
            assert _shapes(getattr(random.text_encoders, encoder)) == _shapes(
                getattr(model.text_encoders, encoder)
            )


@pytest.mark.parametrize("name", MODELS)
def test_both_models_classify_a_host_allocation_failure_as_out_of_memory(loaded, name):
    """The CPU allocator's refusal (a RuntimeError, not torch.OutOfMemoryError) fails only its
    item, as out_of_memory, in either model; the batch neighbours still come out."""
    model = loaded[name]
    transformer = model.components.transformer
    embedder = (transformer.flux if name == "uso" else transformer).x_embedder
    # USO items without a subject, so the embedder sees the target tokens alone (4x4 for 64x64)
    fields = {"subject": None} if name == "uso" else {}
    big = request("too-big", width=64, height=64, **fields)

    def refuse(_module, args):
        if args[0].shape[1] == (64 // 16) * (64 // 16):
            raise RuntimeError(
                "DefaultCPUAllocator: can't allocate memory: you tried to "
                "allocate 85899345920 bytes."
            )

    handle = embedder.register_forward_pre_hook(refuse)
    try:
        outcomes = model.generate([request("a", **fields), big, request("b", seed=4, **fields)])
    finally:
        handle.remove()
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[1].error.kind == ItemStatus.OUT_OF_MEMORY
    assert "can't allocate memory" in outcomes[1].error.message
