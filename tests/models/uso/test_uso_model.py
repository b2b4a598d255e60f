"""USOModel through the runner's interface, on a tiny weights root in the official formats.

The stories: a catalog item can be subject-driven, style-driven, subject+style or multi-style,
with or without a prompt; a corrupt style image or an impossible size fails only its own item;
after an out-of-memory the model frees memory, retries the rest one by one and keeps working;
caching style tokens and batching items never changes an image.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import ItemStatus, WeightFileError, WeightLayoutError
from pipeline.models.base import GenerationRequest, ModelOptions, StyleLora
from pipeline.models.uso.model import USOModel
from pipeline.models.uso.prepare import USOSettings

SIZE = dict(width=64, height=48, steps=2)


@pytest.fixture(scope="module")
def weights_root(tiny_weights: Path) -> Path:
    return tiny_weights


@pytest.fixture(scope="module")
def model(weights_root: Path) -> USOModel:
    loaded = USOModel.load(weights_root, ModelOptions(device="cpu", max_batch_size=4))
    yield loaded
    loaded.close()


def picture(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def corrupt_picture() -> Image.Image:
    """A PNG whose data is cut short: PIL opens it lazily and fails when it decodes."""
    buffer = io.BytesIO()
    picture(99, 64, 64).save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue()[:300]))


SUBJECT, STYLE_A, STYLE_B = picture(1, 40, 32), picture(2, 60, 44), picture(3, 50, 70)
USES = {
    "subject": dict(subject=SUBJECT),
    "style": dict(styles=[STYLE_A]),
    "subject+style": dict(subject=SUBJECT, styles=[STYLE_A]),
    "multi-style": dict(styles=[STYLE_A, STYLE_B]),
}


def request(
    item_id: str, prompt: str = "a cat in a hat", seed: int = 7, **kwargs
) -> GenerationRequest:
    return GenerationRequest(item_id=item_id, prompt=prompt, seed=seed, **{**SIZE, **kwargs})


def test_the_four_uses_and_an_empty_prompt_run_end_to_end(model: USOModel):
    requests = [request(name, **fields) for name, fields in USES.items()]
    requests.append(request("empty-prompt", prompt="", styles=[STYLE_A], subject=SUBJECT))
    outcomes = model.generate(requests)
    assert [o.item_id for o in outcomes] == [r.item_id for r in requests]
    for outcome in outcomes:
        assert outcome.ok, outcome.error
        assert outcome.image.shape == (48, 64, 3) and outcome.image.dtype == np.uint8
        assert outcome.parameters["steps"] == 2 and outcome.parameters["guidance"] == 4.0
    by_id = {o.item_id: o for o in outcomes}
    assert by_id["subject"].parameters["subject_size"] == [512, 400 // 16 * 16]
    assert by_id["multi-style"].parameters["num_styles"] == 2
    images = [o.image for o in outcomes]
    assert all(not np.array_equal(images[0], other) for other in images[1:])  # conditioning matters


def test_same_seed_same_image_other_seed_other_image(model: USOModel):
    first, again, other = model.generate(
        [
            request("a", **USES["subject+style"]),
            request("b", **USES["subject+style"]),
            request("c", seed=8, **USES["subject+style"]),
        ]
    )
    assert np.array_equal(first.image, again.image)
    assert not np.array_equal(first.image, other.image)


def test_batching_gives_the_same_images_as_one_by_one(weights_root: Path, model: USOModel):
    requests = [request(f"i{s}", seed=s, **USES["subject+style"]) for s in range(3)]
    batched = model.generate(requests)
    assert [o.parameters["batch_size"] for o in batched] == [3, 3, 3]
    single = USOModel.load(weights_root, ModelOptions(device="cpu", max_batch_size=1))
    alone = single.generate(requests)
    for a, b in zip(batched, alone, strict=True):
        assert b.parameters["batch_size"] == 1
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1


def test_style_token_cache_gives_identical_images_to_recomputing(weights_root: Path):
    cached = USOModel.load(weights_root, ModelOptions(device="cpu"))
    uncached = USOModel.load(
        weights_root, ModelOptions(device="cpu", extra={"style_cache_size": 0})
    )
    requests = [request(f"r{i}", seed=i, **USES["multi-style"]) for i in range(3)]
    with_cache = cached.generate(requests)
    without = uncached.generate(requests)
    for a, b in zip(with_cache, without, strict=True):
        assert np.array_equal(a.image, b.image)
    cache = cached.components.style_encoder.cache
    assert (cache.misses, cache.hits, len(cache)) == (2, 4, 2)  # each style image computed once
    assert len(uncached.components.style_encoder.cache) == 0


def test_corrupt_style_image_fails_only_its_item_and_the_model_keeps_working(model: USOModel):
    outcomes = model.generate(
        [
            request("good-1", **USES["style"]),
            request("broken", styles=[STYLE_A, corrupt_picture()]),
            request("good-2", **USES["subject"]),
        ]
    )
    assert [o.ok for o in outcomes] == [True, False, True]
    error = outcomes[1].error
    assert error.kind == ItemStatus.BAD_INPUT and error.item_id == "broken"
    assert "style image 1 is unreadable" in str(error)
    assert model.generate([request("after", **USES["style"])])[0].ok


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(width=8), "impossible size: width 8"),
        (dict(height=100_000), "impossible size: height 100000"),
        (dict(width=64.5), "impossible size: width 64.5"),
        (dict(subject=picture(5, 400, 6)), "too small"),
        (dict(subject=np.zeros((8, 8, 3), np.uint8)), "must be a decoded PIL image"),
        (dict(subject=corrupt_picture()), "subject image is unreadable"),
        (dict(steps=0), "steps must be a positive integer"),
        (dict(seed=-1), "seed must be an integer"),
        (dict(guidance=float("nan")), "guidance must be a finite number"),
        (dict(prompt=None), "prompt must be a string"),
        (dict(style_lora=StyleLora(Path("x.safetensors"))), "not a style LoRA"),
    ],
)
def test_bad_inputs_become_item_errors(model: USOModel, fields: dict, message: str):
    outcome, neighbour = model.generate(
        [request("bad", **fields), request("fine", **USES["style"])]
    )
    assert not outcome.ok and outcome.error.kind == ItemStatus.BAD_INPUT
    assert message in str(outcome.error) and "'bad'" in str(outcome.error)
    assert neighbour.ok


class _OutOfMemoryWhen:
    """Fault injection on the REAL transformer: a forward pre-hook on its input embedder that
    raises the allocator's own exception type when `condition(hidden_states)` holds."""

    def __init__(self, model: USOModel, condition):
        self.calls = 0
        embedder = model.components.transformer.flux.x_embedder

        def hook(_module, args):
            self.calls += 1
            if condition(args[0]):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        self.handle = embedder.register_forward_pre_hook(hook)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_out_of_memory_on_a_batch_retries_items_one_by_one(model: USOModel):
    requests = [request(f"b{s}", seed=s, **USES["style"]) for s in range(3)]
    expected = [o.image for o in model.generate(requests[:1])]
    with _OutOfMemoryWhen(model, lambda hidden: hidden.shape[0] > 1):
        outcomes = model.generate(requests)
    assert all(o.ok for o in outcomes)
    assert [o.parameters["batch_size"] for o in outcomes] == [1, 1, 1]
    assert np.array_equal(outcomes[0].image, expected[0])


def test_an_item_that_alone_runs_out_of_memory_is_an_item_error(model: USOModel):
    big = request("too-big", width=64, height=64, **{k: v for k, v in USES["style"].items()})
    small = [request(f"s{s}", seed=s, **USES["style"]) for s in range(2)]
    with _OutOfMemoryWhen(model, lambda hidden: hidden.shape[1] == (64 // 16) * (64 // 16)):
        outcomes = model.generate([small[0], big, small[1]])
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[1].error.kind == ItemStatus.OUT_OF_MEMORY
    assert model.generate([big])[0].ok  # and the model is fine afterwards


def test_batch_key_groups_identical_layouts_only(model: USOModel):
    key = model.batch_key
    base = request("a", **USES["subject+style"])
    assert key(base) == key(request("b", seed=3, prompt="other", **USES["subject+style"]))
    assert key(base) != key(request("c", **USES["subject"]))
    assert key(base) != key(request("d", subject=picture(4, 32, 40), styles=[STYLE_A]))
    assert key(base) != key(request("e", **{**USES["subject+style"], "styles": [STYLE_A, STYLE_B]}))
    assert key(base) != key(request("f", width=48, **USES["subject+style"]))


def test_subject_position_modes_change_the_image(weights_root: Path, model: USOModel):
    diagonal = model.generate([request("d", **USES["subject"])])[0].image
    other = USOModel.load(weights_root, ModelOptions(device="cpu", extra={"pe": "o"}))
    overlapping = other.generate([request("o", **USES["subject"])])[0]
    assert overlapping.parameters["pe"] == "o"
    assert not np.array_equal(diagonal, overlapping.image)


def test_sampled_subject_latent_is_reproducible_per_seed(weights_root: Path, model: USOModel):
    sampling = USOModel.load(
        weights_root, ModelOptions(device="cpu", extra={"subject_latent": "sample"})
    )
    a, b, c = sampling.generate(
        [
            request("a", **USES["subject"]),
            request("b", **USES["subject"]),
            request("c", seed=9, **USES["subject"]),
        ]
    )
    mean = model.generate([request("m", **USES["subject"])])[0]
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.image, mean.image)


def test_merged_lora_and_fp8_storage_stay_close_to_the_default(weights_root: Path, model: USOModel):
    reference = model.generate([request("r", **USES["subject+style"])])[0].image.astype(int)
    merged = USOModel.load(weights_root, ModelOptions(device="cpu", fuse_lora=True))
    fp8 = USOModel.load(weights_root, ModelOptions(device="cpu", fp8=True))
    merged_image = merged.generate([request("m", **USES["subject+style"])])[0].image.astype(int)
    fp8_outcome = fp8.generate([request("f", **USES["subject+style"])])[0]
    assert np.abs(merged_image - reference).max() <= 1  # fp32 merge: rounding only
    assert fp8_outcome.ok
    assert np.abs(fp8_outcome.image.astype(int) - reference).mean() < 8


def test_weight_files_name_every_loaded_file(model: USOModel, weights_root: Path):
    files = model.weight_files()
    assert files["uso_dit_lora"] == weights_root / "uso" / "dit_lora.safetensors"
    assert files["uso_projector"] == weights_root / "uso" / "projector.safetensors"
    assert files["flux_transformer"] == weights_root / "flux1-dev" / "flux1-dev.safetensors"
    assert not model.random_weights


def test_random_weights_say_so():
    random = USOModel.load_random(ModelOptions(device="cpu"), size="tiny")
    assert random.random_weights and random.weight_files() == {}
    assert random.generate([request("x", **USES["subject+style"])])[0].ok


def test_missing_or_corrupt_weight_files_fail_the_load_with_their_name(
    weights_root: Path, tmp_path: Path
):
    root = tmp_path / "root"
    shutil.copytree(weights_root, root)
    lora = root / "uso" / "dit_lora.safetensors"
    lora.write_bytes(lora.read_bytes()[:-64])
    with pytest.raises(WeightFileError, match=r"dit_lora.safetensors"):
        USOModel.load(root, ModelOptions(device="cpu"))
    lora.unlink()
    with pytest.raises(WeightLayoutError, match="USO dit_lora"):
        USOModel.load(root, ModelOptions(device="cpu"))


def test_settings_reject_bad_values_and_unknown_keys():
    with pytest.raises(ValueError, match="pe"):
        USOSettings.from_extra({"pe": "x"})
    with pytest.raises(ValueError, match="content_ref"):
        USOSettings.from_extra({"content_ref": 8})
    with pytest.raises(ValueError, match=r"unknown USO option\(s\) \['apply_proj_loras'\]"):
        USOSettings.from_extra({"apply_proj_loras": True})
