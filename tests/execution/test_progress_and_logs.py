"""What an operator reads while a run goes: in a log (no terminal), periodic INFO lines with the
total, percentage, failures by class, images/s and time left, and the phases; with
`--log-format json`, one JSON object per line; no colour codes."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest
from rich.console import Console

from pipeline.execution.logs import configure_logging
from pipeline.execution.progress import RunProgress, duration
from pipeline.outputs.commit import ShardStats


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level, environ = list(root.handlers), root.level, dict(os.environ)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    os.environ.clear()
    os.environ.update(environ)


def stats(ok: int, errors: dict[str, int]) -> ShardStats:
    failed = sum(errors.values())
    return ShardStats(0, "in", "r", "f", count=ok + failed, ok=ok, failed=failed, errors=errors)


def test_without_a_terminal_progress_is_periodic_info_lines_with_totals_and_eta(
    capsys, restore_logging
):
    configure_logging("info", "text")
    progress = RunProgress(enabled=True, total_shards=4, total_items=40, log_every_s=0)
    assert not progress.interactive  # pytest captures stderr: not a terminal
    progress.phase("loading 2 actors (weights tiny)")
    progress.work_started()
    progress.shard_committed(stats(8, {"bad_input": 1, "io_error": 1}))
    progress.update_live({7: (5, 0)})
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert any(" INFO restyle.progress: loading 2 actors (weights tiny)" in ln for ln in lines)
    heartbeat = [ln for ln in lines if "progress: " in ln][-1]
    assert " INFO restyle.progress: progress: 15/40 items (37.5%), 2 failed (bad_input 1, " in (
        heartbeat
    )
    assert "io_error 1), 1/4 shards, " in heartbeat and "images/s, ETA " in heartbeat
    assert "\x1b[" not in "\n".join(lines)  # no colour codes in a log


def test_shards_another_driver_claimed_leave_the_totals_and_the_eta(capsys, restore_logging):
    """`--join`: a shard another driver claimed is neither pending here nor in the ETA; the
    figures say how many were left to it, and a shard taken back counts here again."""
    configure_logging("info", "text")
    progress = RunProgress(enabled=True, total_shards=4, total_items=40, log_every_s=0)
    progress.work_started()
    progress.claimed_elsewhere(2, 10)
    progress.claimed_elsewhere(3, 10)
    progress.shard_committed(stats(10, {}))
    assert progress.own_items == 20
    assert progress.shard_figures() == "1/2 shards (+2 shards claimed by another driver)"
    eta_two_left = progress.eta_s(now=progress._work_started + 10)
    assert eta_two_left == pytest.approx(10.0)  # 10 items left here at 1 item/s, not 30
    heartbeat = [ln for ln in capsys.readouterr().err.splitlines() if "progress: " in ln][-1]
    assert "10/20 items (50.0%)" in heartbeat and "claimed by another driver" in heartbeat
    progress.claimed_here(3)  # its driver went away: this one took it over
    assert progress.own_items == 30
    assert progress.shard_figures() == "1/3 shards (+1 shard claimed by another driver)"
    progress.claimed_here(3)  # taken twice: counted once
    assert progress.own_items == 30
    progress.close()


def test_json_logs_are_one_object_per_line_with_the_progress_fields(capsys, restore_logging):
    configure_logging("info", "json")
    progress = RunProgress(enabled=True, total_shards=1, total_items=4, log_every_s=0)
    progress.work_started()
    progress.shard_committed(stats(3, {"out_of_memory": 1}))
    progress.close()
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    last = records[-1]
    assert (last["levelname"], last["name"]) == ("INFO", "restyle.progress")
    assert last["progress"]["items_done"] == 4 and last["progress"]["items_total"] == 4
    assert last["progress"]["errors"] == {"out_of_memory": 1}


JSON_DRIVER = """
import logging, sys
from pipeline.execution.logs import actor_env, configure_logging
configure_logging("info", "json")  # as `restyle --log-format json` does, before Ray is imported
import ray
from pipeline.execution.cluster import connect

@ray.remote(num_cpus=0.5)
class Worker:
    def work(self):
        configure_logging()  # as an actor does, from the driver's settings
        logging.getLogger("pipeline.execution.actor").info("actor loaded")
        return True

connect()  # a local Ray, as `restyle run` starts it
workers = [Worker.options(runtime_env={"env_vars": actor_env()}).remote() for _ in range(2)]
assert all(ray.get([w.work.remote() for w in workers]))
import time; time.sleep(3)  # Ray forwards actor lines a moment later
logging.getLogger("restyle.progress").info("done")
ray.shutdown()
"""


@pytest.mark.slow
def test_json_logs_stay_json_with_the_lines_ray_forwards_from_actors(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", JSON_DRIVER],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # no "(Worker pid=...)" prefixes
    actor_lines = [r for r in records if r.get("name") == "pipeline.execution.actor"]
    assert len(actor_lines) == 2 and all(r["message"] == "actor loaded" for r in actor_lines)


def test_the_log_level_hides_info_and_ray_token_notice_unless_debug(capsys, restore_logging):
    token_notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    configure_logging("warning", "text")
    logging.getLogger("restyle.progress").info("hidden")
    assert capsys.readouterr().err == ""
    assert not token_notice.isEnabledFor(logging.WARNING)  # Ray's own handler never sees it
    configure_logging("debug", "text")
    assert token_notice.isEnabledFor(logging.WARNING)


def test_durations_read_like_a_person_writes_them():
    assert [duration(s) for s in (None, 12, 245, 3725)] == ["?", "12s", "4m 05s", "1h 02m"]


def test_on_an_80_column_terminal_the_display_keeps_every_figure(restore_logging):
    progress = RunProgress(enabled=False, total_shards=2, total_items=40)
    progress.phase("running")
    progress.work_started()
    progress.shard_committed(stats(18, {"bad_input": 1, "io_error": 1}))
    progress.shard_committed(stats(20, {}))
    progress.set_notes(["1/2 actors ready (staging weights, loading)"])
    console = Console(width=80, file=io.StringIO(), record=True, color_system=None)
    console.print(progress.view())
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert "…" not in "\n".join(lines)  # nothing cut off
    assert lines[0].startswith("running | 2 failed (bad_input 1, io_error 1) | 2/2 shards | ")
    assert "images/s" in lines[0]
    assert " 40/40 100% ETA 0s " in lines[1]
    assert lines[2] == "  1/2 actors ready (staging weights, loading)"
