"""Joining the Ray cluster a stage runs on: the one place that calls `ray.init`.

`check_address` runs before anything starts: an address nobody answers at, or where something
other than Ray answers, fails in seconds with one line, instead of Ray retrying (or waiting on)
the connection for minutes. Something else includes a gRPC or HTTP/2 server that is not Ray's
GCS (a proxy, an ingress): it is asked for the cluster id, as Ray itself asks first.
"""

from __future__ import annotations

import logging
import os
import socket
from urllib.parse import urlsplit

from pipeline.errors import RunError
from pipeline.execution.drain import keeping_signal_handlers
from pipeline.execution.logs import debugging, on_terminal

REACH_TIMEOUT_S = 5.0
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type 4, no flags
SETTINGS_FRAME_TYPE = 0x04
DEFAULT_GCS_PORT = 6379
# The GCS call `ray.init` makes first (an empty request); any answer but "no such method" or
# "no server" is Ray's, "unauthenticated" included (a cluster with token authentication).
GCS_CLUSTER_ID_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"
DEFAULT_CLIENT_PORT = 10001
_client_address = ""  # the ray:// address this process joined as a Ray Client, if any


class ClusterUnreachable(RunError):
    """The Ray address given does not answer."""


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) to probe for an address, or None for ones Ray resolves itself ("auto",
    "local", an empty value)."""
    if address in ("", "auto", "local"):
        return None
    if "://" in address:
        parts = urlsplit(address)
        default = DEFAULT_CLIENT_PORT if parts.scheme == "ray" else DEFAULT_GCS_PORT
        return (parts.hostname or "", parts.port or default)
    host, _, port = address.rpartition(":")
    if not host:
        return (address, DEFAULT_GCS_PORT)
    if not port.isdigit():
        raise ClusterUnreachable(f"--address {address!r}: the port must be a number")
    return (host, int(port))


def check_address(address: str | None, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Fail within `timeout_s` when the cluster at `address` (else $RAY_ADDRESS) cannot be
    reached; nothing to check for a local Ray or "auto"."""
    address = address or os.environ.get("RAY_ADDRESS") or ""
    target = _host_port(address)
    if target is None:
        return
    host, port = target
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as connection:
            connection.settimeout(timeout_s)
            answers_grpc = _speaks_grpc(connection)
        if not answers_grpc:
            reason = "something answers there, but not Ray (no gRPC on that port)"
        elif address.startswith("ray://"):
            return  # the Ray client server: its gRPC preface is the check
        else:
            not_gcs = _not_gcs_because(
                f"[{host}]:{port}" if ":" in host else f"{host}:{port}", timeout_s
            )
            if not_gcs is None:
                return
            reason = f"something answers there, but not Ray's GCS ({not_gcs})"
    except OSError as error:
        reason = "no answer" if isinstance(error, TimeoutError) else (error.strerror or str(error))
    raise ClusterUnreachable(
        f"cannot reach the Ray cluster at {address} ({host}:{port}: {reason}); check "
        "--address (host:port of the head's GCS, ray://host:10001, or auto) and that the "
        "cluster is up"
    )


def _speaks_grpc(connection: socket.socket) -> bool:
    """True when the peer answers the HTTP/2 connection preface with a SETTINGS frame, as
    Ray's GCS and client servers (gRPC) do; Ray itself would wait minutes on a silent port."""
    connection.sendall(HTTP2_PREFACE + EMPTY_SETTINGS_FRAME)
    header = b""
    try:
        while len(header) < 9:
            chunk = connection.recv(9 - len(header))
            if not chunk:
                return False
            header += chunk
    except TimeoutError:
        return False
    return header[3] == SETTINGS_FRAME_TYPE


def _not_gcs_because(target: str, timeout_s: float) -> str | None:
    """None when a Ray GCS answers at `target` (host:port), else what answered instead."""
    import grpc

    with grpc.insecure_channel(target) as channel:
        ask = channel.unary_unary(
            GCS_CLUSTER_ID_METHOD,
            request_serializer=lambda _: b"",
            response_deserializer=lambda data: data,
        )
        try:
            ask(None, timeout=timeout_s)
        except grpc.RpcError as error:
            code = error.code()
            not_ray = (
                grpc.StatusCode.UNIMPLEMENTED,
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            if code in not_ray:
                return error.details() or code.name.lower()
    return None


def client_address() -> str:
    """The ray://host:port this process joined as a Ray Client (`connect`), else ""."""
    return _client_address


def client_server(address: str) -> str:
    """host:port of a ray:// address's Ray Client server (port 10001 unless given)."""
    host, port = _host_port(address) or ("", DEFAULT_CLIENT_PORT)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason_line(error: BaseException) -> str:
    """One line of Ray's error: its first line, and the reason where the first only introduces
    it (Ray Client: "Initialization failure from server:" then a reason or a server-side
    traceback, whose last line is the reason)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        reason = lines[-1] if lines[1].startswith("Traceback") else lines[1]
        return f"{lines[0]} {reason}"
    return lines[0]


def connect(address: str | None = None) -> None:
    """Join the cluster at `address` (`auto`, `ray://...`, host:port), else the one in
    $RAY_ADDRESS (inside a Ray job), else start a local Ray. Already connected: nothing to do.
    Ray's own start-up notices stay quiet unless the log level is debug; its forwarded actor
    lines carry no colour codes when stderr is not a terminal."""
    global _client_address
    import ray

    if ray.is_initialized():
        return
    if not on_terminal():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    quiet = logging.DEBUG if debugging() else logging.WARNING
    joined = address or os.environ.get("RAY_ADDRESS") or ""
    _client_address = joined if joined.startswith("ray://") else ""  # before the watch asks
    try:
        with keeping_signal_handlers():
            if address or os.environ.get("RAY_ADDRESS"):
                ray.init(address=address or None, log_to_driver=True, logging_level=quiet)
            else:  # "local": a new Ray here, never a `ray start` cluster Ray would find itself
                ray.init(
                    address="local",
                    include_dashboard=False,
                    log_to_driver=True,
                    logging_level=quiet,
                )
    except (ConnectionError, RuntimeError, ValueError) as error:  # version mismatch, auth, ...
        _client_address = ""
        where = address or os.environ.get("RAY_ADDRESS") or "a local Ray"
        first = _reason_line(error)
        raise ClusterUnreachable(f"cannot join the Ray cluster at {where}: {first}") from error
