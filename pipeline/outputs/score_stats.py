"""Reading a run's scores back: the current score of each item, per-metric summaries, and the
bootstrap comparison of two runs. numpy and pyarrow only (`restyle status` stays light)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from pipeline.metrics.definitions import ITEM_METRICS
from pipeline.outputs.run_layout import committed, summary_uri
from pipeline.outputs.run_state import RunState
from pipeline.outputs.scores import read_scores

CONFIDENCE = 0.95


def current_scores(state: RunState) -> dict[str, dict]:
    """Item id -> its score row from the newest commit that scored it."""
    rows: dict[str, dict] = {}
    for files in committed(state):
        if state.storage.exists(files.scores):
            for row in read_scores(state.storage, files.scores):
                rows[row["id"]] = row
    return rows


def metric_values(rows: dict[str, dict], metric: str) -> dict[str, float]:
    return {i: r[metric] for i, r in rows.items() if r.get(metric) is not None}


def summarise(rows: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per metric with any value: n, mean, median, p10, p90."""
    out = {}
    for metric in ITEM_METRICS:
        values = np.array(list(metric_values(rows, metric).values()), dtype=float)
        if values.size:
            out[metric] = {
                "n": int(values.size),
                "mean": float(values.mean()),
                "median": float(np.median(values)),
                "p10": float(np.percentile(values, 10)),
                "p90": float(np.percentile(values, 90)),
            }
    return out


def read_summary(state: RunState) -> dict | None:
    uri = summary_uri(state.run_uri)
    if not state.storage.exists(uri):
        return None
    return json.loads(state.storage.read_bytes(uri))


@dataclass
class Delta:
    metric: str
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    low: float  # confidence interval of mean_b - mean_a
    high: float
    paired: bool

    @property
    def delta(self) -> float:
        return self.mean_b - self.mean_a


def bootstrap_delta(
    a: dict[str, float], b: dict[str, float], resamples: int = 1000, seed: int = 0
) -> tuple[float, float, bool]:
    """A percentile bootstrap interval of mean(b) - mean(a). Items both runs scored are
    resampled in pairs (the same item in both runs: the usual A/B of two configurations);
    otherwise each run's items are resampled on their own."""
    rng = np.random.default_rng(seed)
    common = sorted(set(a) & set(b))
    tail = (1.0 - CONFIDENCE) / 2 * 100
    if len(common) >= 2:
        diff = np.array([b[i] - a[i] for i in common])
        picks = rng.integers(0, diff.size, (resamples, diff.size))
        means = diff[picks].mean(axis=1)
        return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail)), True
    va, vb = np.array(list(a.values())), np.array(list(b.values()))
    ma = va[rng.integers(0, va.size, (resamples, va.size))].mean(axis=1)
    mb = vb[rng.integers(0, vb.size, (resamples, vb.size))].mean(axis=1)
    diffs = mb - ma
    return float(np.percentile(diffs, tail)), float(np.percentile(diffs, 100 - tail)), False


def compare(
    rows_a: dict[str, dict], rows_b: dict[str, dict], resamples: int = 1000, seed: int = 0
) -> list[Delta]:
    """Per metric both runs have: means, and the interval of their difference (B - A)."""
    deltas = []
    for metric in ITEM_METRICS:
        a, b = metric_values(rows_a, metric), metric_values(rows_b, metric)
        if not a or not b:
            continue
        low, high, paired = bootstrap_delta(a, b, resamples, seed)
        if paired:  # the point estimate over the same items the interval resamples
            a = {i: v for i, v in a.items() if i in b}
            b = {i: v for i, v in b.items() if i in a}
        deltas.append(
            Delta(
                metric,
                len(a),
                len(b),
                float(np.mean(list(a.values()))),
                float(np.mean(list(b.values()))),
                low,
                high,
                paired,
            )
        )
    return deltas
