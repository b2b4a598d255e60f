"""Quality gates: keep only the triplets whose scores pass thresholds, as USO's authors kept
only high-CSD / high-CLIP-I pairs of their synthetic triplets.

    gates: {csd: 0.5, clip_i: 0.6}     # in a triplet spec, with an `eval:` block

After the run is scored, every item lands in exactly one of two files in the run folder:

    <run>/gates/kept.parquet       id, key, output_key, scores of the gated metrics
    <run>/gates/rejected.parquet   id, key, reason ("csd 0.41 < 0.5", "no csd: no style
                                   image", "status bad_input: ...")

A metric that is higher-is-better passes at >= its threshold; a distance (dreamsim) at <=.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from pipeline.metrics.definitions import ITEM_METRICS
from pipeline.outputs.run_layout import committed, current_records
from pipeline.outputs.run_state import RunState
from pipeline.outputs.score_stats import current_scores
from pipeline.storage.parquet import table_to_bytes

GATES_FOLDER = "gates"
KEPT_SCHEMA = pa.schema(
    [("id", pa.string()), ("key", pa.string()), ("output_key", pa.string())]
    + [(name, pa.float64()) for name in ITEM_METRICS]
)
REJECTED_SCHEMA = pa.schema([("id", pa.string()), ("key", pa.string()), ("reason", pa.string())])


@dataclass
class GateResult:
    kept: int
    rejected: int
    kept_uri: str
    rejected_uri: str


def verdict(scores: dict, gates: dict[str, float]) -> str | None:
    """None when every gate passes, else why not (the first failing gate)."""
    for metric, threshold in gates.items():
        value = scores.get(metric)
        if value is None:
            why = scores.get("missing") or "not scored"
            return f"no {metric}: {why}"
        higher = ITEM_METRICS[metric].higher_is_better
        if (higher and value < threshold) or (not higher and value > threshold):
            return f"{metric} {value:.4f} {'<' if higher else '>'} {threshold}"
    return None


def apply_gates(state: RunState, gates: dict[str, float]) -> GateResult:
    """Split the run's current items into kept and rejected (see the module doc)."""
    scores = current_scores(state)
    kept, rejected = [], []
    for record, _ in current_records(state, committed(state)).values():
        if not record.ok:
            reason = f"status {record.status}: {record.error or ''}".rstrip(": ")
            rejected.append({"id": record.id, "key": record.key, "reason": reason})
            continue
        row = scores.get(record.id, {})
        why = verdict(row, gates)
        if why is None:
            values = {m: row.get(m) for m in ITEM_METRICS}
            kept.append(
                {"id": record.id, "key": record.key, "output_key": record.output_key, **values}
            )
        else:
            rejected.append({"id": record.id, "key": record.key, "reason": why})
    folder = f"{state.run_uri}/{GATES_FOLDER}"
    result = GateResult(
        len(kept), len(rejected), f"{folder}/kept.parquet", f"{folder}/rejected.parquet"
    )
    state.storage.write_bytes(
        result.rejected_uri, table_to_bytes(pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA))
    )
    state.storage.write_bytes(
        result.kept_uri, table_to_bytes(pa.Table.from_pylist(kept, schema=KEPT_SCHEMA))
    )
    return result
