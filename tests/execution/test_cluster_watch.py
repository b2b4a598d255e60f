"""A Ray cluster that dies mid-run ends the driver with the exit-code table's 4 and one line
naming the cluster, not with Ray core's exit 1 (its C++ core `_exit(1)`s the driver once the
GCS stays silent past its reconnect timeout; nothing reaches Python before).

The watch itself against a real closed and a real listening loopback port; the command line's
mapping; then a real `ray.cluster_utils.Cluster` whose head is killed under a running
`restyle run` (slow), and the rerun that resumes it."""

from __future__ import annotations

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
from support.run_helpers import cli_run_args, parquet_bytes, uso_rows, write_images

from pipeline.cli.common import operator_errors
from pipeline.errors import ClusterLostError, ExitCode
from pipeline.execution.cluster_watch import (
    RAY_RECONNECT_ENV,
    ClusterWatch,
    gcs_reachable,
    lost_after_s,
    reporting_with,
)


def closed_port_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_the_watch_speaks_before_rays_own_reconnect_timeout():
    assert lost_after_s({}) == 50.0  # Ray's default 60 s, less the margin
    assert lost_after_s({RAY_RECONNECT_ENV: "30"}) == 20.0
    assert lost_after_s({RAY_RECONNECT_ENV: "8"}) == 4.0  # at least half of a short one
    assert lost_after_s({RAY_RECONNECT_ENV: "soon"}) == 50.0


def test_a_silent_gcs_is_reported_in_one_line_and_ends_the_process_with_4():
    address = closed_port_address()
    assert not gcs_reachable(address, 1.0)
    lines: list[str] = []
    ended = threading.Event()
    codes: list[int] = []

    def end(code: int) -> None:
        codes.append(code)
        ended.set()

    with reporting_with(lines.append):
        watch = ClusterWatch(0.3, address, end=end, probe_every_s=0.1).start()
        assert ended.wait(30), "the watch never gave up on a closed port"
        watch.stop()
    assert codes == [ExitCode.INCOMPLETE]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith(f"lost the Ray cluster at {address}: its GCS has not answered")
    assert lines[0].endswith("rerun the same command to resume")


def test_a_gcs_that_answers_is_left_alone():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        server.settimeout(10)  # a watch that stopped knocking fails the test, never hangs it
        address = f"127.0.0.1:{server.getsockname()[1]}"
        codes: list[int] = []
        watch = ClusterWatch(0.3, address, end=codes.append, probe_every_s=0.1).start()
        for _ in range(10):  # ten probes, each well past the 0.3 s of silence allowed
            time.sleep(0.1)
            with server.accept()[0]:
                pass
        watch.stop()
    assert codes == []


def test_the_command_line_maps_a_lost_cluster_to_exit_4_in_one_line(capsys):
    line = "lost the Ray cluster at 10.0.0.1:6379: its GCS does not answer (...); rerun"
    with pytest.raises(typer.Exit) as done, operator_errors(as_json=True):
        raise ClusterLostError(line)
    assert done.value.exit_code == ExitCode.INCOMPLETE
    out, err = capsys.readouterr()
    assert json.loads(out) == {"error": line, "exit_code": 4, "exit_name": "INCOMPLETE"}
    assert err.strip() == f"error: {line}"


def test_inside_a_command_the_watch_reports_through_the_commands_error_line(capsys):
    from pipeline.execution import cluster_watch

    with operator_errors(as_json=True):
        cluster_watch._reporter("lost the Ray cluster at h:1: ...")
    out, err = capsys.readouterr()
    assert (
        json.loads(out)["exit_code"] == 4
        and err.strip() == "error: lost the Ray cluster at h:1: ..."
    )
    assert cluster_watch._reporter is cluster_watch.default_report  # restored


DRIVER = """
import sys
from pipeline.cli.main import app
app(sys.argv[1:])
"""


@pytest.mark.slow
def test_a_head_killed_mid_run_ends_the_driver_with_4_and_the_rerun_resumes(
    tmp_path: Path, tiny_weights
):
    from ray.cluster_utils import Cluster

    images = write_images(tmp_path / "images", 2)
    for k in range(4):
        rows = uso_rows(f"h{k}", 2, str(images[0]), str(images[1]))
        for row in rows:
            row["steps"] = 10  # shards long enough that the run is still going at the kill
        (tmp_path / f"part-{k}.parquet").write_bytes(parquet_bytes(rows))
    manifest, out = tmp_path / "part-*.parquet", tmp_path / "out"
    args = [*cli_run_args(manifest, out, tiny_weights), "--run", "r", "--device", "cpu"]
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    address = cluster.address  # None once the cluster is shut down
    env = {**os.environ, RAY_RECONNECT_ENV: "30"}  # the watch speaks after 20 s of silence
    driver = None
    try:
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, *args, "--address", address, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while not list((out / "r").glob("part-*.stats.json")) and driver.poll() is None:
            assert time.monotonic() < deadline, "no shard committed"
            time.sleep(0.2)
        assert driver.poll() is None, driver.communicate()
        cluster.head_node.kill_all_processes(check_alive=False, allow_graceful=False)
        stdout, stderr = driver.communicate(timeout=120)
    finally:
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        cluster.shutdown()
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert driver.returncode == ExitCode.INCOMPLETE, stderr[-3000:]
    assert len(errors) == 1 and f"lost the Ray cluster at {address}" in errors[0]
    assert "rerun the same command to resume" in errors[0]
    # the last line: Ray's log monitor may print "(raylet) Raylet is terminated ..." before it
    assert json.loads(stdout.strip().splitlines()[-1])["exit_name"] == "INCOMPLETE", stdout
    committed = len(list((out / "r").glob("part-*.stats.json")))
    assert 1 <= committed < 4

    rerun = subprocess.run(
        [sys.executable, "-c", DRIVER, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert rerun.returncode == ExitCode.OK, rerun.stderr[-3000:]
    records = sorted((out / "r").glob("part-*.parquet"))
    ids = [i for path in records for i in pq.read_table(path, columns=["id"])["id"].to_pylist()]
    assert sorted(ids) == sorted(f"h{k}-{i}" for k in range(4) for i in range(2))
