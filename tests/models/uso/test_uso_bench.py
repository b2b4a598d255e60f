"""The USO benchmark keeps working and counts FLOPs as reference/performance.md does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support.paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import bench_uso


def test_flop_model_matches_the_published_uso_figure():
    """1024^2, 512^2 subject, one style: 704 text-side and 5120 image-side tokens ->
    98.9 TFLOP/step plus 2.3 for the rank-128 LoRA (performance.md section 2)."""
    flops = bench_uso.step_flops(3072, 19, 38, 128, n_txt=192 + 512, n_img=4096 + 1024)
    assert (flops["linear"] + flops["attention"]) / 1e12 == pytest.approx(98.9, abs=0.1)
    assert flops["lora"] / 1e12 == pytest.approx(2.3, abs=0.05)


def test_benchmark_runs_at_tiny_size(tmp_path: Path):
    figures = bench_uso.main(
        ["--size", "tiny", "--repeats", "1", "--json", str(tmp_path / "figures.json")]
    )
    assert figures["seconds_per_image"] > 0 and figures["steps"] == 2
    assert figures["style_once_s"] > 0 and figures["style_every_step_s"] > 0
    assert (tmp_path / "figures.json").exists()
