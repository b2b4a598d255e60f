"""USO computes what the authors' inference computes: every parity case folder passes.

Cases are found by folder (any `<case>/case.json` beside `weights/`), so held-back cases added
to tests/fixtures/parity/uso run here too. The entry point `python -m pipeline.parity` is the
acceptance command; it must exit 0 only within tolerance.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from support.paths import FIXTURES, REPO

from pipeline.parity.uso import run_case

PARITY = FIXTURES / "parity" / "uso"
CASES = sorted(p.parent for p in PARITY.glob("*/case.json"))


def test_there_are_cases():
    assert len(CASES) >= 2


@pytest.mark.parametrize("case_dir", CASES, ids=[c.name for c in CASES])
def test_case_passes_within_tolerance(case_dir: Path):
    report = run_case(case_dir)
    assert not report.missing, f"expected tensors not produced: {report.missing}"
    assert report.passed, report.format()
    names = {c.name for c in report.checks}
    assert {"velocities", "final_latent", "decoded_float", "image_uint8", "sigmas"} <= names


def test_entry_point_prints_diffs_and_exits_zero():
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.parity", *map(str, CASES)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == len(CASES)
    assert "max|diff|" in result.stdout


def test_entry_point_fails_on_a_wrong_expectation(tmp_path: Path):
    """A tampered expected tensor must fail the case (the check can fail)."""
    (tmp_path / "weights").symlink_to(PARITY / "weights", target_is_directory=True)
    case = tmp_path / "tampered"
    case.mkdir()
    source = CASES[0]
    for name in ("case.json", "inputs.safetensors"):
        (case / name).symlink_to(source / name)
    expected = load_file(source / "expected.safetensors")
    expected["velocity_step0"] = expected["velocity_step0"] + 1e-3
    save_file(expected, case / "expected.safetensors")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.parity", str(case)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        },
    )
    assert result.returncode == 1
    assert "FAIL velocity_step0" in result.stdout


def test_an_expected_tensor_we_cannot_produce_is_a_failure(tmp_path: Path):
    (tmp_path / "weights").symlink_to(PARITY / "weights", target_is_directory=True)
    case = tmp_path / "extra"
    case.mkdir()
    source = CASES[0]
    for name in ("case.json", "inputs.safetensors"):
        (case / name).symlink_to(source / name)
    expected = load_file(source / "expected.safetensors")
    expected["some_future_tensor"] = expected["sigmas"].clone()
    save_file(expected, case / "expected.safetensors")
    report = run_case(case)
    assert report.missing == ["some_future_tensor"]
    assert not report.passed
