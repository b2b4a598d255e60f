"""Latents that overflow to NaN or inf become that item's error inside the model (naming the item
and the step), without a host read in the denoising loop, and without touching the other items
of the batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import ItemStatus
from pipeline.models.base import GenerationRequest, ModelOptions, StyleLora
from pipeline.models.finite import FiniteWatch
from pipeline.models.registry import load_model
from pipeline.models.weight_layout import STYLE_LORA_DIR


def _request(item_id: str, **overrides) -> GenerationRequest:
    rng = np.random.default_rng(0)
    subject = Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8))
    fields = dict(prompt="a cat", seed=1, subject=subject, width=64, height=48, steps=2)
    return GenerationRequest(item_id, **(fields | overrides))  # type: ignore[arg-type]


def test_the_watch_notes_the_first_bad_step_per_row_on_the_device():
    watch = FiniteWatch(3, torch.device("cpu"))
    fine = torch.zeros(3, 4, 2)
    watch.observe(0, fine)
    step1 = fine.clone()
    step1[1, 2, 0] = float("inf")
    watch.observe(1, step1)
    step2 = step1.clone()
    step2[2, 0, 1] = float("nan")
    watch.observe(2, step2)
    watch.observe(3, step2)  # still bad: the first step is kept
    assert watch.first_bad_steps() == [None, 1, 2]


def test_uso_gives_the_overflowing_item_its_error_and_its_batch_neighbour_its_image(
    tiny_weights: Path,
):
    model = load_model("uso", tiny_weights, ModelOptions(device="cpu", max_batch_size=2))
    style = _request("s").subject
    fine, overflow = model.generate(
        [
            _request("fine", styles=[style]),
            _request("over", styles=[style], guidance=1e308),
        ]
    )
    assert fine.parameters["batch_size"] == 2  # one forward for both
    assert fine.ok and fine.image is not None and len(np.unique(fine.image)) > 1
    assert overflow.image is None and overflow.error is not None
    assert overflow.error.kind == ItemStatus.MODEL_ERROR
    message = str(overflow.error)
    assert message.startswith("item 'over': non-finite latents (NaN or inf) after denoising step 1")
    assert "of 2" in message and "guidance 1e+308" in message


@pytest.mark.parametrize("overflow", ["guidance", "style_lora_scale"])
def test_omniconsistency_names_the_item_whose_guidance_or_lora_scale_overflowed(
    tiny_weights: Path, overflow: str
):
    model = load_model(
        "omniconsistency",
        tiny_weights,
        ModelOptions(device="cpu", max_batch_size=2, extra={"cond_size": 32}),
    )
    lora_path = next((tiny_weights / STYLE_LORA_DIR).glob("*.safetensors"))
    scale = 1e308 if overflow == "style_lora_scale" else 1.0
    lora = StyleLora(path=lora_path, scale=scale, name="tiny")
    guidance = 1e308 if overflow == "guidance" else None
    outcomes = model.generate(
        [
            _request("ok-1", style_lora=StyleLora(path=lora_path, scale=1.0, name="tiny")),
            _request("bad", style_lora=lora, guidance=guidance),
            _request("ok-2"),
        ]
    )
    by_id = {o.item_id: o for o in outcomes}
    assert by_id["ok-1"].ok and by_id["ok-2"].ok
    assert by_id["bad"].image is None and by_id["bad"].error is not None
    message = str(by_id["bad"].error)
    assert message.startswith("item 'bad': non-finite latents (NaN or inf) after denoising step")
    assert "1e+308" in message
