"""A manifest's style_lora reference resolves to a file of the weights root's style LoRA folder,
and what counts as a shipped OmniConsistency style is the model's own decision."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pipeline.config import InputLimits
from pipeline.errors import ItemError, ItemStatus
from pipeline.models.omniconsistency.styles import shipped_file_name, style_name_of
from pipeline.models.weight_layout import STYLE_LORA_DIR
from pipeline.processing.style_loras import StyleLoraResolver
from pipeline.storage import Storage, StorageSettings


def resolver(root: Path, tmp_path: Path) -> StyleLoraResolver:
    return StyleLoraResolver(Storage(StorageSettings()), root, tmp_path / "cache")


@pytest.mark.parametrize(
    "reference, canonical",
    [
        ("Ghibli", "Ghibli"),
        ("ghibli", "Ghibli"),
        ("van gogh", "Van_Gogh"),
        ("3D_Chibi", "3D_Chibi"),
    ],
)
def test_a_shipped_style_name_finds_its_file_and_the_canonical_name(
    tiny_weights, tmp_path, reference, canonical
):
    lora = resolver(tiny_weights, tmp_path).resolve(reference, 0.5, "item-1")
    assert lora.path == tiny_weights / STYLE_LORA_DIR / shipped_file_name(canonical)
    assert (lora.name, lora.scale) == (canonical, 0.5)


def test_other_files_keep_the_reference_as_their_name(tiny_weights, tmp_path):
    root = tmp_path / "root"
    (root / STYLE_LORA_DIR).mkdir(parents=True)
    custom = root / STYLE_LORA_DIR / "My_Style_rank128_bf16.safetensors"  # not one of the 22
    shutil.copy(tiny_weights / STYLE_LORA_DIR / shipped_file_name("Ghibli"), custom)
    found = resolver(root, tmp_path).resolve("my style", None, "item-2")
    assert found.path == custom and found.name == "my style" and found.scale == 1.0
    example = tiny_weights / STYLE_LORA_DIR / "examples" / "Comic_kohya.safetensors"
    assert resolver(root, tmp_path).resolve(str(example), 1.0, "item-3").name == str(example)


def test_an_unknown_style_is_a_lora_error_naming_the_staged_ones(tiny_weights, tmp_path):
    with pytest.raises(ItemError) as error:
        resolver(tiny_weights, tmp_path).resolve("Cubism", 1.0, "item-4")
    assert error.value.kind == ItemStatus.LORA_ERROR
    assert "unknown style 'Cubism'" in str(error.value)
    assert shipped_file_name("Vector") in str(error.value)


def test_style_file_names_belong_to_the_model():
    assert shipped_file_name("Van_Gogh") == "Van_Gogh_rank128_bf16.safetensors"
    assert style_name_of(Path("x") / "Van_Gogh_rank128_bf16.safetensors") == "Van_Gogh"
    assert style_name_of("Comic_kohya.safetensors") == "Comic_kohya"


@pytest.mark.parametrize("name", ["loras/Ghibli.bin", "/abs/style.pt", "owner/repo/lora.ckpt"])
def test_pickle_lora_files_are_refused_as_pickle_never_as_hub_names(tmp_path, name):
    with pytest.raises(ItemError) as error:
        resolver(tmp_path, tmp_path).resolve(name, 1.0, "item-5")
    assert error.value.kind == ItemStatus.LORA_ERROR and "pickle format" in str(error.value)
    assert "'item-5'" in str(error.value) and "Hugging Face" not in str(error.value)


def test_a_lora_over_its_budget_or_outside_the_local_roots_is_that_items_error(
    tiny_weights, tmp_path
):
    example = tiny_weights / STYLE_LORA_DIR / "examples" / "Comic_kohya.safetensors"
    storage = Storage(StorageSettings())
    small = StyleLoraResolver(storage, None, tmp_path, InputLimits(max_lora_bytes=1000))
    with pytest.raises(ItemError) as error:
        small.resolve(str(example), 1.0, "item-6")
    assert "max_lora_bytes" in str(error.value) and str(example) in str(error.value)
    fenced = StyleLoraResolver(storage, None, tmp_path, InputLimits(local_roots=(str(tmp_path),)))
    with pytest.raises(ItemError) as error:
        fenced.resolve(str(example), 1.0, "item-6")
    assert "outside the allowed local roots" in str(error.value)


@pytest.fixture
def lora_hub(tiny_weights, monkeypatch):
    """A LocalHub serving a style LoRA in an open repo and in a gated one."""
    from support.hub_server import LocalHub

    data = (tiny_weights / STYLE_LORA_DIR / shipped_file_name("Ghibli")).read_bytes()
    server = LocalHub(
        {
            "org/loras": {"ghibli.safetensors": data, "README.md": b"a style"},
            "org/gated-loras": {"ghibli.safetensors": data},
        },
        gated={"org/gated-loras": {"accepted-token"}},
    ).start()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    try:
        yield server, data
    finally:
        server.stop()


def test_a_hub_lora_is_fetched_once_and_held_to_the_budget_before_download(
    lora_hub, tiny_weights, tmp_path
):
    server, data = lora_hub
    hub = resolver(tiny_weights, tmp_path)
    lora = hub.resolve("hf://org/loras/ghibli.safetensors", 0.8, "item-h1")
    assert lora.path.read_bytes() == data and lora.name == "hf://org/loras/ghibli.safetensors"
    # the repo alone: its first .safetensors file (the authors' demo), from the same cache
    assert hub.resolve("org/loras", 1.0, "item-h2").path.read_bytes() == data
    assert server.served[("org/loras", "ghibli.safetensors")] == 1

    storage = Storage(StorageSettings())
    small = StyleLoraResolver(
        storage, None, tmp_path / "small", InputLimits(max_lora_bytes=len(data) - 1)
    )
    with pytest.raises(ItemError) as error:
        small.resolve("hf://org/loras/ghibli.safetensors", 1.0, "item-h3")
    message = str(error.value)
    assert error.value.kind == ItemStatus.LORA_ERROR and "item-h3" in message
    assert f"is {len(data)} bytes on the Hub" in message and "not downloaded" in message
    assert server.served[("org/loras", "ghibli.safetensors")] == 1  # not a byte more


def test_hub_lora_failures_say_what_to_do(lora_hub, tiny_weights, tmp_path, monkeypatch):
    hub = resolver(tiny_weights, tmp_path)
    cases = {
        "org/gated-loras/ghibli.safetensors": "is gated and no Hugging Face token is set",
        "org/loras/missing.safetensors": "has no file missing.safetensors",
        "org/nothing/x.safetensors": "was not found on",
    }
    for reference, expected in cases.items():
        with pytest.raises(ItemError) as error:
            hub.resolve(reference, 1.0, "item-h4")
        message = str(error.value)
        assert error.value.kind == ItemStatus.LORA_ERROR and expected in message, message
        assert "\n" not in message
    monkeypatch.setenv("HF_TOKEN", "accepted-token")
    assert hub.resolve("org/gated-loras/ghibli.safetensors", 1.0, "item-h5").path.is_file()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(
        ItemError, match=re.escape("cannot reach the Hugging Face Hub at http://127.0.0.1:9")
    ):
        resolver(tiny_weights, tmp_path / "other").resolve("org/loras", 1.0, "item-h6")
