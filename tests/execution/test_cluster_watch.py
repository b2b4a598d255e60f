"""A Ray cluster that dies mid-run ends the driver with the exit-code table's 4 and one line
naming the cluster, not with Ray core's exit 1 (its C++ core `_exit(1)`s the driver once the
GCS stays silent past its reconnect timeout; nothing reaches Python before).

The watch itself against a real closed and a real listening loopback port; the command line's
mapping; then a real `ray.cluster_utils.Cluster` whose head is killed under a running
`restyle run` and `restyle eval` (slow), and the reruns that resume them; a `restyle caption`
through Ray Client (ray://) that loses its cluster, and its rerun. Each lost command runs under
`--json` while a Ray task and the driver itself print on stdout: stdout holds the one JSON
object all the same."""

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
from collections.abc import Callable
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import typer
from support.run_helpers import cli_run_args, parquet_bytes, uso_rows, write_images

from pipeline.cli.common import operator_errors
from pipeline.errors import ClusterLostError, ExitCode
from pipeline.execution.cluster_watch import (
    CLIENT_GRACE_ENV,
    RAY_RECONNECT_ENV,
    ClusterWatch,
    connection_lost,
    gcs_reachable,
    lost_after_s,
    lost_cluster_line,
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


def test_a_ray_client_session_is_watched_at_its_client_server_after_its_grace_period():
    from pipeline.execution.cluster import client_server

    assert lost_after_s({}, client=True) == 40.0  # Ray Client's 30 s grace, plus the margin
    assert lost_after_s({CLIENT_GRACE_ENV: "10"}, client=True) == 20.0
    assert client_server("ray://head.example") == "head.example:10001"
    assert client_server("ray://10.0.0.5:20001") == "10.0.0.5:20001"
    line = lost_cluster_line("ray://10.0.0.5:10001", None)
    assert line.startswith(
        "lost the Ray cluster at ray://10.0.0.5:10001: its Ray Client server does not answer"
    )


def test_a_connection_error_means_a_lost_cluster_only_while_its_port_is_silent():
    from ray.exceptions import RaySystemError

    silent = closed_port_address()
    broke = ConnectionError("Failed during this or a previous request: ...")
    assert connection_lost(broke, silent)  # how Ray Client says its connection broke
    assert connection_lost(ConnectionAbortedError("..."), silent)
    assert connection_lost(RaySystemError("..."), silent)
    assert not connection_lost(ValueError("a bad item"), silent)  # about something else
    assert not connection_lost(broke, "")  # nothing known to knock on
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        answering = f"127.0.0.1:{server.getsockname()[1]}"
        assert not connection_lost(broke, answering)  # e.g. a storage endpoint's error


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
# The same command with noise on stdout while it runs: a Ray task's prints (Ray's log monitor
# forwards them to the driver's stdout) and writes to fd 1 (as C++ code or a library would).
CHATTY_DRIVER = """
import os, sys, threading, time
import ray
from pipeline.cli.main import app

@ray.remote(num_cpus=0)
def chatter():
    for _ in range(600):
        print("chatter from a Ray task", flush=True)
        time.sleep(0.5)

def chat():
    while not ray.is_initialized():  # restyle joins the cluster inside the command
        time.sleep(0.1)
    time.sleep(1)
    chatter.remote()
    while True:
        os.write(1, b"chatter on fd 1\\n")
        time.sleep(0.5)

threading.Thread(target=chat, daemon=True).start()
app(sys.argv[1:])
"""


def kill_head_at_once(cluster) -> None:
    """SIGKILL the head node's processes and the workers under them together, as a lost machine
    stops them all at once (a raylet alone killed leaves its workers running for a while)."""
    roots = [
        info.process.pid for infos in cluster.head_node.all_processes.values() for info in infos
    ]
    processes = []
    for pid in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            processes += [root, *root.children(recursive=True)]
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    cluster.head_node.kill_all_processes(check_alive=False, allow_graceful=False)


def lose_the_head_under(
    args: list[str], done: Callable[[], int], client: bool = False
) -> tuple[str, str, str]:
    """Run the command `args` (with `--json`, on stdout's noise) against a one-node
    `ray.cluster_utils.Cluster` (through its Ray Client server with `client`), kill its head
    once `done()` counts a first unit committed; (the address the driver joined, stdout,
    stderr) once the driver ended with exit 4 and the lost-cluster line naming that address."""
    from ray.cluster_utils import Cluster

    head: dict = {"num_cpus": 1, "include_dashboard": False}
    if client:
        head["ray_client_server_port"] = int(closed_port_address().rpartition(":")[2])
    cluster = Cluster(initialize_head=True, head_node_args=head)
    address = f"ray://127.0.0.1:{head['ray_client_server_port']}" if client else cluster.address
    env = {
        **os.environ,
        RAY_RECONNECT_ENV: "30",  # the watch speaks after 20 s of silence
        CLIENT_GRACE_ENV: "10",  # Ray Client gives up reconnecting after 10 s
    }
    driver = None
    try:
        for attempt in (1, 2, 3):
            driver = subprocess.Popen(
                [sys.executable, "-c", CHATTY_DRIVER, *args, "--address", address, "--json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                start_new_session=True,
            )
            deadline = time.monotonic() + 300
            while not done() and driver.poll() is None:
                assert time.monotonic() < deadline, "nothing committed"
                time.sleep(0.2)
            if driver.poll() is None:
                break
            early = driver.communicate()
            # Ray Client's server sometimes fails to start this client's own server process on
            # 2 busy cores ("Initialization failure from server", exit 5, after ~30 s): Ray's
            # start-up, before anything under test; an operator reruns, and so does this test
            assert client and attempt < 3 and "Initialization failure" in early[1], early
            print(f"Ray Client start-up failed (attempt {attempt}): {early[1].strip()}")
        kill_head_at_once(cluster)
        stdout, stderr = driver.communicate(timeout=120)
    finally:
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        cluster.shutdown()
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert driver.returncode == ExitCode.INCOMPLETE, stderr[-3000:]
    assert len(errors) == 1 and f"lost the Ray cluster at {address}" in errors[0]
    assert "rerun the same command to resume" in errors[0]
    # stdout is the one JSON object: the chatter, and Ray's "(raylet) Raylet is terminated
    # ..." when it comes, went to stderr
    assert json.loads(stdout)["exit_name"] == "INCOMPLETE", stdout
    assert "chatter from a Ray task" in stderr and "chatter on fd 1" in stderr
    return address, stdout, stderr


@pytest.mark.slow
def test_a_head_killed_mid_run_ends_the_driver_with_4_and_the_rerun_resumes(
    tmp_path: Path, tiny_weights
):
    images = write_images(tmp_path / "images", 2)
    for k in range(4):
        rows = uso_rows(f"h{k}", 2, str(images[0]), str(images[1]))
        for row in rows:
            row["steps"] = 10  # shards long enough that the run is still going at the kill
        (tmp_path / f"part-{k}.parquet").write_bytes(parquet_bytes(rows))
    manifest, out = tmp_path / "part-*.parquet", tmp_path / "out"
    args = [*cli_run_args(manifest, out, tiny_weights), "--run", "r", "--device", "cpu"]
    lose_the_head_under(args, lambda: len(list((out / "r").glob("part-*.stats.json"))))
    committed = len(list((out / "r").glob("part-*.stats.json")))
    print(f"shards committed when the cluster was lost: {committed} of 4")
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


EVAL_SHARDS = {k: [f"e{k}-{i}" for i in range(16)] for k in range(6)}


def committed_run(tmp_path: Path) -> Path:
    """A run of `EVAL_SHARDS` committed as the runner commits it (no model run)."""
    from support.committed_run import write_run

    from pipeline.storage import Storage, StorageSettings

    run = tmp_path / "run"
    write_run(Storage(StorageSettings.from_env()), str(run), EVAL_SHARDS)
    return run


def sidecars(run: Path, folder: str) -> int:
    """Shards done by `restyle eval` ("scores") or `restyle caption` ("captions"): a shard's
    parquet there is written last."""
    return len(list((run / folder).glob("*.parquet")))


def rerun_does_the_rest_once(args: list[str], run: Path, folder: str, kept: int) -> None:
    """Rerun the eval or caption command `args` on a local Ray: it keeps the `kept` shards
    done, does the others, and every item of the run has one row in `folder`."""
    rerun = subprocess.run(
        [sys.executable, "-c", DRIVER, *args, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert rerun.returncode == ExitCode.OK, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    done = summary["shards_scored" if folder == "scores" else "shards_captioned"]
    assert (summary["shards_kept"], done) == (kept, len(EVAL_SHARDS) - kept)
    files = sorted((run / folder).glob("*.parquet"))
    ids = [i for path in files for i in pq.read_table(path, columns=["id"])["id"].to_pylist()]
    assert sorted(ids) == sorted(i for items in EVAL_SHARDS.values() for i in items)


@pytest.mark.slow
def test_a_head_killed_mid_eval_ends_it_with_4_and_the_rerun_scores_each_item_once(tmp_path):
    run = committed_run(tmp_path)
    args = ["eval", str(run), "--models", "tiny", "--device", "cpu", "--actors", "1"]
    lose_the_head_under(args, lambda: sidecars(run, "scores"))
    kept = sidecars(run, "scores")
    print(f"shards scored when the cluster was lost: {kept} of {len(EVAL_SHARDS)}")
    assert 1 <= kept < len(EVAL_SHARDS)

    rerun_does_the_rest_once(args, run, "scores", kept)


@pytest.mark.slow
def test_a_lost_ray_client_connection_ends_caption_with_4_and_the_rerun_captions_each_item_once(
    tmp_path,
):
    """Through Ray Client, and for `restyle caption` (watched like eval: one test for both);
    the local rerun captions the shards left, each item once."""
    run = committed_run(tmp_path)
    args = ["caption", str(run), "--model", "tiny", "--device", "cpu", "--actors", "1"]
    address, _, stderr = lose_the_head_under(args, lambda: sidecars(run, "captions"), True)
    kept = sidecars(run, "captions")
    print(f"shards captioned when the cluster was lost: {kept} of {len(EVAL_SHARDS)}")
    assert 1 <= kept < len(EVAL_SHARDS)
    assert address.startswith("ray://127.0.0.1:")
    # Ray Client's own ConnectionError ("does not answer") or the watch ("has not answered for
    # 20 s"), whichever comes first
    assert f"lost the Ray cluster at {address}: its Ray Client server " in stderr

    rerun_does_the_rest_once(args, run, "captions", kept)
