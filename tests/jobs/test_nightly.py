"""Nightly incremental restyling: only rows not yet produced, dated runs, never duplicates.

The story: a catalog on S3 grows between nights. Night 1 restyles everything; night 2 finds
three new rows and processes exactly those (one of them fails: its picture is missing); a
re-run of night 2 does nothing new; after the picture is fixed, night 3 retries only the row
that failed; a night with nothing new is a no-op that writes nothing.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import ray
from support.run_helpers import SMALL, parquet_bytes, png_bytes, sigterm_at_first_commit

from pipeline.errors import DerivedManifestConflict, ExitCode
from pipeline.jobs.nightly import NightlyError, NightlyJob, NightlySpec
from pipeline.jobs.specs import SpecError, parse_spec_text
from pipeline.storage import Storage, StorageSettings
from pipeline.weights.tiny import build_tiny_weights


def spec_text(bucket: str, weights, seed: int = 0) -> str:
    return f"""
kind: nightly
name: shop-watercolor
catalog: {bucket}/catalog/
output: {bucket}/restyled
model: uso
weights: {weights}
seed: {seed}
style: {{images: [{bucket}/styles/watercolor.png]}}
prompt: "{{prompt}}, watercolor"
sampling: {{width: {SMALL["width"]}, height: {SMALL["height"]}, steps: {SMALL["steps"]}}}
options: {{device: cpu}}
outputs: {{caption: template, caption_template: "{{id}} in {{category}}"}}
actors: 1
rows_per_shard: 2
"""


def rows(ids: list[str], picture: str = "../images/item.png") -> list[dict]:
    return [{"id": i, "subject": picture, "prompt": f"Item {i}", "category": "mugs"} for i in ids]


def processed_ids(storage, run_uri: str) -> list[str]:
    ids = []
    for uri in storage.list(run_uri + "/"):
        if uri.endswith(".parquet") and "/part-" in uri:
            ids += [r["id"] for r in pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist()]
    return sorted(ids)


def index_ids(storage, output: str) -> dict[str, list[str]]:
    """night -> ids in the done index (every fingerprint)."""
    found = {}
    for uri in storage.list(f"{output}/index/"):
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
        found[uri.rsplit("/", 1)[-1].removesuffix(".parquet")] = sorted(
            table.column("id").to_pylist()
        )
    return found


@pytest.mark.slow
def test_each_night_processes_only_rows_not_yet_produced(tmp_path, s3_server, s3_bucket):
    storage = s3_server.storage()
    storage.write_bytes(f"{s3_bucket}/images/item.png", png_bytes(1))
    storage.write_bytes(f"{s3_bucket}/styles/watercolor.png", png_bytes(2))
    storage.write_bytes(
        f"{s3_bucket}/catalog/part-000.parquet", parquet_bytes(rows(["a1", "a2", "a3", "a4"]))
    )
    weights = build_tiny_weights(tmp_path / "weights")
    spec = NightlySpec.parse(
        parse_spec_text(spec_text(s3_bucket, weights), str(tmp_path / "n.yaml"))
    )
    output = f"{s3_bucket}/restyled"
    settings = s3_server.settings()

    def night(label: str, job_spec: NightlySpec = spec):
        return NightlyJob(job_spec, settings, label, show_progress=False).run()

    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        first = night("2026-09-01")
        assert (first.new, first.run.ok, first.run.failed, first.indexed) == (4, 4, 0, 4)
        assert processed_ids(storage, first.run_uri) == ["a1", "a2", "a3", "a4"]

        # Three rows arrive; one names a picture that is not there (yet).
        storage.write_bytes(
            f"{s3_bucket}/catalog/part-001.parquet",
            parquet_bytes(rows(["b1", "b2"]) + rows(["b3"], picture="../images/late.png")),
        )
        second = night("2026-09-02")
        assert (second.catalog_rows, second.already_done, second.new) == (7, 4, 3)
        assert processed_ids(storage, second.run_uri) == ["b1", "b2", "b3"]  # exactly the new ones
        assert (second.run.ok, second.run.failed, second.indexed) == (2, 1, 2)
        assert second.run.errors == {"io_error": 1}

        # Re-running the night: the frozen manifest is resumed, nothing is redone or duplicated.
        tars = {
            u: storage.read_bytes(u)
            for u in storage.list(second.run_uri + "/")
            if u.endswith(".tar")
        }
        again = night("2026-09-02")
        assert again.resumed and (again.run.shards_committed, again.run.shards_already_done) == (
            0,
            2,
        )
        assert {
            u: storage.read_bytes(u)
            for u in storage.list(second.run_uri + "/")
            if u.endswith(".tar")
        } == tars

        # The picture arrives; the next night retries only the row that failed.
        storage.write_bytes(f"{s3_bucket}/images/late.png", png_bytes(3))
        third = night("2026-09-03")
        assert (third.already_done, third.new, third.run.ok) == (6, 1, 1)
        assert processed_ids(storage, third.run_uri) == ["b3"]

        # Nothing new: a no-op that writes nothing and starts nothing.
        quiet = night("2026-09-04")
        assert quiet.noop and (quiet.already_done, quiet.new, quiet.exit_code) == (7, 0, 0)
        assert not storage.list(f"{output}/runs/2026-09-04/")
        assert not storage.list(f"{output}/manifests/2026-09-04/")

        # A changed config under a night label that already ran is refused, not mixed in.
        changed = NightlySpec.parse(
            parse_spec_text(spec_text(s3_bucket, weights, seed=1), "n.yaml")
        )
        with pytest.raises(DerivedManifestConflict, match="2026-09-02"):
            night("2026-09-02", changed)
    finally:
        ray.shutdown()

    fingerprint = first.fingerprint
    assert {second.fingerprint, third.fingerprint, quiet.fingerprint} == {fingerprint}
    assert index_ids(storage, output) == {
        "2026-09-01": ["a1", "a2", "a3", "a4"],
        "2026-09-02": ["b1", "b2"],
        "2026-09-03": ["b3"],
    }
    assert all(f"/index/{fingerprint}/" in u for u in storage.list(f"{output}/index/"))

    # What a consumer sees: the style set was applied, the prompt templated, captions written.
    tar = storage.read_bytes(f"{second.run_uri}/part-000000.tar")
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}
    provenance = json.loads(members["b1.json"])
    assert provenance["prompt"] == "Item b1, watercolor"
    styles = [i["uri"] for i in provenance["inputs"] if i["role"] == "style"]
    assert styles == [f"{s3_bucket}/styles/watercolor.png"]
    assert members["b1.txt"] == b"b1 in mugs"
    run_json = json.loads(storage.read_bytes(f"{second.run_uri}/run.json"))
    assert run_json["config"]["run"] == "2026-09-02"


@pytest.mark.slow
def test_a_night_scored_worse_than_the_nights_before_exits_4_and_says_which_metric(
    tmp_path, s3_server, s3_bucket
):
    storage = s3_server.storage()
    storage.write_bytes(f"{s3_bucket}/images/item.png", png_bytes(1))
    storage.write_bytes(f"{s3_bucket}/styles/watercolor.png", png_bytes(2))
    storage.write_bytes(f"{s3_bucket}/catalog/part-000.parquet", parquet_bytes(rows(["a1", "a2"])))
    watch = "eval: {models: {clip: tiny}, metrics: [clip_t, clip_i]}\nregression: {margin: 0.05, nights: 3}\n"
    text = spec_text(s3_bucket, build_tiny_weights(tmp_path / "weights")) + watch
    spec = NightlySpec.parse(parse_spec_text(text, str(tmp_path / "n.yaml")))

    def history(night: str, median: float) -> None:  # what earlier scored nights left behind
        stats = {"n": 2, "mean": median, "median": median, "p10": median, "p90": median}
        storage.write_bytes(
            f"{s3_bucket}/restyled/runs/{night}/scores/summary.json",
            json.dumps({"metrics": {"clip_t": stats, "clip_i": stats}}).encode(),
        )

    for night in ("2026-08-30", "2026-08-31"):
        history(night, 1.0)  # perfect scores: any real night is worse by more than 0.05
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        worse = NightlyJob(spec, s3_server.settings(), "2026-09-01", show_progress=False).run()
        for night in ("2026-08-30", "2026-08-31"):
            history(night, -1.0)  # the worst possible: tonight cannot be worse
        storage.write_bytes(f"{s3_bucket}/catalog/part-001.parquet", parquet_bytes(rows(["b1"])))
        fine = NightlyJob(spec, s3_server.settings(), "2026-09-02", show_progress=False).run()
    finally:
        ray.shutdown()
    assert worse.run.ok == 2 and worse.scores["clip_t"]["n"] == 2
    dropped = [m for m in ("clip_i", "clip_t") if 1.0 - worse.scores[m]["median"] > 0.05]
    assert "clip_t" in dropped and sorted(worse.regressions) == dropped  # tiny CLIP-I sits near 1
    assert worse.exit_code == ExitCode.QUALITY_REGRESSION
    assert worse.public_dict()["quality"]["clip_t"]["baseline"] == 1.0
    # The next night: its baseline is the last 3 scored nights, including 2026-09-01 itself.
    assert fine.quality["clip_t"]["nights"] == 3 and fine.regressions == []
    assert fine.exit_code == 0


@pytest.mark.slow
def test_a_night_stopped_by_sigterm_exits_75_unscored_and_its_rerun_scores_it_whole(tmp_path):
    """A KubeRay stop mid-night: the run drains, the night is not scored (scoring a part of it
    would compare a partial median with whole nights), and its rerun resumes and scores it."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "item.png").write_bytes(png_bytes(1))
    (tmp_path / "styles").mkdir()
    (tmp_path / "styles" / "watercolor.png").write_bytes(png_bytes(2))
    (tmp_path / "catalog").mkdir()
    ids = [f"a{i}" for i in range(10)]
    (tmp_path / "catalog" / "part-000.parquet").write_bytes(parquet_bytes(rows(ids)))
    text = spec_text(str(tmp_path), build_tiny_weights(tmp_path / "weights"))
    text = text.replace(f"steps: {SMALL['steps']}", "steps: 4")  # shards long enough to stop
    (tmp_path / "n.yaml").write_text(text + "eval: {models: {clip: tiny}, metrics: [clip_t]}\n")
    night = tmp_path / "restyled" / "runs" / "2026-09-01"
    command = [sys.executable, "-m", "pipeline.cli", "nightly", str(tmp_path / "n.yaml")]
    command += ["--night", "2026-09-01", "--no-progress", "--json"]
    code, stdout, stderr = sigterm_at_first_commit(command, night)
    assert code == ExitCode.INTERRUPTED, stderr[-3000:]
    assert json.loads(stdout)["exit_code"] == 75
    assert "night 2026-09-01 stopped by a signal: not scored" in stderr
    assert not (night / "scores").exists()
    assert json.loads(stdout)["unscored"]
    assert len(list(night.glob("*.stats.json"))) < 5  # the drain left queued shards

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert rerun.returncode == ExitCode.OK, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["resumed"] and summary["scores"]["clip_t"]["n"] == len(ids)
    assert processed_ids(Storage(StorageSettings()), str(night)) == ids  # each once


def test_nightly_spec_mistakes_name_the_key():
    base = "kind: nightly\nname: n\ncatalog: c/\noutput: o\n"
    cases = {
        "model: uso\nstyle: {lora: Ghibli}": "style.lora: style LoRAs are OmniConsistency's",
        "model: omniconsistency\nstyle: {images: [a.png]}": "style.images: style images are USO's",
        "model: omniconsistency\nstyle: {lora_scale: 0.5}": "style.lora_scale: is set but style.lora is not",
        "model: uso\nstyle: {colour: red}": "style: unknown key(s) ['colour']",
        "model: flux": "model: must be one of",
        "style: {}": "model: is required",
        "model: uso\nprompt: '{prompt'": "prompt: not a valid template",
        "model: uso\nrows_per_shard: 0": "rows_per_shard: must be at least 1",
    }
    for extra, message in cases.items():
        with pytest.raises(SpecError) as error:
            NightlySpec.parse(parse_spec_text(base + extra, "nightly.yaml"))
        assert message in str(error.value), (extra, str(error.value))
    with pytest.raises(SpecError, match="kind: must be one of nightly, triplets"):
        parse_spec_text("kind: weekly\nname: n\n", "nightly.yaml")
    spec = NightlySpec.parse(parse_spec_text(base + "model: uso", "/jobs/nightly.yaml"))
    assert spec.catalog == ("/jobs/c/",) and spec.output == "/jobs/o"  # beside the spec
    with pytest.raises(NightlyError, match="night label"):
        NightlyJob(spec, None, night="../escape")
