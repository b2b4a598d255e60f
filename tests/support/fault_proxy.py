"""A fault-injecting HTTP proxy in front of the real S3 server, for retry tests.

Requests pass through unchanged (the Host header too, so SigV4 signatures stay valid) to the
real SeaweedFS server, except those a test scripts to fail: answered with an S3 error such as
503 SlowDown, or forwarded but with the response body cut off after some bytes (a connection
dropped mid-download), or dropped without an answer; `outage_for` fails every request for a
while (a store that is down). Every request is logged, so a test can count the attempts a client made.
`delay_s` adds a fixed latency to every request (a far-away store, for the catalog-scale
benchmarks). Nothing here imitates S3: successes come from the real server.

Benchmarks run it in a process of its own, so its threads do not compete with the measured
driver for the GIL: `python tests/support/fault_proxy.py <upstream> --delay-ms 20` prints the
proxy's endpoint on its first line and serves until killed.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Not forwarded: hop-by-hop headers, and Expect (the proxy already answered "100 Continue";
# SigV4 never signs Expect).
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "expect",
}


@dataclass
class Fault:
    """What to do to the next matching request."""

    method: str | None = None  # None = any method
    status: int | None = None  # answer with this status and an S3 error body...
    code: str = "SlowDown"
    cut_after: int | None = None  # ...or forward, but drop the connection after this many bytes
    path_contains: str | None = None  # only requests whose path contains this
    sticky: bool = False  # keep failing every matching request until `clear()`
    drop: bool = False  # ...or close the connection without an answer (a store that is down)


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # many clients connect at once; the default backlog of 5 stalls them
    daemon_threads = True


class FaultProxy:
    """`endpoint_url` of a proxy to `upstream`; `fail_next` / `cut_next` script faults."""

    def __init__(self, upstream: str, delay_s: float = 0.0):
        parts = urlsplit(upstream)
        self.delay_s = delay_s
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, str]] = []  # (method, path, "forwarded" | fault)
        self.gets: list[tuple[str, str | None]] = []  # (path, Range header) of forwarded GETs
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests the proxy held at once
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(
        self, count: int, status: int = 503, code: str = "SlowDown", method: str | None = None
    ) -> None:
        with self._lock:
            self.faults.extend(Fault(method, status, code) for _ in range(count))

    def fail_matching(
        self,
        path_contains: str,
        status: int = 503,
        code: str = "SlowDown",
        method: str | None = None,
    ) -> None:
        """Fail every request whose path contains `path_contains`, until `clear()`."""
        with self._lock:
            self.faults.append(
                Fault(method, status, code, path_contains=path_contains, sticky=True)
            )

    def outage(self, drop: bool = False) -> None:
        """Every request fails until `clear()`: answered 503 SlowDown, or with `drop` its
        connection closed without an answer (as a store that is down or restarting)."""
        with self._lock:
            self.faults.append(Fault(status=None if drop else 503, sticky=True, drop=drop))

    def outage_for(self, seconds: float, drop: bool = False) -> None:
        """`outage` from now on, cleared after `seconds` (a timer thread)."""
        self.outage(drop)
        timer = threading.Timer(seconds, self.clear)
        timer.daemon = True
        timer.start()

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def cut_next(self, count: int, after_bytes: int, method: str = "GET") -> None:
        with self._lock:
            self.faults.extend(Fault(method, cut_after=after_bytes) for _ in range(count))

    def requests(self, method: str | None = None) -> list[tuple[str, str, str]]:
        with self._lock:
            return [r for r in self.log if method is None or r[0] == method]

    def downloads(self, path_contains: str = "") -> list[str]:
        """Paths of the whole-object downloads forwarded: GETs without a Range header or whose
        range starts at byte 0 (a parallel ranged download of one object counts once)."""
        with self._lock:
            return [
                path
                for path, ranged in self.gets
                if path_contains in path and (ranged is None or ranged.startswith("bytes=0-"))
            ]

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self.faults):
                if fault.method in (None, method) and (
                    fault.path_contains is None or fault.path_contains in path
                ):
                    return fault if fault.sticky else self.faults.pop(i)
        return None

    def _record(self, method: str, path: str, what: str) -> None:
        with self._lock:
            self.log.append((method, path, what))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _serve(self) -> None:
                with proxy._lock:
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                try:
                    self._forward()
                finally:
                    with proxy._lock:
                        proxy.in_flight -= 1

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.delay_s:
                    time.sleep(proxy.delay_s)
                fault = proxy._take_fault(self.command, self.path)
                if fault is not None and fault.drop:
                    proxy._record(self.command, self.path, "dropped")
                    self.close_connection = True
                    return
                if fault is not None and fault.status is not None:
                    proxy._record(self.command, self.path, f"{fault.status} {fault.code}")
                    payload = (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}'
                        f"</Code><Message>injected by FaultProxy</Message></Error>"
                    ).encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=60
                )
                try:
                    upstream.putrequest(
                        self.command, self.path, skip_host=True, skip_accept_encoding=True
                    )
                    for name, value in self.headers.items():
                        if name.lower() not in HOP_BY_HOP:
                            upstream.putheader(name, value)
                    upstream.endheaders(body if body else None)
                    response = upstream.getresponse()
                    data = response.read()
                    if self.command == "GET":
                        with proxy._lock:
                            proxy.gets.append((self.path, self.headers.get("Range")))
                    cut = fault.cut_after if fault is not None else None
                    proxy._record(
                        self.command,
                        self.path,
                        "forwarded" if cut is None else f"cut after {cut} bytes",
                    )
                    self.send_response(response.status, response.reason)
                    head = self.command == "HEAD"  # no body: keep the object's real length
                    for name, value in response.getheaders():
                        if name.lower() not in HOP_BY_HOP and (
                            head or name.lower() != "content-length"
                        ):
                            self.send_header(name, value)
                    if not head:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    if cut is None:
                        self.wfile.write(data)
                    else:  # promise the whole body, send part of it, drop the connection
                        self.wfile.write(data[:cut])
                        self.wfile.flush()
                        self.close_connection = True
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="A latency-adding proxy in front of an S3 server.")
    parser.add_argument("upstream", help="http://host:port of the real S3 server")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="latency added per request")
    args = parser.parse_args()
    with FaultProxy(args.upstream, delay_s=args.delay_ms / 1000) as proxy:
        print(proxy.endpoint_url, flush=True)
        sys.stdin.read()  # serve until the parent closes our stdin (or kills us)


if __name__ == "__main__":
    main()
