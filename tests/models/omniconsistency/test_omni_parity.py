"""OmniConsistency matches the authors' inference code on every parity case folder.

Each case runs from its raw inputs (source image -> our preprocessing -> our VAE encode) and
again with the reference's condition latent injected; every expected tensor must be within the
case's tolerances. The CLI entry point must agree.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.paths import FIXTURES, REPO

from pipeline.parity.omniconsistency import load_case_sampler, run_case

OMNI = FIXTURES / "parity" / "omniconsistency"
CASES = sorted(p for p in OMNI.iterdir() if (p / "case.json").exists())


def test_there_are_cases_to_check():
    assert len(CASES) >= 2


@pytest.mark.parametrize("case_dir", CASES, ids=[c.name for c in CASES])
def test_case_matches_reference(case_dir: Path):
    report = run_case(case_dir)
    assert report.passed, report.format()
    names = {c.name for c in report.checks}
    expected = load_file(str(case_dir / "expected.safetensors"))
    for name in expected:  # every expected tensor was compared, on both routes
        assert name in names or name == "image" or any(n.startswith(name) for n in names), name
        assert f"injected:{name}" in names or name in ("sigmas", "timesteps", "img_ids"), name
    assert {"in:debug_cond_pixels", "in:cond_latent"} <= names


def test_cli_exits_zero_on_all_cases():
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.parity", *map(str, CASES)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == len(CASES)
    assert "max|diff|" in result.stdout


@pytest.mark.slow
def test_cli_fails_when_a_tensor_is_off(tmp_path: Path):
    """A case whose expected velocity is perturbed must fail (the check can fail)."""
    source = CASES[0]
    case = tmp_path / source.name
    case.mkdir()
    (tmp_path / "weights").symlink_to(OMNI / "weights", target_is_directory=True)
    for name in ("case.json", "inputs.safetensors"):
        (case / name).write_bytes((source / name).read_bytes())
    from safetensors.torch import save_file

    expected = load_file(str(source / "expected.safetensors"))
    expected["velocity_step0"] = expected["velocity_step0"] + 1e-3
    save_file(expected, str(case / "expected.safetensors"))
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.parity", str(case)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL velocity_step0" in result.stdout


def test_proj_loras_are_ignored_by_default_and_applied_on_request():
    """The reference loads proj_loras and never applies them; the option applies them in the
    warm-up, which leaves double block 0's cache alone and changes every later block."""
    case_dir = CASES[0]
    case = json.loads((case_dir / "case.json").read_text())
    inputs = load_file(str(case_dir / "inputs.safetensors"))
    expected = load_file(str(case_dir / "expected.safetensors"))
    sampler = load_case_sampler(OMNI / "weights", case, torch.float32)
    layout = sampler.layout(case["width"], case["height"], case["cond_size"])
    args = (
        inputs["cond_latent"],
        inputs["prompt_embeds"],
        inputs["pooled_prompt_embeds"],
        [case["guidance"]],
        layout,
    )
    with torch.inference_mode():
        default = sampler.warm_up(*args)
        sampler.apply_proj_loras = True
        with_proj = sampler.warm_up(*args)
    for part, index in (("k", 0), ("v", 1)):
        torch.testing.assert_close(
            default.entries["double1"][index], expected[f"double1_cond_{part}"], atol=1e-4, rtol=0
        )
        assert torch.equal(with_proj.entries["double0"][index], default.entries["double0"][index])
        for block in ("double1", "single0", "single1"):
            assert (
                with_proj.entries[block][index] - expected[f"{block}_cond_{part}"]
            ).abs().max() > 1e-3
