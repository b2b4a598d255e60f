"""`restyle eval`: a finished run scored per item and per set, on the run's actor machinery.

The run is committed the way the runner commits it (tests/support/committed_run.py: triplet
samples with subject and style references, one failed item); the backbones are tiny
random-weight models of the real classes.
"""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image
from support.committed_run import write_run
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.config import EvalSettings, MetricModels
from pipeline.jobs.eval import eval_run
from pipeline.metrics.definitions import ITEM_METRICS
from pipeline.outputs.run_layout import committed, summary_uri
from pipeline.outputs.run_state import RunState
from pipeline.outputs.scores import SCORE_SCHEMA
from pipeline.processing.metric_suite import MetricSuite, Sample

SHARDS = {0: ["cup", "house", "lamp"], 1: ["tree", "boat"]}


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_eval_scores_every_ok_item_once_resumes_and_feeds_status_report_and_compare(
    s3_server, s3_bucket, tmp_path, private_caches, local_ray
):
    storage = s3_server.storage()
    run_uri = f"{s3_bucket}/out/run"
    images = write_run(storage, run_uri, SHARDS, failed={1: "broken"})
    for i in range(6):  # a reference set: a folder of images on S3
        buffer = io.BytesIO()
        Image.fromarray(
            images["cup"]["style"][:, :, ::-1] if i % 2 else images["boat"]["subject"]
        ).rotate(30 * i).save(buffer, format="PNG")
        storage.write_bytes(f"{s3_bucket}/reference/r{i}.png", buffer.getvalue())
    settings = EvalSettings(models=MetricModels.all_tiny(), reference=f"{s3_bucket}/reference")

    summary = eval_run(run_uri, settings, s3_server.settings(), actors=1, device="cpu")
    assert (summary.shards_scored, summary.shards_kept, summary.items_scored) == (2, 0, 5)
    assert summary.failed == {} and summary.exit_code == 0
    assert set(summary.sets) >= {"fid", "cmmd"} and summary.sets["fid_reference"] == 6

    state = RunState(storage, run_uri)
    files = committed(state)
    assert [f.scores for f in files] == [
        f"{run_uri}/scores/000000.parquet",
        f"{run_uri}/scores/000001.parquet",
    ]
    assert not storage.glob(f"{run_uri}/part-*.scores*")  # nothing new in the records' glob
    assert storage.glob(f"{run_uri}/part-*.parquet") == [f.records for f in files]
    assert storage.glob(f"{run_uri}/**/part-*.parquet") == [f.records for f in files]
    suite = MetricSuite(settings, storage)
    for shard, ids in SHARDS.items():
        table = pq.read_table(io.BytesIO(storage.read_bytes(files[shard].scores)))
        assert table.schema.remove_metadata() == SCORE_SCHEMA  # fixed schema
        rows = table.to_pylist()
        assert [r["id"] for r in rows] == ids  # ok items only, once each
        expected = suite.score(
            [
                Sample(
                    i,
                    i,
                    Image.fromarray(images[i]["result"]),
                    Image.fromarray(images[i]["subject"]),
                    Image.fromarray(images[i]["style"]),
                    prompt=f"a picture of {i}",
                )
                for i in ids
            ]
        )
        for row, want in zip(rows, expected, strict=True):
            for metric in ("clip_i", "clip_i_style", "clip_t", "dino", "csd"):
                assert row[metric] == pytest.approx(want[metric], abs=1e-5), (row["id"], metric)
            assert row["dreamsim"] is None  # not asked: null, never made up

    # Resumable and exactly once: a second pass keeps both shards; other backbones redo them.
    again = eval_run(run_uri, settings, s3_server.settings(), actors=1, device="cpu")
    assert (again.shards_scored, again.shards_kept) == (0, 2)
    before = storage.read_bytes(files[0].scores)
    clip_only = EvalSettings(metrics=["clip_t"], models=MetricModels(clip="tiny"))
    changed = eval_run(run_uri, clip_only, s3_server.settings(), actors=1, device="cpu")
    assert (changed.shards_scored, changed.shards_kept) == (2, 0)
    assert storage.read_bytes(files[0].scores) != before

    # status and compare read the scores back
    cli = CliRunner()
    env = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
    }
    status = cli.invoke(app, ["status", run_uri, "--json"], env=env)
    scores = json.loads(status.stdout)["scores"]
    assert scores["metrics"]["clip_t"]["n"] == 5 and "clip_i" not in scores["metrics"]
    summary_json = json.loads(storage.read_bytes(summary_uri(run_uri)))
    assert summary_json["metrics"]["clip_t"]["n"] == 5

    other = f"{s3_bucket}/out/other"
    write_run(storage, other, {0: ["cup", "house", "lamp"], 1: ["tree", "boat"]})
    eval_run(other, clip_only, s3_server.settings(), actors=1, device="cpu")
    compared = cli.invoke(app, ["eval", run_uri, "--compare", other, "--json"], env=env)
    assert compared.exit_code == 0, compared.output
    (delta,) = json.loads(compared.stdout)["deltas"]
    assert delta["metric"] == "clip_t" and delta["paired"] and delta["n_a"] == 5
    assert delta["low"] <= delta["delta"] <= delta["high"]


def test_eval_settings_name_the_missing_backbone():
    from pipeline.config import ConfigError, PathBase, validate

    with pytest.raises(ConfigError, match=r"models.csd: is required for metric 'csd'"):
        validate(EvalSettings, {"metrics": ["csd"], "models": {"clip": "tiny"}}, paths=PathBase())
    with pytest.raises(ConfigError, match=r"reference: is required for fid and cmmd"):
        validate(EvalSettings, {"metrics": ["fid"], "models": {"fid": "tiny"}}, paths=PathBase())
    with pytest.raises(ConfigError, match=r"unknown metric\(s\) \['ssim'\]"):
        validate(EvalSettings, {"metrics": ["ssim"], "models": {"clip": "tiny"}}, paths=PathBase())
    assert set(EvalSettings(models=MetricModels.all_tiny()).chosen) == set(ITEM_METRICS) - {
        "dreamsim",
        "dreamsim_style",
    }
