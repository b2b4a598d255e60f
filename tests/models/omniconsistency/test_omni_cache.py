"""The condition K/V cache belongs to one generation: interleaved generations and two models in
one process give exactly what each gives alone, and nothing survives a `generate` call."""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from support.paths import FIXTURES

from pipeline.models.base import GenerationRequest, ModelOptions
from pipeline.models.omniconsistency.attention import CondKVCache
from pipeline.models.omniconsistency.model import OmniConsistencyModel
from pipeline.parity.omniconsistency import load_case_sampler

OMNI = FIXTURES / "parity" / "omniconsistency"
CASE = OMNI / "a_64x64_cond32_3steps_style1"


@pytest.fixture(scope="module")
def case():
    return json.loads((CASE / "case.json").read_text()), load_file(str(CASE / "inputs.safetensors"))


@pytest.fixture(scope="module")
def sampler(case):
    return load_case_sampler(OMNI / "weights", case[0], torch.float32)


def _item(inputs, seed: int):
    """A second, different item of the same layout."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "cond": inputs["cond_latent"]
        + 0.5 * torch.randn(inputs["cond_latent"].shape, generator=gen),
        "noise": torch.randn(inputs["noise_latent"].shape, generator=gen),
        "prompt": torch.randn(inputs["prompt_embeds"].shape, generator=gen),
        "pooled": torch.randn(inputs["pooled_prompt_embeds"].shape, generator=gen),
    }


def _alone(sampler, layout, item, steps):
    with torch.inference_mode():
        latent, _ = sampler.generate_latent(
            item["cond"], item["noise"], item["prompt"], item["pooled"], [3.5], layout, steps
        )
    return latent


def test_interleaved_generations_equal_their_runs_alone(sampler, case):
    meta, inputs = case
    layout = sampler.layout(meta["width"], meta["height"], meta["cond_size"])
    steps = meta["num_steps"]
    x = {
        "cond": inputs["cond_latent"],
        "noise": inputs["noise_latent"],
        "prompt": inputs["prompt_embeds"],
        "pooled": inputs["pooled_prompt_embeds"],
    }
    y = _item(inputs, seed=7)
    alone_x, alone_y = _alone(sampler, layout, x, steps), _alone(sampler, layout, y, steps)
    assert not torch.equal(alone_x, alone_y)
    nested = {}

    def run_y_inside_step_0_of_x(step, velocity, latents):
        if step == 0:  # a whole other generation between two steps of this one
            nested["y"] = _alone(sampler, layout, y, steps)

    with torch.inference_mode():
        cache_x = sampler.warm_up(x["cond"], x["prompt"], x["pooled"], [3.5], layout)
        cache_y = sampler.warm_up(y["cond"], y["prompt"], y["pooled"], [3.5], layout)
        schedule = sampler.schedule(steps, layout)
        latent_y = sampler.denoise(
            y["noise"], cache_y, y["prompt"], y["pooled"], [3.5], layout, schedule
        )
        latent_x = sampler.denoise(
            x["noise"],
            cache_x,
            x["prompt"],
            x["pooled"],
            [3.5],
            layout,
            schedule,
            on_step=run_y_inside_step_0_of_x,
        )
    assert torch.equal(latent_x, alone_x)
    assert torch.equal(latent_y, alone_y) and torch.equal(nested["y"], alone_y)


def test_the_cache_ignores_t5_and_recomputing_it_changes_nothing(sampler, case):
    meta, inputs = case
    layout = sampler.layout(meta["width"], meta["height"], meta["cond_size"])
    args = (
        inputs["cond_latent"],
        inputs["prompt_embeds"],
        inputs["pooled_prompt_embeds"],
        [3.5],
        layout,
    )
    with torch.inference_mode():
        first = sampler.warm_up(*args)
        other_t5 = sampler.warm_up(
            inputs["cond_latent"],
            torch.randn_like(inputs["prompt_embeds"]),
            inputs["pooled_prompt_embeds"],
            [3.5],
            layout,
        )
        other_pooled = sampler.warm_up(
            inputs["cond_latent"],
            inputs["prompt_embeds"],
            torch.randn_like(inputs["pooled_prompt_embeds"]),
            [3.5],
            layout,
        )
    assert first.entries.keys() == {"double0", "double1", "single0", "single1"}
    for block in first.entries:
        assert all(
            torch.allclose(a, b, atol=1e-6)
            for a, b in zip(first.entries[block], other_t5.entries[block], strict=True)
        )
        assert not torch.allclose(first.entries[block][0], other_pooled.entries[block][0])


def test_denoising_without_a_warm_up_is_an_error(sampler, case):
    meta, inputs = case
    layout = sampler.layout(meta["width"], meta["height"], meta["cond_size"])
    with torch.inference_mode(), pytest.raises(RuntimeError, match="warm-up pass did not run"):
        sampler.denoise(
            inputs["noise_latent"],
            CondKVCache(n_cond=layout.n_cond),
            inputs["prompt_embeds"],
            inputs["pooled_prompt_embeds"],
            [3.5],
            layout,
            sampler.schedule(1, layout),
        )


def _request(item_id: str, seed: int) -> GenerationRequest:
    pixels = (np.random.RandomState(seed).rand(40, 60, 3) * 255).astype(np.uint8)
    return GenerationRequest(
        item_id,
        f"prompt {seed}",
        seed,
        subject=Image.fromarray(pixels),
        width=64,
        height=48,
        steps=2,
    )


def test_two_models_in_one_process_share_nothing(tiny_weights):
    root = tiny_weights
    options = ModelOptions(device="cpu", extra={"cond_size": 32})
    first, second = (
        OmniConsistencyModel.load(root, options),
        OmniConsistencyModel.load(root, options),
    )
    alone = [first.generate([_request(f"r{i}", i)])[0].image for i in range(3)]
    mixed = [
        model.generate([_request(f"r{i}", i)])[0].image
        for i, model in enumerate((second, first, second))
    ]
    assert all(np.array_equal(a, b) for a, b in zip(alone, mixed, strict=True))

    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) is CondKVCache]  # every cache was freed
    for model in (first, second):
        for processor in model.components.transformer.attn_processors.values():
            assert not any(
                isinstance(v, (torch.Tensor, list, dict, CondKVCache))
                for v in vars(processor).values()
            )
