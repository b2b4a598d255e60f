"""A run on broken weights fails before its first item, on the driver, in one line naming the
file: the checks `restyle weights verify` makes. Pickle files are never loaded, not even through
torch's weights-only unpickler."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from support.run_helpers import parquet_bytes, run_config
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.errors import ExitCode, StartError
from pipeline.execution.driver import Runner
from pipeline.execution.pool import _reason
from pipeline.storage import StorageSettings

pytestmark = pytest.mark.usefixtures("private_caches")


def _truncate(root: Path) -> str:
    lora = root / "uso" / "dit_lora.safetensors"
    os.truncate(lora, lora.stat().st_size - 1000)
    return "uso/dit_lora.safetensors"


def _empty(root: Path) -> str:
    (root / "flux1-dev" / "ae.safetensors").write_bytes(b"")
    return "flux1-dev/ae.safetensors"


def _rename_tensor(root: Path) -> str:
    path = root / "flux1-dev" / "ae.safetensors"
    tensors = load_file(path)
    tensors["decoder.mid.attn_1.query.weight"] = tensors.pop("decoder.mid.attn_1.q.weight")
    save_file(tensors, path)
    return "flux1-dev/ae.safetensors"


def _pickle_only(root: Path) -> str:
    t5 = root / "t5"
    torch.save(load_file(t5 / "model.safetensors"), t5 / "pytorch_model.bin")
    (t5 / "model.safetensors").unlink()
    return "t5/model.safetensors"


@pytest.fixture
def manifest(tmp_path: Path) -> str:
    path = tmp_path / "m.parquet"
    path.write_bytes(parquet_bytes([{"id": "a", "prompt": "p"}]))
    return str(path)


@pytest.mark.parametrize("damage", [_truncate, _empty, _rename_tensor, _pickle_only])
def test_broken_weights_stop_the_run_at_plan_time_naming_the_file(
    tiny_weights: Path, tmp_path: Path, manifest: str, damage
):
    root = Path(shutil.copytree(tiny_weights, tmp_path / "weights"))
    named = damage(root)
    runner = Runner(run_config(manifest, str(tmp_path / "out"), root), StorageSettings())
    with pytest.raises(StartError) as error:
        runner.check_weights(runner.plan())  # what run, --retry-failed and plan do first
    message = str(error.value)
    assert message.startswith("cannot start: weights") and named in message
    assert "\n" not in message and "restyle weights verify" in message


def test_the_command_line_says_it_in_one_line_with_the_cannot_start_code(
    tiny_weights: Path, tmp_path: Path, manifest: str
):
    root = Path(shutil.copytree(tiny_weights, tmp_path / "weights"))
    _truncate(root)
    result = CliRunner().invoke(
        app,
        ["run", manifest, "--out", str(tmp_path / "out"), "--weights", str(root), "--run", "r"],
    )
    assert result.exit_code == ExitCode.CANNOT_START
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "uso/dit_lora.safetensors" in lines[0], result.output
    assert not (tmp_path / "out" / "r").exists()  # refused before anything was written


def test_a_start_error_crosses_process_boundaries_as_one_plain_line():
    error = StartError("cannot start: weights /w: t5/model.safetensors: missing")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    ray_text = (
        "The actor died because of an error raised in its creation task, "
        "ray::StylizeActor.__init__()\n  File x, line 3\n"
        "pipeline.errors.StartError: WeightFileError: /w/t5: cannot load T5\n"
    )
    assert _reason(RuntimeError(ray_text)) == "WeightFileError: /w/t5: cannot load T5"
