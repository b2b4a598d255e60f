"""The run-level figures of `restyle eval`: FID and CMMD of the current results against a
reference set, from the per-item features the eval actors wrote beside the scores."""

from __future__ import annotations

import torch

from pipeline.config import EvalSettings
from pipeline.outputs.run_layout import committed
from pipeline.outputs.run_state import RunState
from pipeline.outputs.scores import read_features, read_scores


def result_features(
    state: RunState, current: dict[str, dict]
) -> dict[str, dict[str, torch.Tensor]]:
    """Set feature name -> item id -> its feature row, for the current score of each item."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for files in committed(state):
        if not state.storage.exists(files.features) or not state.storage.exists(files.scores):
            continue
        rows = read_scores(state.storage, files.scores)
        features = read_features(state.storage, files.features)
        for name, matrix in features.items():
            for row, vector in zip(rows, matrix, strict=True):
                if current.get(row["id"]) == row:  # the newest commit's row wins
                    out.setdefault(name, {})[row["id"]] = vector
    return out


def set_metrics(
    state: RunState, current: dict[str, dict], reference_parts: list[dict], settings: EvalSettings
) -> dict:
    from pipeline.jobs.eval import sample_ids
    from pipeline.metrics.cmmd import mmd
    from pipeline.metrics.fid import frechet_distance

    results = result_features(state, current)
    reference = {
        name: torch.cat([p[name] for p in reference_parts if name in p])
        for name in ("fid", "cmmd")
        if any(name in p for p in reference_parts)
    }
    figures: dict = {}
    if "fid" in results and "fid" in reference:
        vectors = [results["fid"][i] for i in sorted(results["fid"])]
        figures["fid"] = frechet_distance(
            [torch.stack(vectors)], [reference["fid"]], int(reference["fid"].shape[1])
        )
        figures["fid_items"], figures["fid_reference"] = len(vectors), len(reference["fid"])
    if "cmmd" in results and "cmmd" in reference:
        keep = sample_ids(list(results["cmmd"]), settings.cmmd_max_items)
        x = torch.stack([results["cmmd"][i] for i in sorted(keep)])
        y = reference["cmmd"][: settings.cmmd_max_items]
        figures["cmmd"] = mmd(x, y)
        figures["cmmd_items"], figures["cmmd_reference"] = len(x), len(y)
    return figures
