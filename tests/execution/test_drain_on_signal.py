"""SIGTERM to a running `restyle run` (a KubeRay stop, a preempted head): no new shards, the
shards in flight commit, exit 75; rerunning the same command resumes to the very bytes of a run
never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support.run_helpers import parquet_bytes, uso_rows, write_images

from pipeline.errors import ExitCode
from pipeline.execution.drain import drain_on_signals

SHARDS, ITEMS = 6, 2


def restyle_run(manifest: str, out: Path, weights: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline.cli",
        "run",
        manifest,
        "--out",
        str(out),
        "--run",
        "test",
        "--weights",
        str(weights),
        "--device",
        "cpu",
        "--actors",
        "1",
        "--no-progress",
        "--json",
    ]


def test_a_first_signal_starts_the_grace_a_second_ends_it_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with drain_on_signals(grace_s=30) as drain:
        assert not drain.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs between bytecodes of this thread
        assert drain.requested and not drain.expired() and 29 < drain.left_s() <= 30
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert drain.expired()
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_sigterm_drains_in_flight_shards_exits_75_and_a_rerun_gives_identical_bytes(
    tiny_weights, tmp_path
):
    images = write_images(tmp_path / "images", 2)
    for k in range(SHARDS):
        rows = uso_rows(f"d{k}", ITEMS, str(images[0]), str(images[1]))
        (tmp_path / f"part-{k}.parquet").write_bytes(parquet_bytes(rows))
    manifest = str(tmp_path / "part-*.parquet")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray each

    reference = subprocess.run(
        restyle_run(manifest, tmp_path / "ref", tiny_weights),
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert reference.returncode == ExitCode.OK, reference.stderr

    out = tmp_path / "stopped"
    command = restyle_run(manifest, out, tiny_weights)
    driver = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 300
    while not list((out / "test").glob("*.stats.json")) and time.monotonic() < deadline:
        assert driver.poll() is None, driver.communicate()[1]
        time.sleep(0.1)
    driver.send_signal(signal.SIGTERM)
    stdout, stderr = driver.communicate(timeout=300)

    assert driver.returncode == ExitCode.INTERRUPTED, stderr
    assert "SIGTERM: no new shards" in stderr
    committed = len(list((out / "test").glob("*.stats.json")))
    assert 1 <= committed < SHARDS  # the shards in flight committed, the queue was left
    summary = json.loads(stdout)
    assert summary["interrupted"] and summary["exit_code"] == 75
    assert (
        summary["next"].startswith("stopped by a signal; ") and "rerun the same" in summary["next"]
    )

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert rerun.returncode == ExitCode.OK, rerun.stderr
    ref, resumed = tmp_path / "ref" / "test", out / "test"
    for k in range(SHARDS):
        name = f"part-{k:06d}"
        assert (resumed / f"{name}.tar").read_bytes() == (ref / f"{name}.tar").read_bytes()
        ids = [r["id"] for r in pq.read_table(resumed / f"{name}.parquet").to_pylist()]
        assert ids == [f"d{k}-{i}" for i in range(ITEMS)]  # every item once
