"""A manifest's style_lora reference resolves to a file of the weights root's style LoRA folder,
and what counts as a shipped OmniConsistency style is the model's own decision."""

from __future__ import annotations

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
