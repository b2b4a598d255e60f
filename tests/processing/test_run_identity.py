"""An operator feeds ids that look alike: each still gets its own output key, and rows that would
become one output item are refused before the run starts, naming both rows."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from support.run_helpers import parquet_bytes, run_config, webdataset_tar

from pipeline.execution.driver import Runner
from pipeline.manifests import list_shards
from pipeline.outputs.commit import sample_key
from pipeline.processing.run_identity import IdentityError, check_run_identity
from pipeline.storage import Storage, StorageSettings

LOOKALIKES = [
    "Photo",
    "photo",
    "PHOTO",
    "a.b",
    "a_b",
    "a-b",
    "a b",
    "a/b",
    "a:b",
    unicodedata.normalize("NFC", "café"),
    unicodedata.normalize("NFD", "café"),
    "x" * 100,
    "x" * 100 + "y",
    "x" * 100 + "z",
    "x" * 300,
    "a_b-" + sample_key("a.b").rsplit("-", 1)[1] + "0",  # one hex digit longer than a hashed key
]


def _parquet(path: Path, ids: list[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(parquet_bytes([{"id": i, "prompt": "p"} for i in ids]))
    return str(path)


def test_ids_that_differ_in_case_punctuation_normalization_or_length_keep_distinct_keys(
    tmp_path: Path,
):
    keys = [sample_key(i) for i in LOOKALIKES]
    assert len(set(keys)) == len(LOOKALIKES)
    assert all(len(k) <= 120 and "." not in k and "/" not in k for k in keys)
    storage = Storage(StorageSettings())
    shards = list_shards([_parquet(tmp_path / "m" / "a.parquet", LOOKALIKES)], storage)
    check_run_identity(shards, storage)  # nothing refused


def test_an_id_that_equals_another_ids_hashed_key_is_refused_at_plan_time(
    tmp_path: Path, tiny_weights: Path
):
    clash = sample_key("a.b")  # "a_b-<hash>": a valid id of its own
    manifest = _parquet(tmp_path / "m" / "a.parquet", ["a.b", "other", clash])
    runner = Runner(run_config(manifest, str(tmp_path / "out"), tiny_weights), StorageSettings())
    with pytest.raises(IdentityError) as refused:
        runner.plan()
    message = str(refused.value)
    assert "'a.b'" in message and repr(clash) in message and "row 0" in message
    assert "row 2" in message and "\n" not in message
    assert not (tmp_path / "out" / "test").exists()  # nothing was written


def test_the_same_id_in_two_shards_is_refused_before_anything_is_generated(
    tmp_path: Path, tiny_weights: Path
):
    first = _parquet(tmp_path / "m" / "a.parquet", ["one", "shared"])
    (tmp_path / "m" / "b.tar").write_bytes(
        webdataset_tar([{"id": "k0", "fields": {"id": "shared", "prompt": "p"}}])
    )
    runner = Runner(
        run_config(str(tmp_path / "m"), str(tmp_path / "out"), tiny_weights), StorageSettings()
    )
    with pytest.raises(IdentityError) as refused:
        runner.plan()
    assert "'shared'" in str(refused.value) and first in str(refused.value)
    assert "b.tar row 0" in str(refused.value)


def test_a_repeat_within_one_shard_is_left_to_the_shard_reader(tmp_path: Path):
    storage = Storage(StorageSettings())
    shards = list_shards([_parquet(tmp_path / "a.parquet", ["a", "a"])], storage)
    check_run_identity(shards, storage)  # recorded as a failed row when the shard is read
