"""The T5 + CLIP prompt encoder: the references' semantics, caching, layouts and errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

from pipeline.errors import WeightFileError
from pipeline.models.architecture import TINY
from pipeline.models.flux.text_encoders import CLIP_MAX_LENGTH, FluxTextEncoders
from pipeline.models.weight_layout import FluxFiles
from pipeline.weights.tiny import build_tiny_weights

CPU = torch.device("cpu")
T5_WIDTH, CLIP_WIDTH = TINY.flux.context_in_dim, TINY.flux.vec_in_dim


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return build_tiny_weights(tmp_path_factory.mktemp("text") / "weights")


@pytest.fixture(scope="module")
def snapshot_root(tmp_path_factory) -> Path:
    return build_tiny_weights(tmp_path_factory.mktemp("text") / "weights", flux_layout="diffusers")


@pytest.fixture
def encoders(root) -> FluxTextEncoders:
    return FluxTextEncoders.load(FluxFiles.from_root(root), CPU, torch.float32)


class ForwardCounter:
    """Counts forward calls of a module and records the call's input ids and attention mask."""

    def __init__(self, module: torch.nn.Module):
        self.calls: list[dict] = []
        module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append(
            {"input_ids": kwargs.get("input_ids"), "attention_mask": kwargs.get("attention_mask")}
        )


def _reference(root: Path, prompt: str, max_length: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """What both authors' codes compute, spelled out with plain transformers calls."""
    t5 = T5EncoderModel.from_pretrained(root / "t5").eval()
    clip = CLIPTextModel.from_pretrained(root / "clip").eval()
    t5_ids = T5Tokenizer.from_pretrained(root / "t5")(
        prompt, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    ).input_ids
    clip_ids = CLIPTokenizer.from_pretrained(root / "clip")(
        prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return t5(input_ids=t5_ids).last_hidden_state, clip(input_ids=clip_ids).pooler_output


def test_encode_returns_t5_states_and_pooled_clip_of_the_right_shapes(encoders):
    t5, pooled = encoders.encode("A photo of a cat, Ghibli style")
    assert t5.shape == (1, 512, T5_WIDTH) and pooled.shape == (1, CLIP_WIDTH)
    assert t5.dtype == pooled.dtype == torch.float32 and t5.device == CPU
    assert torch.isfinite(t5).all() and torch.isfinite(pooled).all()


def test_encode_equals_the_reference_recipe(root, encoders):
    prompt = "Van Gogh style, a village under a starry night"
    t5, pooled = encoders.encode(prompt)
    ref_t5, ref_pooled = _reference(root, prompt)
    torch.testing.assert_close(t5, ref_t5, rtol=0, atol=0)
    torch.testing.assert_close(pooled, ref_pooled, rtol=0, atol=0)


def test_pads_to_max_length_without_attention_mask(encoders):
    t5_calls, clip_calls = ForwardCounter(encoders._t5), ForwardCounter(encoders._clip)
    encoders.encode("a cat")
    assert t5_calls.calls[0]["input_ids"].shape == (1, 512)
    assert clip_calls.calls[0]["input_ids"].shape == (1, CLIP_MAX_LENGTH)
    assert (
        t5_calls.calls[0]["attention_mask"] is None
        and clip_calls.calls[0]["attention_mask"] is None
    )
    t5_ids = t5_calls.calls[0]["input_ids"][0]
    length = len(encoders.t5_tokenizer("a cat").input_ids)
    assert t5_ids[length - 1] == encoders.t5_tokenizer.eos_token_id
    assert (t5_ids[length:] == encoders.t5_tokenizer.pad_token_id).all()  # pads are encoded too


def test_padding_tokens_change_the_output_like_the_reference(root):
    """No mask: the T5 states of the real tokens depend on how far the prompt is padded."""
    files = FluxFiles.from_root(root)
    short = FluxTextEncoders.load(files, CPU, torch.float32, max_sequence_length=16).encode(
        "a cat"
    )[0]
    full = FluxTextEncoders.load(files, CPU, torch.float32).encode("a cat")[0]
    assert short.shape == (1, 16, T5_WIDTH)
    assert not torch.allclose(short[:, :3], full[:, :3])
    torch.testing.assert_close(short, _reference(root, "a cat", max_length=16)[0], rtol=0, atol=0)


def test_long_prompts_are_truncated(root, encoders):
    prompt = "a very long prompt about a cat " * 200
    t5, pooled = encoders.encode(prompt)
    assert t5.shape == (1, 512, T5_WIDTH)
    ref_t5, ref_pooled = _reference(root, prompt)
    torch.testing.assert_close(t5, ref_t5, rtol=0, atol=0)
    torch.testing.assert_close(pooled, ref_pooled, rtol=0, atol=0)


def test_empty_prompt_is_legal(encoders):
    t5, pooled = encoders.encode("")
    assert t5.shape == (1, 512, T5_WIDTH) and pooled.shape == (1, CLIP_WIDTH)
    assert torch.isfinite(t5).all()
    assert not torch.equal(pooled, encoders.encode("a cat")[1])


def test_deterministic_across_loads(root, encoders):
    again = FluxTextEncoders.load(FluxFiles.from_root(root), CPU, torch.float32)
    for prompt in ("", "a cat"):
        assert all(
            torch.equal(a, b)
            for a, b in zip(encoders.encode(prompt), again.encode(prompt), strict=True)
        )


def test_second_encode_of_a_prompt_does_not_run_the_encoders(encoders):
    t5_calls, clip_calls = ForwardCounter(encoders._t5), ForwardCounter(encoders._clip)
    first = encoders.encode("a cat")
    second = encoders.encode("a cat")
    assert len(t5_calls.calls) == len(clip_calls.calls) == 1
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    second[0].zero_()  # callers get copies: the cache cannot be corrupted
    assert torch.equal(encoders.encode("a cat")[0], first[0])
    assert encoders.encoded_prompts == 1 and encoders.cache_hits == 2


def test_encode_many_encodes_each_distinct_prompt_once_in_one_batch(encoders):
    encoders.encode("a dog")
    t5_calls = ForwardCounter(encoders._t5)
    prompts = ["a cat", "a dog", "", "a cat", "a bird"]
    t5, pooled = encoders.encode_many(prompts)
    assert t5.shape == (5, 512, T5_WIDTH) and pooled.shape == (5, CLIP_WIDTH)
    assert (
        len(t5_calls.calls) == 1 and t5_calls.calls[0]["input_ids"].shape[0] == 3
    )  # cat, "", bird
    assert torch.equal(t5[0], t5[3])
    for i, prompt in enumerate(prompts):
        single_t5, single_pooled = encoders.encode(prompt)
        torch.testing.assert_close(t5[i : i + 1], single_t5, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pooled[i : i + 1], single_pooled, rtol=1e-5, atol=1e-5)


def test_batches_are_split_by_batch_size(encoders):
    encoders.batch_size = 2
    t5_calls = ForwardCounter(encoders._t5)
    encoders.encode_many([f"prompt {i}" for i in range(5)])
    assert [c["input_ids"].shape[0] for c in t5_calls.calls] == [2, 2, 1]


def test_lru_cache_evicts_the_least_recently_used_prompt(root):
    encoders = FluxTextEncoders.load(FluxFiles.from_root(root), CPU, torch.float32, cache_size=2)
    encoders.encode("a")
    encoders.encode("b")
    encoders.encode("a")  # "b" is now the least recently used
    encoders.encode("c")
    assert encoders.cached_prompts == ["a", "c"]
    calls = ForwardCounter(encoders._t5)
    encoders.encode("a")
    encoders.encode("b")
    assert len(calls.calls) == 1


def test_cache_can_be_disabled(root):
    encoders = FluxTextEncoders.load(FluxFiles.from_root(root), CPU, torch.float32, cache_size=0)
    calls = ForwardCounter(encoders._t5)
    encoders.encode("a")
    encoders.encode("a")
    assert len(calls.calls) == 2 and encoders.cached_prompts == []


def test_bfloat16_on_request(root):
    encoders = FluxTextEncoders.load(FluxFiles.from_root(root), CPU, torch.bfloat16)
    t5, pooled = encoders.encode("a cat")
    assert t5.dtype == pooled.dtype == torch.bfloat16
    assert next(encoders._t5.parameters()).dtype == torch.bfloat16


def test_offload_keeps_encoders_on_cpu_between_encodes_with_same_results(root, encoders):
    offloaded = FluxTextEncoders.load(FluxFiles.from_root(root), CPU, torch.float32, offload=True)
    assert all(
        torch.equal(a, b)
        for a, b in zip(offloaded.encode("a cat"), encoders.encode("a cat"), strict=True)
    )
    assert next(offloaded._t5.parameters()).device == CPU


def test_free_keeps_cached_prompts_and_refuses_new_ones(encoders):
    cached = encoders.encode("a cat")
    encoders.free()
    assert encoders.is_freed
    assert torch.equal(encoders.encode("a cat")[0], cached[0])
    with pytest.raises(RuntimeError, match="free"):
        encoders.encode("a dog")


def test_flux_snapshot_layout_loads_the_same_encoders(root, snapshot_root, encoders):
    files = FluxFiles.from_root(snapshot_root)
    assert files.t5.name == "text_encoder_2" and files.clip.name == "text_encoder"
    snapshot = FluxTextEncoders.load(files, CPU, torch.float32)
    for prompt in ("", "Ghibli style, a girl with an umbrella"):
        assert all(
            torch.equal(a, b)
            for a, b in zip(snapshot.encode(prompt), encoders.encode(prompt), strict=True)
        )


def test_random_tiny_encoders_need_no_files():
    encoders = FluxTextEncoders.random("tiny", CPU, torch.float32, max_sequence_length=32)
    t5, pooled = encoders.encode("a cat")
    assert t5.shape == (1, 32, T5_WIDTH) and pooled.shape == (1, CLIP_WIDTH)
    with pytest.raises(ValueError, match="size"):
        FluxTextEncoders.random("huge")


def test_random_full_size_is_t5_xxl_and_clip_l():
    """Built on the meta device (no memory): the parameter counts of the released encoders."""
    encoders = FluxTextEncoders.random("full", torch.device("meta"), torch.bfloat16)
    assert sum(p.numel() for p in encoders._t5.parameters()) == 4_762_310_656
    assert sum(p.numel() for p in encoders._clip.parameters()) == 123_060_480
    assert next(encoders._t5.parameters()).dtype == torch.bfloat16


# ---------------------------------------------------------------------------------- errors
def test_missing_folder_names_the_folder(root, tmp_path):
    files = FluxFiles.from_root(root)
    absent = tmp_path / "t5-absent"
    with pytest.raises(WeightFileError, match="t5-absent: T5 encoder folder does not exist"):
        FluxTextEncoders.load(
            FluxFiles(
                files.transformer, files.vae, absent, absent, files.clip, files.clip_tokenizer
            ),
            CPU,
            torch.float32,
        )


def test_corrupt_model_file_names_the_folder(root, tmp_path):
    broken = tmp_path / "clip"
    shutil.copytree(root / "clip", broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 3])
    files = FluxFiles.from_root(root)
    with pytest.raises(WeightFileError) as err:
        FluxTextEncoders.load(
            FluxFiles(files.transformer, files.vae, files.t5, files.t5_tokenizer, broken, broken),
            CPU,
            torch.float32,
        )
    assert str(broken) in str(err.value) and "CLIP text encoder" in str(err.value)


def test_wrong_kind_of_folder_names_the_folder(root):
    files = FluxFiles.from_root(root)
    with pytest.raises(
        WeightFileError, match="siglip: T5 encoder checkpoint lacks weights: encoder"
    ):
        FluxTextEncoders.load(
            FluxFiles(
                files.transformer,
                files.vae,
                root / "siglip",
                files.t5_tokenizer,
                files.clip,
                files.clip_tokenizer,
            ),
            CPU,
            torch.float32,
        )


def test_checkpoint_with_other_shapes_names_the_weights(root, tmp_path):
    files = FluxFiles.from_root(root)
    small = tmp_path / "t5-small-vocab"
    shutil.copytree(root / "t5", small)
    config = (small / "config.json").read_text().replace('"vocab_size": 500', '"vocab_size": 100')
    (small / "config.json").write_text(config)
    with pytest.raises(
        WeightFileError, match=r"t5-small-vocab: cannot load T5 encoder.*mismatched"
    ):
        FluxTextEncoders.load(
            FluxFiles(files.transformer, files.vae, small, small, files.clip, files.clip_tokenizer),
            CPU,
            torch.float32,
        )


def test_tokenizer_larger_than_the_embedding_table_is_refused(root, tmp_path):
    """A tokenizer emitting ids past the model's table would crash mid-batch: refused at load."""
    from transformers import T5Config

    folder = tmp_path / "t5-100-tokens"
    T5EncoderModel(T5Config(**TINY.t5, vocab_size=100)).save_pretrained(folder)
    files = FluxFiles.from_root(root)
    with pytest.raises(
        WeightFileError, match=r"T5 tokenizer has 500 tokens but the model in .*t5-100-tokens"
    ):
        FluxTextEncoders.load(
            FluxFiles(
                files.transformer,
                files.vae,
                folder,
                files.t5_tokenizer,
                files.clip,
                files.clip_tokenizer,
            ),
            CPU,
            torch.float32,
        )


def test_bad_prompts_are_refused(encoders):
    with pytest.raises(TypeError, match="must be a str"):
        encoders.encode_many(["ok", None])
    with pytest.raises(ValueError, match="non-empty list"):
        encoders.encode_many([])
    with pytest.raises(ValueError, match="non-empty list"):
        encoders.encode_many("a cat")
