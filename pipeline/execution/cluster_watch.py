"""Noticing that the Ray cluster went away mid-run, and ending with the exit-code table's code.

When the head node (Ray's GCS) dies under a running driver, nothing reaches Python: `ray.wait`
keeps returning empty-handed, calls that ask the GCS (`ray.nodes()`) block, and after
`gcs_rpc_server_reconnect_timeout_s` (60 s unless RAY_gcs_rpc_server_reconnect_timeout_s says
otherwise) Ray's C++ core ends the process with `_exit(1)`: the code of a crash, and no line
saying what happened. `watching_cluster` runs a thread beside the driver that knocks on the
GCS's port every `PROBE_EVERY_S`; when it has not answered for `MARGIN_S` less than Ray's
timeout (so a GCS that restarts in time, as KubeRay's GCS fault tolerance does, costs nothing),
it reports one line naming the cluster and saying the rerun resumes, and ends the process with
`ExitCode.INCOMPLETE`, before Ray would. The main thread may be blocked inside Ray then, so the
thread ends the process itself; what was committed stays committed, and the run lease of a
dead driver is taken over at once by a rerun on the same host (after its TTL elsewhere).

A Ray Client session (`ray://host:10001`) has no core worker that Ray could end: its loss
reaches Python as a `ConnectionError` once Ray Client's reconnect grace period
(RAY_CLIENT_RECONNECT_GRACE_PERIOD, 30 s) has passed. The watch knocks on the client server's
port there (the GCS behind it may be out of this machine's reach by design), and a
`ConnectionError` (or a gRPC error) while that port does not answer becomes the same line,
naming the ray:// address; the thread only speaks if no error came `MARGIN_S` after the grace
period.

Ray is imported only inside the functions that need it: the command line installs its
reporter (`reporting_with`) in light commands too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from pipeline.errors import ClusterLostError, ExitCode

log = logging.getLogger(__name__)

PROBE_EVERY_S = 2.0
RAY_RECONNECT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
RAY_RECONNECT_DEFAULT_S = 60.0
MARGIN_S = 10.0  # we speak this long before Ray's core would end the process
CLIENT_GRACE_ENV = "RAY_CLIENT_RECONNECT_GRACE_PERIOD"
CLIENT_GRACE_DEFAULT_S = 30.0


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(env.get(name) or default)
    except ValueError:
        return default


def lost_after_s(environ: Mapping[str, str] | None = None, client: bool = False) -> float:
    """Seconds of silence after which the cluster counts as lost: `MARGIN_S` before Ray's own
    reconnect timeout ends the process (at least half of it); for a Ray Client session,
    `MARGIN_S` after its reconnect grace period (its own error normally speaks first)."""
    env = os.environ if environ is None else environ
    if client:
        return _seconds(env, CLIENT_GRACE_ENV, CLIENT_GRACE_DEFAULT_S) + MARGIN_S
    ray_s = _seconds(env, RAY_RECONNECT_ENV, RAY_RECONNECT_DEFAULT_S)
    return max(ray_s - MARGIN_S, ray_s / 2)


def lost_cluster_line(address: str, silent_s: float | None) -> str:
    """The one line an operator reads when the cluster is gone (`address`: the GCS's
    host:port, or the ray:// address of a Ray Client session)."""
    server = "Ray Client server" if address.startswith("ray://") else "GCS"
    silence = "does not answer" if silent_s is None else f"has not answered for {silent_s:.0f} s"
    return (
        f"lost the Ray cluster at {address}: its {server} {silence} (the head node died or was "
        "stopped); the shards committed so far are kept: rerun the same command to resume"
    )


def default_report(line: str) -> None:
    log.error("%s", line)


_reporter: Callable[[str], None] = default_report


@contextlib.contextmanager
def reporting_with(report: Callable[[str], None]) -> Iterator[None]:
    """While inside, a lost cluster is reported through `report` (the command's own error
    line, `--json` object included) instead of a log line."""
    global _reporter
    previous, _reporter = _reporter, report
    try:
        yield
    finally:
        _reporter = previous


def gcs_reachable(address: str, timeout_s: float = PROBE_EVERY_S) -> bool:
    """True when something accepts a connection on the GCS's host:port."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def watched_address() -> tuple[str, str]:
    """(the host:port to knock on, the address the line names) of the cluster this process
    joined: its GCS, or for a Ray Client session its client server and the ray:// address;
    ("", "") before `ray.init`."""
    import ray

    from pipeline.execution.cluster import client_address, client_server

    client = client_address()  # known without asking Ray, also once the session broke
    if client:
        return client_server(client), client
    if not ray.is_initialized():
        return "", ""
    try:
        address = ray.get_runtime_context().gcs_address or ""
    except Exception:  # not known (yet): asked again at the next probe
        return "", ""
    return (address, address) if ":" in address else ("", "")


def connection_lost(error: BaseException, probe: str) -> bool:
    """Whether an error that reached Python means the cluster is gone: one of the kinds a lost
    connection raises (Ray's RaySystemError and RpcError; Ray Client's ConnectionError and its
    subclasses; gRPC's RpcError) while nothing answers at `probe` (host:port) any more. Any
    other error, or one raised while the cluster still answers, is about something else."""
    import grpc
    from ray.exceptions import RaySystemError, RpcError

    kinds = (RaySystemError, RpcError, ConnectionError, grpc.RpcError)
    return bool(probe) and isinstance(error, kinds) and not gcs_reachable(probe)


class ClusterWatch:
    """The thread behind `watching_cluster`; `end` is how it ends the process (`os._exit`)."""

    def __init__(
        self,
        lost_after: float,
        address: str = "",
        end: Callable[[int], object] = os._exit,
        probe_every_s: float = PROBE_EVERY_S,
        name: str = "",
    ):
        # the host:port knocked on and the address the line names; found once Ray is initialized
        self.address = address
        self.name = name or address
        self.lost_after = lost_after
        self.probe_every_s = probe_every_s
        self._end = end
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cluster-watch", daemon=True)

    def start(self) -> ClusterWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.probe_every_s + 1)

    def _watch(self) -> None:
        last_answer = time.monotonic()
        while not self._stop.wait(self.probe_every_s):
            if not self.address:
                self.address, self.name = watched_address()
                if self.name.startswith("ray://"):
                    self.lost_after = lost_after_s(client=True)
                last_answer = time.monotonic()
                continue
            if gcs_reachable(self.address, self.probe_every_s):
                last_answer = time.monotonic()
                continue
            silent = time.monotonic() - last_answer
            if silent >= self.lost_after and not self._stop.is_set():
                _reporter(lost_cluster_line(self.name, silent))
                self._end(int(ExitCode.INCOMPLETE))
                return


@contextlib.contextmanager
def watching_cluster() -> Iterator[None]:
    """Watch the cluster this process joins (or has joined) while inside: the watch starts
    once Ray is initialized (`connect` may come later, inside). An error of a lost connection
    that reaches Python while the cluster does not answer (`connection_lost`: a Ray Client
    session's ConnectionError, Ray's RaySystemError) becomes one `ClusterLostError` line."""
    watch = ClusterWatch(lost_after_s()).start()
    try:
        yield
    except Exception as error:
        probe, name = (watch.address, watch.name) if watch.address else watched_address()
        if connection_lost(error, probe):
            raise ClusterLostError(lost_cluster_line(name, None)) from error
        raise
    finally:
        watch.stop()
