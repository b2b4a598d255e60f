"""`--address` is checked before anything starts: a real Ray answers, a closed port or a port
where something else listens is refused in seconds (Ray itself would wait for minutes)."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray

from pipeline.execution.cluster import ClusterUnreachable, _reason_line, check_address


def silent_listener() -> tuple[socket.socket, int]:
    """A loopback port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    threading.Thread(target=lambda: [server.accept() for _ in range(8)], daemon=True).start()
    return server, server.getsockname()[1]


def test_a_port_that_answers_but_is_not_ray_is_refused_in_seconds():
    server, port = silent_listener()
    with server:
        started = time.monotonic()
        with pytest.raises(ClusterUnreachable, match="something answers there, but not Ray"):
            check_address(f"127.0.0.1:{port}", timeout_s=1)
        assert time.monotonic() - started < 5


def test_a_grpc_server_that_is_not_ray_is_refused_in_seconds():
    """A proxy or another service speaking HTTP/2 passes the preface; it is asked what Ray's
    GCS answers first, and does not know it (Ray itself would retry for ~20 s)."""
    import grpc

    server = grpc.server(ThreadPoolExecutor(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        started = time.monotonic()
        with pytest.raises(ClusterUnreachable, match="something answers there, but not Ray's GCS"):
            check_address(f"127.0.0.1:{port}", timeout_s=2)
        assert time.monotonic() - started < 5
    finally:
        server.stop(None)


def test_a_closed_port_is_refused_and_auto_is_left_to_ray():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ClusterUnreachable, match="Connection refused"):
        check_address(f"127.0.0.1:{port}")
    check_address("auto")  # Ray finds the local cluster itself
    with pytest.raises(ClusterUnreachable, match="the port must be a number"):
        check_address("head:http")


@pytest.mark.slow
def test_the_gcs_of_a_real_ray_passes_the_check():
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        check_address(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


def test_a_run_that_cannot_join_ray_leaves_no_run_folder_behind(
    tmp_path, tiny_weights, monkeypatch
):
    """Ray refusing the driver after the address check (a version mismatch, a missing token):
    the one-line error, and no `run.json` of a run that never started."""
    from support.run_helpers import parquet_bytes, run_config, uso_rows, write_images

    from pipeline.execution import cluster
    from pipeline.execution.driver import Runner
    from pipeline.storage import StorageSettings

    images = write_images(tmp_path / "images", 2)
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(parquet_bytes(uso_rows("a", 2, str(images[0]), str(images[1]))))

    def refused(address):
        raise ClusterUnreachable("cannot join the Ray cluster at head:6379: version mismatch")

    monkeypatch.setattr(cluster, "connect", refused)
    out = tmp_path / "out"
    runner = Runner(
        run_config([str(manifest)], str(out), tiny_weights), StorageSettings(), show_progress=False
    )
    with pytest.raises(ClusterUnreachable, match="version mismatch"):
        runner.run()
    assert not any(path.is_file() for path in out.rglob("*"))


@pytest.mark.parametrize(
    ("message", "line"),
    [
        (
            "Initialization failure from server:\nTraceback (most recent call last):\n"
            '  File "server.py", line 1\nRuntimeError: the client server did not start',
            "Initialization failure from server: RuntimeError: the client server did not start",
        ),
        (
            "Initialization failure from server:\nno free port",
            "Initialization failure from server: no free port",
        ),
        ("Version mismatch: 2.50 vs 2.51\nmore detail", "Version mismatch: 2.50 vs 2.51"),
        ("", "ConnectionError"),
    ],
)
def test_a_join_error_keeps_the_line_that_says_why(message, line):
    assert _reason_line(ConnectionError(message)) == line
