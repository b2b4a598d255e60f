"""Run folders written before layout 2: every command that reads or extends them refuses them
in one line naming `restyle migrate`, and `restyle migrate` turns them into a layout-2 folder
that status and every reader accept, references made absolute. Repeating it changes nothing."""

from __future__ import annotations

import json
import tarfile

import datasets
import jsonschema
import pyarrow.parquet as pq
import pytest
from support.layout_v1 import write_v1_run
from support.run_folders import status_of
from support.run_helpers import run_config
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.errors import ExitCode
from pipeline.execution.driver import Runner
from pipeline.jobs.caption import caption_plan
from pipeline.outputs.layout import LayoutError
from pipeline.outputs.provenance import PROVENANCE_SCHEMA
from pipeline.outputs.records import RECORD_SCHEMA
from pipeline.outputs.run_state import RunState
from pipeline.outputs.scores import SCORE_SCHEMA
from pipeline.storage import Storage, StorageSettings
from pipeline.storage.parquet import table_to_bytes


@pytest.fixture
def old_run(tmp_path, monkeypatch):
    """A layout-1 run made from `tmp_path/start`, then the operator moves elsewhere."""
    start = tmp_path / "start"
    start.mkdir()
    run = write_v1_run(start)
    monkeypatch.chdir(tmp_path)
    return start, run


def test_an_old_run_is_refused_with_the_way_to_migrate_it(old_run):
    start, run = old_run
    result = CliRunner().invoke(app, ["status", str(run)])
    assert result.exit_code == ExitCode.CANNOT_START  # an input that cannot be used as it is
    assert "layout 1" in result.output and f"restyle migrate {run}" in result.output
    state = RunState(Storage(), str(run))
    with pytest.raises(LayoutError, match="restyle migrate"):  # resume and --retry-failed
        state.claim({"fingerprint": "f00d", "config": {}})
    with pytest.raises(LayoutError, match="restyle migrate"):  # what retries and status read
        state.read_run_json()
    config = run_config(str(start / "manifests"), str(start / "out"), "tiny", run="old")
    with pytest.raises(LayoutError, match="restyle migrate"):  # plan, run, --retry-failed
        Runner(config, StorageSettings(), show_progress=False).plan()
    with pytest.raises(LayoutError, match="restyle migrate"):
        caption_plan(Storage(), str(run), "tiny")


def test_migrate_makes_an_old_run_a_layout_2_dataset(old_run, tmp_path):
    start, run = old_run
    # `restyle eval` had scored the old folder: its score files follow their commits.
    empty = SCORE_SCHEMA.empty_table()
    scores = {
        "part-000000.parquet": table_to_bytes(empty),
        "retry-01/part-000000.features.safetensors": b"r1",
    }
    for name, data in scores.items():
        (run / "scores" / name).parent.mkdir(parents=True, exist_ok=True)
        (run / "scores" / name).write_bytes(data)
    result = CliRunner().invoke(app, ["migrate", str(run), "--relative-to", str(start), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["shards"], report["retries"], report["samples"], report["captions"]) == (
        1,
        1,
        3,
        2,
    )
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    assert files == [
        "README.md",
        "captions",
        "captions/000000.parquet",
        "captions/000000.retry-01.parquet",
        "part-000000.parquet",
        "part-000000.retry-01.stats.json",
        "part-000000.retry-01.tar",
        "part-000000.stats.json",
        "part-000000.tar",
        "run.json",
        "scores",
        "scores/000000.parquet",
        "scores/000000.retry-01.features.safetensors",
    ]
    assert (run / "scores/000000.retry-01.features.safetensors").read_bytes() == b"r1"
    assert report["scores"] == 2
    status = status_of(run)
    assert (status["items"], status["ok"], status["retry_commits"], status["complete"]) == (
        3,
        3,
        1,
        True,
    )

    table = pq.read_table(run / "part-000000.parquet")
    assert table.schema == RECORD_SCHEMA
    records = {r["id"]: r for r in table.to_pylist()}
    assert records["b"]["output_key"] == f"{run}/part-000000.retry-01.tar#b"
    assert (records["b"]["retry"], records["b"]["attempts"]) == (1, 2)
    assert records["a"]["scores"] == {"clip_t": 0.3, "style": None}
    assert records["a"]["input_shard"] == str(start / "manifests" / "part-0.parquet")

    validator = jsonschema.Draft202012Validator(PROVENANCE_SCHEMA)
    for tar in ("part-000000.tar", "part-000000.retry-01.tar"):
        with tarfile.open(run / tar) as archive:
            for member in archive.getmembers():
                if member.name.endswith(".json"):
                    provenance = json.loads(archive.extractfile(member).read())
                    validator.validate(provenance)
                    # The run used the tiny preset: random weights, which layout 1 did not say.
                    assert provenance["random_weights"] is True
                    subject = next(i for i in provenance["inputs"] if i["role"] == "subject")
                    assert subject["uri"] == str(start / "images" / "img0.png")

    images = datasets.load_dataset(str(run), split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted(images["__key__"]) == ["a", "b", "c"]

    again = CliRunner().invoke(app, ["migrate", str(run), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["shards"] == 0
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == files
