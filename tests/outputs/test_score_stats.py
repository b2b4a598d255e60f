"""Comparing two runs' scores: the delta of the means with a bootstrap interval over items."""

from __future__ import annotations

import numpy as np

from pipeline.outputs.score_stats import compare


def rows(values: dict[str, float]) -> dict[str, dict]:
    return {i: {"id": i, "clip_t": v, "csd": None} for i, v in values.items()}


def test_a_real_improvement_has_an_interval_above_zero_and_noise_one_around_it():
    rng = np.random.default_rng(0)
    base = {f"i{n}": float(v) for n, v in enumerate(rng.normal(0.25, 0.05, 200))}
    better = {i: v + 0.03 + float(rng.normal(0, 0.01)) for i, v in base.items()}
    noisy = {i: v + float(rng.normal(0, 0.01)) for i, v in base.items()}
    (up,) = compare(rows(base), rows(better))
    assert up.metric == "clip_t" and up.paired and up.n_a == up.n_b == 200
    assert 0.0 < up.low < up.delta < up.high and abs(up.delta - 0.03) < 0.005
    (same,) = compare(rows(base), rows(noisy))
    assert same.low < 0.0 < same.high
    # Different items in the two runs: resampled on their own, still an interval around the gap.
    other = {f"j{n}": v + 0.1 for n, v in enumerate(base.values())}
    (apart,) = compare(rows(base), rows(other))
    assert not apart.paired and apart.low < 0.1 < apart.high
    assert compare(rows(base), rows(better), seed=1) != [] and compare(rows({}), rows(base)) == []
