"""The light commands an operator and cron call all day (`status`, `plan`, `manifest validate`,
`weights list`, `--help`) never import torch or Ray: they answer fast, and their exit code is
always the documented one (torch and pyarrow in one interpreter could abort it at exit: 134)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.run_helpers import parquet_bytes, uso_rows, write_images

from pipeline.errors import ExitCode
from pipeline.outputs.commit import ItemRecord, ShardPaths, ShardStats, ShardWriter, sample_key
from pipeline.outputs.layout import LAYOUT_VERSION
from pipeline.outputs.run_state import RunState
from pipeline.storage import Storage

RESTYLE = [sys.executable, "-m", "pipeline.cli"]


def committed_run(folder: Path, statuses: list[str]) -> Path:
    """A run folder as a run leaves it: run.json and one commit whose records have `statuses`
    (written by the real commit code, no Ray needed)."""
    storage = Storage()
    run = folder / "uso-test"
    RunState(storage, str(run)).write_run_json(
        {
            "layout": LAYOUT_VERSION,
            "fingerprint": "f" * 16,
            "fingerprint_fields": {},
            "config": {"weights": "tiny"},
            "random_weights": True,
            "input_shards": ["in/part-0.parquet"],
        }
    )
    stats = ShardStats(0, "in/part-0.parquet", "uso-test", "f" * 16, started_at=time.time())
    writer = ShardWriter(storage, ShardPaths(str(run), 0), stats)
    for row, status in enumerate(statuses):
        key = sample_key(f"item-{row}")
        if status == "ok":
            writer.add_sample(key, {"png": b"png", "txt": b"caption", "json": b"{}"})
        writer.add_record(ItemRecord(f"item-{row}", key, status, input_row=row))
    writer.commit()
    return run


def light_call(args: list[str], cwd: Path) -> tuple[int, list[str], str]:
    """Run one command in a fresh interpreter; (exit code, heavy modules imported, stderr)."""
    code = (
        "import sys\nfrom pipeline.cli.main import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as done:\n"
        "    heavy = sorted(m for m in ('torch', 'ray', 'webdataset') if m in sys.modules)\n"
        "    print('RESULT', int(done.code or 0), ','.join(heavy) or '-')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )
    last = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT")][-1]
    _, code, heavy = last.split(" ")
    return int(code), [] if heavy == "-" else heavy.split(","), result.stderr


def test_status_plan_validate_weights_list_and_help_never_import_torch_or_ray(
    tmp_path, tiny_weights
):
    run = committed_run(tmp_path, ["ok", "ok", "bad_input"])
    images = write_images(tmp_path / "images", 2)
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(parquet_bytes(uso_rows("a", 2, str(images[0]), str(images[1]))))
    calls = {
        "status": (["status", str(run), "--json"], ExitCode.ITEMS_FAILED),
        "plan": (
            ["plan", str(manifest), "--out", str(tmp_path / "out"), "--weights", str(tiny_weights)],
            ExitCode.OK,
        ),
        "manifest validate": (["manifest", "validate", str(manifest), "--json"], ExitCode.OK),
        "weights list": (["weights", "list", "--json"], ExitCode.OK),
        "--help": (["--help"], ExitCode.OK),
        "run --help": (["run", "--help"], ExitCode.OK),
    }
    for name, (args, expected) in calls.items():
        code, heavy, stderr = light_call(args, tmp_path)
        assert (name, code, heavy) == (name, expected, []), stderr


@pytest.mark.slow
def test_status_json_50_times_always_exits_with_the_documented_code(tmp_path):
    """Cron, KubeRay and CI read the exit code: it must never be a crash code after the answer."""
    run = committed_run(tmp_path, ["ok", "bad_input", "ok", "skipped"])
    codes = []
    for _ in range(50):
        result = subprocess.run(
            [*RESTYLE, "status", str(run), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "120"},
        )
        codes.append(result.returncode)
        status = json.loads(result.stdout)
        assert (status["ok"], status["failed"], status["skipped"]) == (2, 1, 1)
        assert status["exit_code"] == ExitCode.ITEMS_FAILED
    assert codes == [ExitCode.ITEMS_FAILED] * 50
