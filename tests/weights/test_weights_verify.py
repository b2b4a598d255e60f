"""`restyle weights verify` catches a truncated file, a renamed key, a wrong shape, a missing file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.errors import ExitCode
from pipeline.weights.tiny import MARKER
from pipeline.weights.verify import verify_root

pytestmark = pytest.mark.usefixtures("private_caches")  # caches in tmp, see conftest


@pytest.fixture
def root(tiny_weights: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny build to damage."""
    return Path(shutil.copytree(tiny_weights, tmp_path / "weights"))


def _row(report, path: str):
    return next(row for row in report.rows if row.path == path)


def _rewrite(path: Path, change) -> None:
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def test_an_intact_tiny_build_verifies_clean(root: Path):
    report = verify_root(root)
    assert report.ok, report.problems()
    assert report.models == ["uso", "omniconsistency"] and report.preset == "tiny"
    assert _row(report, "flux1-dev/flux1-dev.safetensors").header == "ok"
    assert _row(report, "uso/dit_lora.safetensors").sha256 == "ok"  # against tiny_build.json
    assert _row(report, "t5/").header == "ok"  # the folder against its config.json
    assert {"clip/", "siglip/"} <= {row.path for row in report.rows}


def test_a_truncated_file_is_caught(root: Path):
    lora = root / "uso" / "dit_lora.safetensors"
    os.truncate(lora, lora.stat().st_size - 1000)
    report = verify_root(root)
    row = _row(report, "uso/dit_lora.safetensors")
    assert not report.ok and row.header == "FAIL" and row.sha256 == "FAIL"
    text = "; ".join(row.problems)
    assert f"{lora.stat().st_size} bytes, {MARKER} says {lora.stat().st_size + 1000}" in text
    assert "not a readable safetensors file" in text
    assert all(r.ok for r in report.rows if r is not row)


def test_a_renamed_key_is_caught(root: Path):
    old, new = "decoder.mid.attn_1.q.weight", "decoder.mid.attn_1.query.weight"
    _rewrite(root / "flux1-dev" / "ae.safetensors", lambda t: t.__setitem__(new, t.pop(old)))
    row = _row(verify_root(root, check_hashes=False), "flux1-dev/ae.safetensors")
    assert row.header == "FAIL"
    assert f"missing tensors: {old}" in row.problems
    assert f"unexpected tensors: {new}" in row.problems


def test_a_wrong_shape_is_caught(root: Path):
    key = "feature_embedder.mid_projection.weight"

    def widen(tensors: dict) -> None:
        tensors[key] = torch.zeros(
            tensors[key].shape[0] + 1, tensors[key].shape[1], dtype=tensors[key].dtype
        )

    _rewrite(root / "uso" / "projector.safetensors", widen)
    row = _row(verify_root(root, ["uso"], check_hashes=False), "uso/projector.safetensors")
    assert row.header == "FAIL"
    assert any(p.startswith("wrong shapes: " + key) for p in row.problems), row.problems


def test_a_wrong_lora_shape_is_caught_whatever_the_rank(root: Path):
    key = "single_transformer_blocks.1.attn.processor.k_loras.0.up.weight"
    _rewrite(
        root / "omniconsistency" / "OmniConsistency.safetensors",
        lambda t: t.__setitem__(key, t[key][:-2].clone()),
    )
    row = _row(
        verify_root(root, ["omniconsistency"], check_hashes=False),
        "omniconsistency/OmniConsistency.safetensors",
    )
    assert any(key in p and "wrong shapes" in p for p in row.problems), row.problems


def test_a_renamed_key_inside_a_transformers_folder_is_caught(root: Path):
    old = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    _rewrite(root / "t5" / "model.safetensors", lambda t: t.__setitem__("encoder.wo", t.pop(old)))
    report = verify_root(root, ["uso"], check_hashes=False)
    assert _row(report, "t5/model.safetensors").header == "ok"  # the header itself parses
    folder = _row(report, "t5/")
    assert folder.header == "FAIL"
    assert folder.problems == [f"parameters missing from the files: {old}"]


def test_a_missing_file_is_named(root: Path):
    (root / "t5" / "spiece.model").unlink()
    (root / "style_loras" / "Ghibli_rank128_bf16.safetensors").unlink()
    report = verify_root(root, check_hashes=False)
    assert _row(report, "t5/spiece.model").problems == [f"missing (expected by {MARKER})"]
    assert _row(report, "style_loras/Ghibli_rank128_bf16.safetensors").problems == [
        f"missing (expected by {MARKER})"
    ]


def test_a_missing_component_names_what_the_loaders_look_for(root: Path):
    shutil.rmtree(root / "siglip")
    report = verify_root(root, ["uso"], check_hashes=False)
    layout = _row(report, "(uso layout)")
    assert "SigLIP folder not found" in layout.problems[0]


def test_real_weights_are_held_against_the_registry(tmp_path: Path, tiny_weights: Path):
    """A file at a published file's place that is not the published file fails on size, sha256
    and architecture (no tiny marker, no flux_config.json: the release is expected)."""
    root = tmp_path / "real"
    (root / "flux1-dev").mkdir(parents=True)
    shutil.copy(
        tiny_weights / "flux1-dev" / "ae.safetensors", root / "flux1-dev" / "ae.safetensors"
    )
    report = verify_root(root, ["uso"])
    assert report.preset == "release"
    row = _row(report, "flux1-dev/ae.safetensors")
    text = "; ".join(row.problems)
    assert "registry says 335304388 (truncated or a different file)" in text
    assert "registry says afc8e28272cd..." in text
    assert "missing tensors: " in text and "wrong shapes: " in text  # tiny VAE vs FLUX.1-dev's
    assert _row(report, "uso/projector.safetensors").problems == ["missing (expected by registry)"]


def test_verify_prints_a_table_and_fails_on_a_bad_file(root: Path):
    os.truncate(root / "uso" / "projector.safetensors", 100)
    result = CliRunner().invoke(
        app, ["weights", "verify", str(root), "--model", "uso"], env={"COLUMNS": "250"}
    )
    assert result.exit_code == ExitCode.CHECK_FAILED, result.output
    assert "uso/projector.safetensors" in result.output and "truncated" in result.output
    assert "1 with problems" in result.output
    good = CliRunner().invoke(
        app, ["weights", "verify", str(root), "--model", "omniconsistency", "--no-hash"]
    )
    assert good.exit_code == 0 and "all ok" in good.output
