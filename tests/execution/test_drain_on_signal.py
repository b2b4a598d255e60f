"""SIGTERM to a running `restyle run` (a KubeRay stop, a preempted head): no new shards, the
shards in flight commit, exit 75; rerunning the same command resumes to the very bytes of a run
never interrupted. Outside the dispatch of shards (planning, joining Ray, waiting for GPU
capacity, any other command) a signal stops the command at once, with the same exit code and
one line, and its cleanup runs (the run's lease is released)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import typer
from support.run_helpers import parquet_bytes, sigterm_at_first_commit, uso_rows, write_images

from pipeline.cli.common import operator_errors
from pipeline.errors import ExitCode, Interrupted
from pipeline.execution.drain import drain_on_signals, keeping_signal_handlers

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


def busy_swallowing_exceptions() -> None:
    """Work that turns any `Exception` into a failed item, as an item loop does: a stop must
    pass through it."""
    for _ in range(500):
        with contextlib.suppress(Exception):
            time.sleep(0.01)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_outside_a_drain_a_signal_stops_the_command_with_75_in_one_line(sig, capsys):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(typer.Exit) as done, operator_errors(as_json=True):
        os.kill(os.getpid(), sig)
        busy_swallowing_exceptions()
        pytest.fail("the signal did not stop the command")
    assert done.value.exit_code == ExitCode.INTERRUPTED
    out, err = capsys.readouterr()
    line = f"stopped by {sig.name}: what was committed is kept; rerun the same command to resume"
    assert err.strip() == f"error: {line}"
    assert json.loads(out) == {"error": line, "exit_code": 75, "exit_name": "INTERRUPTED"}
    assert signal.getsignal(signal.SIGTERM) is before  # the command's handlers are gone


def test_a_drain_inside_a_command_takes_the_signal_and_gives_the_stop_back():
    with operator_errors():
        stop = signal.getsignal(signal.SIGTERM)
        with drain_on_signals(grace_s=30) as drain:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert drain.requested  # asked to drain, not stopped
        assert signal.getsignal(signal.SIGTERM) is stop


def test_rays_sigterm_handler_is_undone_and_a_sigterm_it_caught_becomes_a_stop():
    with operator_errors():
        ours = signal.getsignal(signal.SIGTERM)
        with pytest.raises(Interrupted, match="stopped by SIGTERM"), keeping_signal_handlers():
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # as ray.init
            os.kill(os.getpid(), signal.SIGTERM)
            busy_swallowing_exceptions()
        assert signal.getsignal(signal.SIGTERM) is ours


def stderr_lines(
    process: subprocess.Popen, marker: str
) -> tuple[list[str], threading.Event, threading.Thread]:
    """Collect `process`'s stderr lines as they come, until it closes; the event is set at the
    first line holding `marker`."""
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if marker in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return lines, seen, reader


@pytest.mark.slow
def test_sigterm_while_planning_against_an_unreachable_store_exits_75_in_one_line(
    tiny_weights, tmp_path
):
    """Before Ray (listing the manifest, here through a storage outage that the retry budget
    rides out for minutes) Python's default would end the driver with -15, no line."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))  # bound, never listening: every request is refused
    endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
    }
    command = [
        *restyle_run("s3://bucket/part-*.parquet", Path("/unused"), tiny_weights),
        "--endpoint-url",
        endpoint,
    ]
    command[command.index("--out") + 1] = "s3://bucket/out"
    driver = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    lines, retrying, reader = stderr_lines(driver, "storage retry budget")
    try:
        assert retrying.wait(120), "".join(lines)[-3000:]
        driver.send_signal(signal.SIGTERM)
        driver.wait(timeout=60)
    finally:
        silent.close()
        if driver.poll() is None:
            driver.kill()
    assert driver.stdout is not None
    stdout = driver.stdout.read()
    reader.join(30)
    stderr = "".join(lines)
    assert driver.returncode == ExitCode.INTERRUPTED, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: stopped by SIGTERM: what was committed is kept; rerun the same command to resume"
    ]
    assert json.loads(stdout)["exit_name"] == "INTERRUPTED"


@pytest.mark.slow
def test_joining_ray_keeps_the_commands_stop_on_sigterm():
    """`ray.init` installs its own SIGTERM handler in the driver (`sys.exit(15)`, no exit code
    of the table) between joining and the dispatch's drain; restyle's comes back."""
    import ray

    from pipeline.execution.cluster import connect

    with operator_errors():
        ours = signal.getsignal(signal.SIGTERM)
        try:
            connect(None)  # a local Ray
            assert ray.is_initialized()
            assert signal.getsignal(signal.SIGTERM) is ours
        finally:
            ray.shutdown()


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
    code, stdout, stderr = sigterm_at_first_commit(command, out / "test")

    assert code == ExitCode.INTERRUPTED, stderr
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
