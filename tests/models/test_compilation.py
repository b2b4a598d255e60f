"""Compiled models stay compiled: a run that changes style LoRAs, their scale, or drops them
compiles nothing after the first LoRA, and the compiled and batched paths give the eager images
within the parity tolerances. Dynamo's own counters say what was compiled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo
from PIL import Image
from safetensors.torch import load_file, save_file
from torch._dynamo.utils import counters

from pipeline.models.base import GenerationRequest, ModelOptions, StyleLora
from pipeline.models.omniconsistency.model import OmniConsistencyModel
from pipeline.models.uso.model import USOModel

OMNI_EXTRA = {"cond_size": 32, "style_lora_max_rank": 4}
# compiled (inductor, fp32, CPU) vs eager on the tiny weights, 64x48, 2-3 steps: measured max
# |diff| 0 levels of 255 (compiled), at most 1 level in a few pixels for hot-swapped LoRAs
# (padded rank, scale in a tensor); the bound leaves room for other CPUs' kernels.
IMAGE_MAX_DIFF = 2


def picture(seed: int, width: int = 40, height: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def omni_request(item_id: str, seed: int, lora: Path | None = None, scale: float = 1.0):
    return GenerationRequest(
        item_id,
        f"a house {seed}",
        seed,
        subject=picture(seed),
        style_lora=None if lora is None else StyleLora(lora, scale),
        width=64,
        height=48,
        steps=2,
    )


def uso_request(item_id: str, seed: int) -> GenerationRequest:
    return GenerationRequest(
        item_id,
        f"a house {seed}",
        seed,
        subject=picture(seed),
        styles=[picture(seed + 50, 48, 48)],
        width=64,
        height=48,
        steps=2,
    )


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def loras(tiny_weights: Path, tmp_path_factory) -> dict[str, Path]:
    """Two shipped-style kohya LoRAs (rank 4) and a rank-2 cut of a third one."""
    folder = tiny_weights / "style_loras"
    cut = {}
    for key, tensor in load_file(str(folder / "Chinese_Ink_rank128_bf16.safetensors")).items():
        if key.endswith("lora_down.weight"):
            tensor = tensor[:2]
        elif key.endswith("lora_up.weight"):
            tensor = tensor[:, :2]
        elif key.endswith(".alpha"):
            tensor = tensor * 0 + 2.0
        cut[key] = tensor.contiguous()
    rank2 = tmp_path_factory.mktemp("loras") / "ink_rank2.safetensors"
    save_file(cut, str(rank2))
    return {
        "ghibli": folder / "Ghibli_rank128_bf16.safetensors",
        "van_gogh": folder / "Van_Gogh_rank128_bf16.safetensors",
        "ink_rank2": rank2,
    }


def images(model, requests) -> list[np.ndarray]:
    outcomes = model.generate(requests)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    return [o.image for o in outcomes]


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= IMAGE_MAX_DIFF, (diff.max(), diff.mean())


def test_switching_style_loras_compiles_nothing_after_the_first(tiny_weights, loras, fresh_dynamo):
    """A nightly run mixes shipped styles, a community LoRA of another rank, scales and items
    without a LoRA: after the first LoRA item, no graph is traced again, and every image is the
    one an eager model with that LoRA freshly mounted gives."""
    compiled = OmniConsistencyModel.load(
        tiny_weights,
        ModelOptions(
            device="cpu", compile=True, extra={**OMNI_EXTRA, "compile_backend": "aot_eager"}
        ),
    )
    eager = OmniConsistencyModel.load(tiny_weights, ModelOptions(device="cpu", extra=OMNI_EXTRA))
    plan = [
        (None, 1.0),
        (loras["ghibli"], 1.0),  # the first LoRA changes the module structure once
        (loras["van_gogh"], 1.0),
        (loras["van_gogh"], 0.6),
        (loras["ink_rank2"], 1.0),
        (None, 1.0),
        (loras["ghibli"], 0.8),
    ]
    traced = []
    for seed, (lora, scale) in enumerate(plan):
        request = omni_request(f"item{seed}", seed, lora, scale)
        [image] = images(compiled, [request])
        traced.append(graphs())
        eager.style_slot.unload()  # a fresh mount every time: the reference for a hot swap
        [reference] = images(eager, [request])
        assert_close(image, reference)
    assert traced[1] > traced[0] > 0  # plain graphs, then the LoRA-wrapped ones
    assert traced[1:] == [traced[1]] * (len(plan) - 1), traced
    assert compiled.style_slot.remounts == 0
    assert counters["stats"]["unique_graphs"] <= 8  # within dynamo's recompile limit per block


def test_uso_items_of_one_layout_share_the_compiled_blocks(tiny_weights, fresh_dynamo):
    model = USOModel.load(
        tiny_weights,
        ModelOptions(device="cpu", compile=True, extra={"compile_backend": "aot_eager"}),
    )
    images(model, [uso_request("a", 1)])
    first = graphs()
    images(model, [uso_request("b", 2)])  # other subject, style, prompt, seed
    assert first == graphs() == 2  # one graph per block kind


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_class, extra, make",
    [
        (USOModel, {}, uso_request),
        (OmniConsistencyModel, OMNI_EXTRA, omni_request),
    ],
    ids=["uso", "omniconsistency"],
)
def test_compiled_and_batched_paths_give_the_eager_images(
    tiny_weights, fresh_dynamo, model_class, extra, make
):
    """inductor-compiled blocks, batches of 2, both: the images of the eager one-by-one run."""
    requests = [make(f"item{i}", i) for i in range(2)]
    eager = model_class.load(tiny_weights, ModelOptions(device="cpu", extra=extra))
    alone = [images(eager, [r])[0] for r in requests]
    batched = images(
        model_class.load(tiny_weights, ModelOptions(device="cpu", max_batch_size=2, extra=extra)),
        requests,
    )
    compiled = model_class.load(
        tiny_weights, ModelOptions(device="cpu", compile=True, max_batch_size=2, extra=extra)
    )
    compiled_batched = images(compiled, requests)
    compiled_alone = [images(compiled, [r])[0] for r in requests]
    for reference, *others in zip(alone, batched, compiled_batched, compiled_alone, strict=True):
        for image in others:
            assert_close(image, reference)
