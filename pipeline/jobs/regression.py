"""Nightly quality watch: a night's metric medians against the previous nights' medians.

    regression: {margin: 0.05, nights: 7}      # in a nightly spec, with an `eval:` block

After a night is scored (`restyle eval` on `<output>/runs/<night>/`), its per-metric medians
are compared with the median of the same metric over the previous `nights` nights that were
scored (their `runs/<night>/scores/summary.json`, nights ordered by label: dates sort). A
metric whose median is worse than that baseline by more than `margin` (lower for a similarity,
higher for a distance) is a regression: the night's summary records it and `restyle nightly`
exits with `ExitCode.QUALITY_REGRESSION` (9).
"""

from __future__ import annotations

import json
import statistics

from pipeline.metrics.definitions import ITEM_METRICS
from pipeline.outputs.run_layout import summary_uri
from pipeline.storage import Storage


def previous_medians(
    storage: Storage, runs_folder: str, night: str, nights: int
) -> dict[str, list[float]]:
    """Metric -> medians of the latest `nights` scored nights before `night`."""
    summaries = sorted(
        u for u in storage.list(runs_folder.rstrip("/") + "/") if u.endswith("/scores/summary.json")
    )
    labels = {u: u[len(runs_folder.rstrip("/")) + 1 :].split("/", 1)[0] for u in summaries}
    earlier = [u for u in summaries if labels[u] < night][-nights:]
    medians: dict[str, list[float]] = {}
    for uri in earlier:
        for metric, stats in json.loads(storage.read_bytes(uri)).get("metrics", {}).items():
            medians.setdefault(metric, []).append(stats["median"])
    return medians


def compare_night(
    storage: Storage, runs_folder: str, night: str, margin: float, nights: int
) -> dict[str, dict]:
    """Metric -> median, baseline, drop (positive = worse) and regressed, for this night."""
    uri = summary_uri(f"{runs_folder.rstrip('/')}/{night}")
    tonight = json.loads(storage.read_bytes(uri)).get("metrics", {}) if storage.exists(uri) else {}
    history = previous_medians(storage, runs_folder, night, nights)
    report = {}
    for metric, stats in tonight.items():
        if metric not in history or metric not in ITEM_METRICS:
            continue
        baseline = statistics.median(history[metric])
        sign = 1.0 if ITEM_METRICS[metric].higher_is_better else -1.0
        drop = sign * (baseline - stats["median"])
        report[metric] = {
            "median": stats["median"],
            "baseline": baseline,
            "nights": len(history[metric]),
            "drop": drop,
            "regressed": drop > margin,
        }
    return report
