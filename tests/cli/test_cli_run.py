"""The `restyle` command as an operator uses it: plan, run, kill, resume, status, bad credentials."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from support.run_helpers import cli_run_args, parquet_bytes, uso_rows, write_images

from pipeline.errors import ExitCode

pytestmark = pytest.mark.slow

RESTYLE = [sys.executable, "-m", "pipeline.cli"]


@pytest.fixture
def three_shards(tmp_path: Path) -> Path:
    images = write_images(tmp_path / "images", 2)
    folder = tmp_path / "manifest"
    folder.mkdir()
    for k in range(3):
        (folder / f"part-{k}.parquet").write_bytes(
            parquet_bytes(uso_rows(f"s{k}", 2, str(images[0]), str(images[1])))
        )
    return folder


def restyle(
    *args: str, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*RESTYLE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def kill_process_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once, as a lost machine would stop them
    (Ray's daemons start their own sessions, so a process-group kill would miss them)."""
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)


def committed(run: Path) -> dict[str, bytes]:
    """The output tars (images, captions, provenance): byte-identical across reruns; the
    parquet records and markers also hold timings, which naturally differ."""
    return {p.name: p.read_bytes() for p in sorted(run.glob("part-*.tar"))}


def test_killed_run_resumes_to_byte_identical_outputs(three_shards, tiny_weights, tmp_path):
    plan = restyle(
        "plan",
        str(three_shards),
        "--out",
        str(tmp_path / "ref"),
        "--weights",
        str(tiny_weights),
        "--width",
        "64",
        "--height",
        "48",
        "--steps",
        "2",
        "--json",
    )
    assert plan.returncode == 0, plan.stderr
    plan = json.loads(plan.stdout)
    assert (plan["shards_total"], plan["shards_done"], plan["items_todo"]) == (3, 0, 6)
    assert plan["gpu_hours"] > 0

    reference = restyle(*cli_run_args(three_shards, tmp_path / "ref", tiny_weights))
    assert reference.returncode == 0, reference.stderr
    (ref_run,) = [p for p in (tmp_path / "ref").iterdir() if p.is_dir()]
    assert ref_run.name.startswith("uso-")  # default run name: model + config fingerprint

    # Interrupt a second run (the driver and every Ray process it started) after its first commit.
    out = tmp_path / "resumed"
    process = subprocess.Popen(
        [*RESTYLE, *cli_run_args(three_shards, out, tiny_weights)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    run = out / ref_run.name
    deadline = time.monotonic() + 300
    while not list(run.glob("*.stats.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    kill_process_tree(process.pid)
    process.wait()
    done_before = len(list(run.glob("*.stats.json")))
    assert 1 <= done_before < 3

    resumed = restyle(*cli_run_args(three_shards, out, tiny_weights), "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["shards_already_done"] == done_before, (
        resumed.stdout,
        [p.read_text()[:300] for p in run.glob("*.stats.json")],
    )
    assert summary["shards_committed"] == 3 - done_before
    assert committed(run) == committed(ref_run)  # no duplicates, identical bytes

    status = restyle("status", str(run), "--json")
    assert status.returncode == 0, status.stderr
    status = json.loads(status.stdout)
    assert (status["ok"], status["failed"], status["shards_committed"]) == (6, 0, 3)

    plan = restyle(
        "plan",
        str(three_shards),
        "--out",
        str(out),
        "--weights",
        str(tiny_weights),
        "--width",
        "64",
        "--height",
        "48",
        "--steps",
        "2",
        "--json",
    )
    assert json.loads(plan.stdout)["shards_todo"] == 0


def test_wrong_credentials_give_a_clear_error_without_the_secret(
    three_shards, tiny_weights, s3_server, s3_bucket
):
    secret = "wrong-secret-value-1234567890"
    result = restyle(
        *cli_run_args(three_shards, f"{s3_bucket}/out", tiny_weights),
        env={
            "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        },
    )
    assert result.returncode == ExitCode.CANNOT_START
    output = result.stdout + result.stderr
    assert "error:" in output and s3_bucket.removeprefix("s3://") in output
    assert secret not in output
