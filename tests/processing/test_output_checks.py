"""A model whose numbers overflow gives a flat image; the item becomes an error, not an ok record
of a black picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from support.run_helpers import SMALL

from pipeline.models.base import GenerationRequest, ModelOptions
from pipeline.models.registry import load_model
from pipeline.processing.output_checks import output_problem


def _request(**overrides) -> GenerationRequest:
    rng = np.random.default_rng(0)
    subject = Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8))
    fields = dict(item_id="i", prompt="a cat", seed=1, subject=subject, styles=[subject], **SMALL)
    return GenerationRequest(**(fields | overrides))


def test_an_overflowing_guidance_gives_a_flat_image_that_is_refused(tiny_weights: Path):
    model = load_model("uso", tiny_weights, ModelOptions(device="cpu"))
    fine, overflow = model.generate([_request(), _request(item_id="j", guidance=1e308)])
    assert fine.error is None and output_problem(fine.image, _request()) is None
    assert overflow.error is None  # the model itself does not notice
    problem = output_problem(overflow.image, _request(guidance=1e308))
    assert problem is not None and "constant image" in problem and "1e+308" in problem


def test_flat_inputs_may_give_a_flat_result_and_float_images_must_be_finite():
    flat = Image.new("RGB", (40, 32), (255, 255, 255))
    white = np.full((32, 40, 3), 255, dtype=np.uint8)
    assert output_problem(white, _request(subject=flat, styles=[flat])) is None
    assert "constant image" in (output_problem(white, _request()) or "")
    nan = np.full((32, 40, 3), np.nan, dtype=np.float32)
    assert "non-finite" in (output_problem(nan, _request()) or "")


def test_a_flat_colour_other_than_black_is_caught_and_a_varied_image_passes():
    red = np.zeros((32, 40, 3), dtype=np.uint8)
    red[..., 0] = 255
    assert "(255, 0, 0)" in (output_problem(red, _request()) or "")
    varied = np.arange(32 * 40 * 3, dtype=np.uint8).reshape(32, 40, 3)
    assert output_problem(varied, _request()) is None
