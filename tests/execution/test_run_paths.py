"""Where a run reads and writes: `--run` is one folder name, outputs written inside a manifest
folder never come back as input, and a manifest spelled another way is the same input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.run_helpers import parquet_bytes, run_config
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.errors import ConfigError, ExitCode
from pipeline.execution.driver import Runner
from pipeline.manifests import ManifestError
from pipeline.storage import StorageSettings


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    folder = tmp_path / "catalog"
    folder.mkdir()
    (folder / "a.parquet").write_bytes(parquet_bytes([{"id": "a", "prompt": "p"}]))
    return folder


@pytest.mark.parametrize("name", ["../../ESCAPED", "a/b", "..", ".", "/abs", "x\\y"])
def test_a_run_name_that_is_a_path_is_refused_in_one_line(catalog: Path, tmp_path: Path, name: str):
    result = CliRunner().invoke(
        app, ["plan", str(catalog), "--out", str(tmp_path / "out"), "--run", name]
    )
    assert result.exit_code == ExitCode.USAGE
    assert "--run: must be a single folder name" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "ESCAPED").exists()


def test_the_config_door_refuses_it_too(tiny_weights: Path, tmp_path: Path):
    with pytest.raises((ConfigError, ValueError)):
        run_config(str(tmp_path), str(tmp_path / "out"), tiny_weights, run="../x")


def test_outputs_inside_the_manifest_folder_are_never_read_as_input(
    catalog: Path, tiny_weights: Path
):
    out = catalog / "out"
    records = parquet_bytes([{"id": "a", "key": "a", "status": "ok"}])
    for run in ("test", "an-older-run"):  # this run's folder, and another run's
        (out / run / "captions").mkdir(parents=True)
        (out / run / "run.json").write_text('{"layout": 2}')
        (out / run / "part-000000.parquet").write_bytes(records)
        (out / run / "captions" / "000000.parquet").write_bytes(records)
    (out / "test" / "part-000001.parquet").write_bytes(records)
    plan = Runner(run_config(str(catalog), str(out), tiny_weights), StorageSettings()).plan()
    assert [s.uri for s in plan.shards] == [str(catalog.resolve() / "a.parquet")]
    only_outputs = run_config(str(out), str(out), tiny_weights)
    with pytest.raises(ManifestError, match="is an output of a run"):
        Runner(only_outputs, StorageSettings()).plan()


def test_a_manifest_spelled_another_way_is_the_same_input(
    catalog: Path, tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    link = tmp_path / "link"
    os.symlink(catalog, link)
    monkeypatch.chdir(tmp_path)
    spellings = [
        "catalog/a.parquet",
        str(catalog / "a.parquet"),
        "./catalog//a.parquet",
        str(link / "a.parquet"),
        f"file://{link}/a.parquet",
        "link",
    ]
    out = str(tmp_path / "out")
    plans = [Runner(run_config(s, out, tiny_weights), StorageSettings()).plan() for s in spellings]
    assert {tuple(s.uri for s in p.shards) for p in plans} == {
        (str(catalog.resolve() / "a.parquet"),)
    }
    assert len({p.fingerprint for p in plans}) == 1
