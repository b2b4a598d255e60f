"""The weight registry says, for each model, which published files it needs and where they go."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support.paths import REPO
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.errors import ExitCode, WeightsError
from pipeline.weights.inventory import component_of
from pipeline.weights.registry import MODELS, default_registry_path, load_registry, parse_registry

STYLES = {
    "3D_Chibi",
    "American_Cartoon",
    "Chinese_Ink",
    "Clay_Toy",
    "Fabric",
    "Ghibli",
    "Irasutoya",
    "Jojo",
    "LEGO",
    "Line",
    "Macaron",
    "Oil_Painting",
    "Origami",
    "Paper_Cutting",
    "Picasso",
    "Pixel",
    "Poly",
    "Pop_Art",
    "Rick_Morty",
    "Snoopy",
    "Van_Gogh",
    "Vector",
}


def test_every_model_maps_onto_the_layout_the_loaders_read():
    registry = load_registry()
    for model in MODELS:
        files = registry.files_for([model])
        assert files, model
        for entry in files:
            assert component_of(entry.dest) == entry.component, entry
    uso = {f.dest for f in registry.files_for(["uso"])}
    assert {
        "flux1-dev/flux1-dev.safetensors",
        "flux1-dev/ae.safetensors",
        "uso/dit_lora.safetensors",
        "uso/projector.safetensors",
        "siglip/model.safetensors",
        "siglip/preprocessor_config.json",
        "t5/model-00001-of-00002.safetensors",
        "t5/spiece.model",
        "clip/model.safetensors",
        "clip/vocab.json",
    } <= uso
    omni = registry.files_for(["omniconsistency"])
    styles = {f.dest for f in omni if f.component == "style_loras"}
    assert styles == {f"style_loras/{name}_rank128_bf16.safetensors" for name in STYLES}
    assert {f.path for f in omni if f.component == "style_loras"} == {
        f"LoRAs/{name}_rank128_bf16.safetensors" for name in STYLES
    }
    assert "omniconsistency/OmniConsistency.safetensors" in {f.dest for f in omni}
    assert not any(f.component == "siglip" for f in omni)


def test_hub_sources_are_the_published_repos():
    registry = load_registry()
    by_dest = registry.by_dest()
    assert by_dest["flux1-dev/flux1-dev.safetensors"].repo == "black-forest-labs/FLUX.1-dev"
    assert (
        by_dest["t5/model-00002-of-00002.safetensors"].path
        == "text_encoder_2/model-00002-of-00002.safetensors"
    )
    assert by_dest["clip/merges.txt"].path == "tokenizer/merges.txt"
    assert by_dest["uso/dit_lora.safetensors"].path == "uso_flux_v1.0/dit_lora.safetensors"
    assert by_dest["uso/projector.safetensors"].repo == "bytedance-research/USO"
    assert by_dest["siglip/model.safetensors"].repo == "google/siglip-so400m-patch14-384"
    flux = registry.repo("black-forest-labs/FLUX.1-dev")
    assert flux.gated and flux.licence_url == "https://huggingface.co/black-forest-labs/FLUX.1-dev"


def test_only_publicly_known_values_are_pinned():
    by_dest = load_registry().by_dest()
    transformer, vae = (
        by_dest["flux1-dev/flux1-dev.safetensors"],
        by_dest["flux1-dev/ae.safetensors"],
    )
    assert (transformer.size, transformer.sha256) == (
        23802932552,
        "4610115bb0c89560703c892c59ac2742fa821e60ef5871b33493ba544683abd7",
    )
    assert (vae.size, vae.sha256) == (
        335304388,
        "afc8e28272cd15db3919bacdb6918ce9c1ed22e96cb12c4d5ed0fba823529e38",
    )
    pinned = {dest for dest, f in by_dest.items() if f.sha256}
    assert pinned == {"flux1-dev/flux1-dev.safetensors", "flux1-dev/ae.safetensors"}
    assert by_dest["uso/dit_lora.safetensors"].size is None  # unknown: left empty, never guessed


def test_the_weights_folder_shows_the_one_packaged_registry():
    shipped = default_registry_path()
    assert (
        shipped.is_file()
        and shipped.parent.name == "weights"
        and shipped.parent.parent.name == "pipeline"
    )
    linked = REPO / "weights" / "registry.toml"
    assert linked.resolve() == shipped.resolve()


def test_a_built_wheel_carries_the_registry(tmp_path: Path):
    """Installed non-editable, restyle still reads its registry (package data)."""
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copytree(
        REPO / "pipeline", source / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    readme = REPO / "README.md"
    (source / "README.md").write_text(readme.read_text() if readme.exists() else "restyle\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        timeout=300,
    )
    wheel = next((tmp_path / "dist").glob("restyle-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        assert "pipeline/weights/registry.toml" in archive.namelist()
        packed = archive.read("pipeline/weights/registry.toml")
    assert packed == default_registry_path().read_bytes()


def _minimal(**file_overrides) -> dict:
    entry = {
        "component": "uso_projector",
        "repo": "o/r",
        "path": "p.safetensors",
        "dest": "uso/projector.safetensors",
        **file_overrides,
    }
    return {
        "format": 1,
        "models": {
            "uso": {"components": ["uso_projector"]},
            "omniconsistency": {"components": ["uso_projector"]},
        },
        "files": [entry],
    }


@pytest.mark.parametrize(
    "data, message",
    [
        (_minimal(component="vae"), "files[0]: unknown component 'vae'"),
        (_minimal(sha256="ABC"), "files[0]: sha256 must be 64 lowercase hex"),
        (_minimal(size=-1), "files[0]: size must be a positive number"),
        (_minimal(dest="../outside.safetensors"), "must stay inside the weights root"),
        (_minimal(dest="style_loras/{name}.safetensors"), "use {name} but the entry has no 'each'"),
        (_minimal(each=["a", "b"], size=10), "an 'each' entry stands for several files"),
        (_minimal(colour="blue"), "files[0]: unknown keys ['colour']"),
        ({**_minimal(), "format": 2}, "format must be 1"),
        ({**_minimal(), "files": _minimal()["files"] * 2}, "listed twice"),
        (
            {**_minimal(), "models": {"uso": {"components": ["uso_projector"]}}},
            "no entry for models",
        ),
    ],
)
def test_a_broken_registry_names_the_file_and_the_entry(data: dict, message: str):
    with pytest.raises(WeightsError, match=r"weight registry my.toml: ") as caught:
        parse_registry(data, "my.toml")
    assert message in str(caught.value)


def test_a_registry_of_ones_own_replaces_the_shipped_one(tmp_path: Path, monkeypatch):
    own = tmp_path / "pinned.toml"
    own.write_text(
        default_registry_path()
        .read_text()
        .replace(
            '[repos."bytedance-research/USO"]\nrevision = "main"',
            '[repos."bytedance-research/USO"]\nrevision = "0123456789abcdef0123456789abcdef01234567"',
        )
    )
    monkeypatch.setenv("RESTYLE_WEIGHTS_REGISTRY", str(own))
    registry = load_registry()
    assert registry.source == str(own)
    assert registry.repo("bytedance-research/USO").revision.startswith("0123")
    monkeypatch.setenv("RESTYLE_WEIGHTS_REGISTRY", str(tmp_path / "absent.toml"))
    with pytest.raises(WeightsError, match=r"absent.toml: cannot read it"):
        load_registry()


def test_weights_list_prints_the_files_of_a_model():
    result = CliRunner().invoke(app, ["weights", "list", "omniconsistency"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "Van_Gogh_rank128_bf16.safetensors" in result.output
    assert "showlab/OmniConsistency" in result.output
    assert "siglip" not in result.output
    bad = CliRunner().invoke(app, ["weights", "list", "sdxl"])
    assert bad.exit_code == ExitCode.USAGE
    assert "models: must be one of uso, omniconsistency, all, got 'sdxl'" in bad.output
