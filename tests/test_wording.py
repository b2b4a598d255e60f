"""Counts in messages read right: "1 model actor", "2 shards", never "1 model actors" or
"shard(s)". The helper itself, then the messages built on it (pool, progress, run advice,
manifest validation) at 0, 1 and 2."""

from __future__ import annotations

import logging

from pipeline.execution.driver import RunSummary
from pipeline.execution.pool import ActorSpec
from pipeline.execution.progress import RunProgress
from pipeline.manifests.validation import ValidationReport
from pipeline.wording import counted, of_total, plural


def test_counted_nouns_take_the_plural_except_for_one():
    assert [counted(n, "shard") for n in (0, 1, 2, 17)] == [
        "0 shards",
        "1 shard",
        "2 shards",
        "17 shards",
    ]
    assert counted(1, "model actor") == "1 model actor"
    assert counted(3, "night's", "nights'") == "3 nights'"
    assert counted(1, "night's", "nights'") == "1 night's"
    assert plural(1, "item") == "item" and plural(0, "item") == "items"


def test_a_count_of_a_total_takes_the_totals_number():
    assert of_total(0, 1, "shard") == "0/1 shard"
    assert of_total(1, 1, "shard") == "1/1 shard"
    assert of_total(1, 4, "shard") == "1/4 shards"
    assert of_total(15, None, "item") == "15/? items"


def test_pool_messages_count_actors_in_the_right_number():
    spec = ActorSpec(object, (), kind="model actor", detail="for 'uso' (weights 'tiny')")
    assert spec.named(1) == "1 model actor for 'uso' (weights 'tiny')"
    assert spec.named(0) == "0 model actors for 'uso' (weights 'tiny')"
    assert spec.named(2) == "2 model actors for 'uso' (weights 'tiny')"
    assert spec.what == "model actors for 'uso' (weights 'tiny')"  # a label: plural
    assert ActorSpec(object, (), kind="eval actor").named(1) == "1 eval actor"


def test_progress_line_and_log_of_a_one_shard_one_item_run(caplog):
    progress = RunProgress(enabled=False, total_shards=1, total_items=1)
    progress.phase("running")
    progress.work_started()
    assert " | 0/1 shard | " in progress.detail()
    with caplog.at_level(logging.INFO, logger="restyle.progress"):
        progress.log_line()
    assert "progress: 0/1 item (0.0%), 0 failed, 0/1 shard, " in caplog.text


def test_run_advice_and_validation_summary_say_one_without_plural():
    one_missing = RunSummary("out/run", "f", shards_missing=1)
    assert one_missing.advice() == "1 shard not committed: rerun the same command to finish it"
    two_failed = RunSummary("out/run", "f", failed=2)
    assert two_failed.advice() == "2 items failed: rerun with --retry-failed to redo only them"
    one_failed = RunSummary("out/run", "f", failed=1)
    assert one_failed.advice() == "1 item failed: rerun with --retry-failed to redo only it"
    report = ValidationReport(rows=1, valid_items=1)
    assert report.format() == "0 shards, 1 row, 1 valid, 0 problems"
