"""The one-shot device check works before any GPU is lent: its CPU mode runs every section and
writes the JSON and markdown a GPU run writes, a deadline stops it cleanly with what it measured,
and it refuses bad sections and missing packages before measuring anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

from check.plan import LABELS, parse_only
from check.report import Measurement, Report, markdown

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
MEASUREMENT_KEYS = set(Measurement("s", "m", "c").__dict__)


def run_check(out: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", "--size", "small", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.mark.slow
def test_the_cpu_mode_runs_every_section_and_writes_the_gpu_report_shape(tmp_path: Path):
    done = run_check(tmp_path, "--deadline-s", "1200")
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["check"]["status"] == "complete" and data["check"]["stopped_during"] is None
    assert data["hardware"]["matmul_peak_tflops"] > 0
    assert data["hardware"]["matmul_dtype"] == "float32"  # what the models compute in on a CPU
    assert {row["backend"] for row in data["attention"]} == {"cudnn", "flash", "efficient", "math"}
    assert any(row.get("fastest_exact") for row in data["attention"])
    rows = data["measurements"]
    assert all(set(row) == MEASUREMENT_KEYS and row["status"] == "ok" for row in rows), rows
    seen = {(row["section"], row["model"], row["config"]) for row in rows}
    for model in ("uso", "omniconsistency"):
        for section, config in (
            ("1 eager", "bf16"),
            ("5 batch 2", "bf16"),
            ("2 compiled", "bf16 compiled"),
            ("3 fp8", "fp8 compiled"),
            ("4 low VRAM", "fp8 offload"),
        ):
            assert (section, model, config) in seen
    flux = "flux (diffusers FluxPipeline)"
    assert {("6 anchor", flux, "bf16"), ("6 anchor", flux, "bf16 compiled")} <= seen
    for row in rows:
        if row["model"] != flux and row["section"] != "7 shard":
            assert row["tflop_per_image"] > 0 and row["fraction_of_peak"] > 0
            assert "time_vs_flux_bf16" in row["extra"]
    shard = next(row for row in rows if row["section"] == "7 shard")
    assert 0 < shard["extra"]["model_busy"] <= 1
    assert len(data["goals"]) == 7 and all(goal["met"] is None for goal in data["goals"])
    table = (tmp_path / "gpu_check.md").read_text()
    assert table == markdown(data)
    assert table.count("\n| ") >= len(rows) + 2


def test_the_deadline_stops_the_check_cleanly_with_what_it_measured(tmp_path: Path):
    done = run_check(tmp_path, "--only", "1,7", "--deadline-s", "4", "--min-start-s", "0")
    assert done.returncode == 3, done.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["check"]["status"] == "deadline"
    assert data["hardware"]["matmul_peak_tflops"] > 0  # measured before the deadline
    statuses = [row["status"] for row in data["measurements"]]
    assert statuses and statuses[-1] in ("stopped: deadline", "skipped: deadline")
    assert "status **deadline**" in (tmp_path / "gpu_check.md").read_text()


def test_bad_sections_are_refused_before_anything_runs(tmp_path: Path):
    done = run_check(tmp_path, "--only", "1,warp")
    assert done.returncode == 2
    assert "unknown section 'warp'" in done.stderr
    assert not (tmp_path / "gpu_check.json").exists()


def test_sections_are_named_by_number_or_name():
    assert parse_only("1, 3,anchor") == {"eager", "fp8", "anchor"}
    assert parse_only(None) == set(LABELS)


def test_the_report_is_on_disk_after_every_measurement(tmp_path: Path):
    report = Report(tmp_path, {"size": "small", "deadline_s": 10})
    report.add(Measurement("1 eager", "uso", "bf16").finish([2.0, 4.0], 8e12, 1e12))
    data = json.loads(report.json_path.read_text())
    [row] = data["measurements"]
    assert (row["s_per_image"], row["images_per_hour"], row["tflop_per_image"]) == (3.0, 1200, 8)
    assert row["fraction_of_peak"] == pytest.approx(8 / 3 / 1, abs=1e-3)
    assert "| 1 eager | uso | bf16 | 3 |" in report.markdown_path.read_text()
