"""Every reader a trainer opens a run folder with, as they would use it, on a mixed-LoRA
OmniConsistency run (retried and captioned) and a USO run: the counts are what `restyle status`
reports, one run or several at once."""

from __future__ import annotations

import glob

import datasets
import duckdb
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from support.run_folders import status_of


def tars(*runs) -> list[str]:
    return sorted(f for run in runs for f in glob.glob(f"{run}/part-*.tar"))


def records(*runs) -> list[str]:
    return sorted(f for run in runs for f in glob.glob(f"{run}/part-*.parquet"))


@pytest.fixture(scope="module")
def counts(run_folders) -> dict[str, dict]:
    return {name: status_of(getattr(run_folders, name)) for name in ("omni", "uso")}


def load(tmp_path, *args, **kwargs):
    return datasets.load_dataset(*args, split="train", cache_dir=str(tmp_path / "hf"), **kwargs)


def test_hf_webdataset_builder_reads_one_mixed_lora_run(run_folders, counts, tmp_path):
    ds = load(tmp_path, "webdataset", data_files=tars(run_folders.omni))
    assert len(ds) == counts["omni"]["ok"]
    names = {row["json"]["style_lora"]["name"] for row in ds}
    assert names == {"", "Ghibli", "Van_Gogh"}
    assert ds[0]["png"].size == (64, 48)


def test_hf_webdataset_builder_reads_two_runs_of_two_models_together(run_folders, counts, tmp_path):
    ds = load(tmp_path, "webdataset", data_files=tars(run_folders.omni, run_folders.uso))
    assert len(ds) == counts["omni"]["ok"] + counts["uso"]["ok"]
    assert {row["model"] for row in ds["json"]} == {"uso", "omniconsistency"}
    out = tmp_path / "images.parquet"
    ds.to_parquet(str(out))
    assert pq.read_metadata(out).num_rows == len(ds)


def test_hf_parquet_builder_reads_the_records_of_two_runs(run_folders, counts, tmp_path):
    ds = load(tmp_path, "parquet", data_files=records(run_folders.omni, run_folders.uso))
    assert len(ds) == counts["omni"]["items"] + counts["uso"]["items"]
    assert sum(s == "ok" for s in ds["status"]) == counts["omni"]["ok"] + counts["uso"]["ok"]
    assert set(ds.features["scores"]) == {"clip_t", "style"}


def test_load_dataset_on_the_folder_uses_its_card(run_folders, counts, tmp_path):
    images = load(tmp_path, str(run_folders.omni))
    assert len(images) == counts["omni"]["ok"]
    assert images.features["png"] == datasets.Image()
    captions = load(tmp_path, "parquet", data_files=f"{run_folders.omni}/captions/*.parquet")
    assert sorted(captions["key"]) == sorted(images["__key__"])  # one caption per image
    out = tmp_path / "omni.parquet"
    images.to_parquet(str(out))
    assert pq.read_metadata(out).num_rows == counts["omni"]["ok"]
    uso = load(tmp_path, str(run_folders.uso))
    assert len(uso) == counts["uso"]["ok"]


def one_row(sql: str) -> tuple:
    return duckdb.sql(sql).fetchall()[0]


def test_duckdb_sql_over_the_documented_globs(run_folders, counts):
    omni, uso = run_folders.omni, run_folders.uso
    total, ok, distinct = one_row(
        f"SELECT count(*), count(*) FILTER (status = 'ok'), count(DISTINCT id) "
        f"FROM read_parquet(['{omni}/part-*.parquet', '{uso}/part-*.parquet'])"
    )
    assert (total, ok) == (
        counts["omni"]["items"] + counts["uso"]["items"],
        counts["omni"]["ok"] + counts["uso"]["ok"],
    )
    assert distinct == total
    (recursive,) = one_row(f"SELECT count(*) FROM read_parquet('{omni}/**/part-*.parquet')")
    assert recursive == counts["omni"]["items"]
    (with_style,) = one_row(
        f"SELECT count(*) FROM read_parquet('{uso}/part-*.parquet') WHERE scores.style IS NOT NULL"
    )
    assert with_style == 3
    (captions,) = one_row(f"SELECT count(*) FROM read_parquet('{omni}/captions/*.parquet')")
    assert captions == counts["omni"]["ok"]


def test_polars_sql_over_the_documented_globs(run_folders, counts):
    frame = pl.scan_parquet(f"{run_folders.omni}/part-*.parquet")
    result = pl.SQLContext(records=frame).execute(
        "SELECT status, count(*) AS n, max(retry) AS last FROM records GROUP BY status",
        eager=True,
    )
    assert result.to_dicts() == [{"status": "ok", "n": counts["omni"]["ok"], "last": 1}]


def test_pandas_reads_the_records(run_folders, counts):
    frame = pd.read_parquet(records(run_folders.omni, run_folders.uso))
    assert len(frame) == counts["omni"]["items"] + counts["uso"]["items"]
    assert frame["id"].is_unique


def test_the_webdataset_library_reads_two_runs(run_folders, counts):
    pipeline = wds.WebDataset(tars(run_folders.omni, run_folders.uso), shardshuffle=False)
    decoded = list(pipeline.decode("pil"))
    assert len(decoded) == counts["omni"]["ok"] + counts["uso"]["ok"]
    assert all(s["png"].size == (64, 48) and s["json"]["key"] == s["__key__"] for s in decoded)


@pytest.mark.slow
def test_ray_data_reads_tars_and_records(run_folders, counts):
    import ray

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        omni = run_folders.omni
        shards = ray.data.read_webdataset(tars(omni), decoder=False)
        assert shards.count() == counts["omni"]["ok"]
        folder = ray.data.read_webdataset(str(omni), file_extensions=["tar"], decoder=False)
        assert folder.count() == counts["omni"]["ok"]
        rows = ray.data.read_parquet(records(omni, run_folders.uso))
        assert rows.count() == counts["omni"]["items"] + counts["uso"]["items"]
        assert rows.filter(lambda r: r["status"] == "ok").count() == (
            counts["omni"]["ok"] + counts["uso"]["ok"]
        )
        provenance = shards.take(1)[0]["json"]  # Ray decodes .json members itself
        assert provenance["provenance_version"] == 2
    finally:
        ray.shutdown()
