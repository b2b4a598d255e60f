"""Quality gates and the nightly quality watch, on score files as `restyle eval` writes them."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from support.committed_run import write_run

from pipeline.errors import ExitCode
from pipeline.jobs.gates import apply_gates, verdict
from pipeline.jobs.nightly import NightlySpec, NightSummary
from pipeline.jobs.regression import compare_night
from pipeline.jobs.specs import SpecError, parse_spec_text
from pipeline.jobs.triplets import TripletSpec
from pipeline.outputs.run_layout import committed, summary_uri
from pipeline.outputs.run_state import RunState
from pipeline.outputs.scores import write_scores
from pipeline.storage import Storage

SCORES = {
    "good": {"csd": 0.71, "clip_i": 0.80},
    "weak-style": {"csd": 0.32, "clip_i": 0.90},
    "weak-subject": {"csd": 0.66, "clip_i": 0.41},
    "no-style": {"csd": None, "clip_i": 0.75},
}


def scored_run(storage: Storage, run_uri: str) -> None:
    write_run(storage, run_uri, {0: list(SCORES)}, failed={0: "broken"})
    (files,) = committed(RunState(storage, run_uri))
    rows = [
        {
            "id": i,
            "key": i,
            "eval": "e",
            **s,
            "missing": "no style image" if s["csd"] is None else None,
        }
        for i, s in SCORES.items()
    ]
    write_scores(storage, files.scores, rows, {"fingerprint": "e"})


def test_gates_keep_only_triplets_that_pass_and_say_why_the_others_do_not(tmp_path):
    storage = Storage()
    run_uri = str(tmp_path / "run")
    scored_run(storage, run_uri)
    result = apply_gates(RunState(storage, run_uri), {"csd": 0.5, "clip_i": 0.6})
    assert (result.kept, result.rejected) == (1, 4)
    kept = pq.read_table(io.BytesIO(storage.read_bytes(result.kept_uri))).to_pylist()
    assert [(k["id"], k["csd"]) for k in kept] == [("good", 0.71)]
    assert kept[0]["output_key"].endswith("part-000000.tar#good")
    rejected = {
        r["id"]: r["reason"]
        for r in pq.read_table(io.BytesIO(storage.read_bytes(result.rejected_uri))).to_pylist()
    }
    assert rejected == {
        "weak-style": "csd 0.3200 < 0.5",
        "weak-subject": "clip_i 0.4100 < 0.6",
        "no-style": "no csd: no style image",
        "broken": "status bad_input: item 'broken': corrupt subject image",
    }
    assert storage.glob(f"{run_uri}/part-*.parquet") == [f"{run_uri}/part-000000.parquet"]
    assert verdict({"dreamsim": 0.2}, {"dreamsim": 0.3}) is None  # distances pass below
    assert verdict({"dreamsim": 0.4}, {"dreamsim": 0.3}) == "dreamsim 0.4000 > 0.3"


TRIPLETS = """
kind: triplets
name: tri
subjects: s.parquet
styles: t.parquet
output: out
"""


def test_gate_specs_are_checked_before_anything_runs():
    spec = TripletSpec.parse(
        parse_spec_text(
            TRIPLETS + "eval: {models: {clip: tiny, csd: tiny}}\ngates: {csd: 0.5, clip_i: 0.6}\n",
            "jobs/t.yaml",
        )
    )
    assert spec.gates == {"csd": 0.5, "clip_i": 0.6}
    with pytest.raises(SpecError, match=r"jobs/t.yaml: gates: need an eval block"):
        TripletSpec.parse(parse_spec_text(TRIPLETS + "gates: {csd: 0.5}\n", "jobs/t.yaml"))
    with pytest.raises(SpecError, match=r"gate on \['dino'\], which eval does not compute"):
        TripletSpec.parse(
            parse_spec_text(
                TRIPLETS + "eval: {models: {clip: tiny}}\ngates: {dino: 0.5}\n", "t.yaml"
            )
        )
    with pytest.raises(SpecError, match=r"gates on unknown per-item metric\(s\) \['fid'\]"):
        TripletSpec.parse(
            parse_spec_text(TRIPLETS + "eval: {models: {clip: tiny}}\ngates: {fid: 30}\n", "t.yaml")
        )


def night_summary(storage: Storage, runs: str, night: str, medians: dict[str, float]) -> None:
    metrics = {m: {"n": 10, "mean": v, "median": v, "p10": v, "p90": v} for m, v in medians.items()}
    storage.write_bytes(summary_uri(f"{runs}/{night}"), json.dumps({"metrics": metrics}).encode())


def test_a_night_whose_median_drops_past_the_margin_exits_4_and_records_it(tmp_path):
    storage = Storage()
    runs = str(tmp_path / "runs")
    for night, clip_t in [("2026-09-10", 0.30), ("2026-09-11", 0.31), ("2026-09-12", 0.29)]:
        night_summary(storage, runs, night, {"clip_t": clip_t, "dreamsim": 0.20})
    night_summary(storage, runs, "2026-09-13", {"clip_t": 0.22, "dreamsim": 0.21})
    night_summary(storage, runs, "2026-09-14", {"clip_t": 0.10, "dreamsim": 0.90})  # later: unused
    quality = compare_night(storage, runs, "2026-09-13", margin=0.05, nights=7)
    assert quality["clip_t"]["baseline"] == pytest.approx(0.30)
    assert quality["clip_t"]["drop"] == pytest.approx(0.08) and quality["clip_t"]["regressed"]
    assert quality["dreamsim"]["drop"] == pytest.approx(0.01)  # a distance: higher is worse
    assert not quality["dreamsim"]["regressed"]
    summary = NightSummary("job", "2026-09-13", "fp", f"{runs}/2026-09-13", quality=quality)
    assert summary.regressions == ["clip_t"] and summary.exit_code == ExitCode.QUALITY_REGRESSION
    assert summary.public_dict()["regressions"] == ["clip_t"]
    assert (
        compare_night(storage, runs, "2026-09-13", margin=0.1, nights=7)["clip_t"]["regressed"]
        is False
    )
    first = compare_night(storage, runs, "2026-09-10", margin=0.05, nights=7)
    assert first == {}  # no earlier nights: nothing to compare with


def test_nightly_regression_needs_an_eval_block():
    text = "kind: nightly\nname: n\ncatalog: c.parquet\noutput: out\nmodel: uso\n"
    with pytest.raises(SpecError, match=r"regression: needs an eval block"):
        NightlySpec.parse(parse_spec_text(text + "regression: {margin: 0.05}\n", "n.yaml"))
    spec = NightlySpec.parse(
        parse_spec_text(
            text + "eval: {models: {clip: tiny}}\nregression: {margin: 0.02}\n", "n.yaml"
        )
    )
    assert spec.regression is not None and spec.regression.nights == 7
