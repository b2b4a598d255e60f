"""`limits.local_roots` confines the manifest files themselves, not only the images they name:
a local manifest (file, folder, glob, or a link out of an allowed folder) outside every root is
refused before it is read, in one line with the cannot-start code, by `run`, `plan` and
`manifest validate`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from support.run_helpers import parquet_bytes
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.config import InputLimits
from pipeline.errors import ExitCode
from pipeline.manifests import OutsideLocalRootsError, list_shards, validate_manifest
from pipeline.storage import Storage, StorageSettings


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """(allowed, elsewhere): a manifest in each; allowed/link.parquet points to elsewhere's."""
    allowed, elsewhere = tmp_path / "allowed", tmp_path / "elsewhere"
    for folder, item in ((allowed, "in"), (elsewhere, "out")):
        folder.mkdir()
        (folder / f"{item}.parquet").write_bytes(parquet_bytes([{"id": item, "prompt": "p"}]))
    return allowed, elsewhere


def test_manifests_outside_the_roots_are_refused_however_they_are_named(folders):
    allowed, elsewhere = folders
    storage = Storage(StorageSettings())
    limits = InputLimits(local_roots=(str(allowed),))
    assert [s.uri for s in list_shards(str(allowed), storage, limits=limits)] == [
        str(allowed / "in.parquet")
    ]
    os.symlink(elsewhere / "out.parquet", allowed / "link.parquet")
    for spec in (
        str(elsewhere / "out.parquet"),
        str(elsewhere),
        str(elsewhere / "*.parquet"),
        str(allowed / ".." / "elsewhere" / "out.parquet"),
        str(allowed),  # holds a link to a file outside
        str(allowed / "link.parquet"),
    ):
        with pytest.raises(OutsideLocalRootsError) as error:
            list_shards(spec, storage, limits=limits)
        message = str(error.value)
        assert "outside the allowed local roots" in message and str(allowed) in message
        assert "\n" not in message
    with pytest.raises(OutsideLocalRootsError):  # validate does not turn it into a finding
        validate_manifest(str(elsewhere), storage, limits=limits)
    assert len(list_shards(str(allowed), storage)) == 2  # no roots: anything readable


def test_run_plan_and_validate_refuse_it_in_one_line_with_the_cannot_start_code(
    folders, tmp_path: Path, tiny_weights: Path
):
    allowed, elsewhere = folders
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"limits": {"local_roots": [str(allowed)]}}))
    outside = str(elsewhere / "out.parquet")
    common = ["--out", str(tmp_path / "out"), "--weights", str(tiny_weights)]
    commands = {
        "run": ["run", outside, *common, "--config", str(config), "--no-progress"],
        "plan": ["plan", outside, *common, "--config", str(config)],
        "validate": ["manifest", "validate", outside, "--local-root", str(allowed)],
    }
    for name, args in commands.items():
        result = CliRunner().invoke(app, args)
        assert result.exit_code == ExitCode.CANNOT_START, (name, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "outside the allowed local roots" in lines[0], name
        assert outside in lines[0]
    assert not (tmp_path / "out").exists()  # nothing started
    inside = CliRunner().invoke(
        app, ["manifest", "validate", str(allowed), "--local-root", str(allowed)]
    )
    assert inside.exit_code == ExitCode.OK, inside.output
