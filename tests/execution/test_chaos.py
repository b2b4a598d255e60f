"""Chaos: SIGKILL the driver, the actor and the S3 server at random points, resume each time with
the same command, and the run ends exactly as an uninterrupted one: no item lost, none
duplicated, the same tar bytes and records, and nothing left behind (no temp objects, no open
multipart uploads, no actor scratch folders).

The run is the real `restyle run` command line (tiny USO weights at 64x48, 2 steps) writing to
a SeaweedFS server of its own, which the test kills and restarts on the same ports and data
folder. Every file upload (the shards' tars) is multipart (RESTYLE_S3_MULTIPART_THRESHOLD=1;
objects written whole from memory under S3's smallest part are always one PUT) and every
request 50 ms slow (`support.fault_proxy`), so a kill mid-commit can leave an open upload. The schedule of events comes from a seeded RNG: the seed is printed, and
RESTYLE_CHAOS_SEED replays a schedule. Bounded: a few minutes on a 2-core machine.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from support.fault_proxy import FaultProxy
from support.run_helpers import cli_run_args, parquet_bytes, uso_rows, write_images
from support.s3_server import SeaweedS3Server

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parents[1]
SHARDS, ITEMS_PER_SHARD = 5, 2
EVENTS = ["driver", "driver", "actor", "actor", "s3", "s3"]  # at least two of each, shuffled
TIMING_FIELDS = ("read_s", "model_s", "encode_s")  # durations: the one part of a record that varies
RUN_TIMEOUT_S = 180
REQUEST_DELAY_S = 0.05
RUN = "r"  # one run name (provenance holds it): the two runs differ by output root only


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant at once (Ray's daemons start their own sessions,
    so a process-group kill would miss them)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)


def actor_pids(driver: int) -> list[int]:
    """The driver's model actors (Ray names the worker process "ray::StylizeActor...")."""
    found = []
    with contextlib.suppress(psutil.NoSuchProcess):
        for process in psutil.Process(driver).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if any("StylizeActor" in part for part in process.cmdline()[:1]):
                    found.append(process.pid)
    return found


class Chaos:
    """One run folder on one S3 server, driven by `restyle run` subprocesses."""

    def __init__(
        self,
        server: SeaweedS3Server,
        endpoint_url: str,
        bucket: str,
        manifest: Path,
        weights: Path,
        logs: Path,
    ):
        self.server = server
        self.logs = logs  # one stderr file per driver, for the failure report
        self.bucket = bucket
        self.client = server.client(max_attempts=1, timeout_s=5)
        self.scratch_tmp = Path(tempfile.mkdtemp(prefix="restyle-chaos-"))  # actors' $TMPDIR
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "AWS_ENDPOINT_URL": endpoint_url,
            "AWS_REGION": "us-east-1",
            "RESTYLE_S3_MULTIPART_THRESHOLD": "1",  # every file upload (tar) in parts
            "TMPDIR": str(self.scratch_tmp),
        }
        self.manifest = manifest
        self.weights = weights
        self.drivers: list[subprocess.Popen] = []

    def command(self, out: str) -> list[str]:
        args = cli_run_args(self.manifest, f"s3://{self.bucket}/{out}", self.weights)
        return [sys.executable, "-m", "pipeline.cli", *args, "--run", RUN]

    def start(self, out: str) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"driver-{len(self.drivers)}.log", "wb") as stderr:
            driver = subprocess.Popen(
                self.command(out),
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        self.drivers.append(driver)
        return driver

    def last_error(self) -> str:
        """The last error line of the latest driver (what made it exit)."""
        lines = (self.logs / f"driver-{len(self.drivers) - 1}.log").read_text().splitlines()
        errors = [line for line in lines if "error" in line.lower()]
        return (errors or lines or [""])[-1][:300]

    def run_to_end(self, out: str) -> int:
        driver = self.start(out)
        try:
            return driver.wait(timeout=RUN_TIMEOUT_S)
        finally:
            kill_tree(driver.pid)

    def markers(self, out: str) -> int:
        try:
            listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{out}/{RUN}/")
        except Exception:  # the server is down or restarting
            return -1
        return sum(o["Key"].endswith(".stats.json") for o in listing.get("Contents", []))

    def open_uploads(self) -> list[str]:
        try:
            listing = self.client.list_multipart_uploads(Bucket=self.bucket)
        except Exception:  # the server is down or restarting
            return []
        return sorted(u["Key"] for u in listing.get("Uploads", []))

    def objects(self, prefix: str) -> dict[str, bytes]:
        names = [
            o["Key"]
            for o in self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix).get(
                "Contents", []
            )
        ]
        return {
            name.removeprefix(prefix): self.client.get_object(Bucket=self.bucket, Key=name)[
                "Body"
            ].read()
            for name in names
        }

    def close(self) -> None:
        for driver in self.drivers:
            kill_tree(driver.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                driver.wait(timeout=30)
        shutil.rmtree(self.scratch_tmp, ignore_errors=True)


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    driver: subprocess.Popen,
    poll_s: float = 0.1,
) -> bool:
    """True once `condition` holds; False when the driver ended or the time ran out first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if driver.poll() is not None:
            return False
        time.sleep(poll_s)
    return False


def records_without_timings(data: bytes, run_uri: str) -> list[dict]:
    rows = pq.read_table(io.BytesIO(data)).to_pylist()
    for row in rows:
        for name in TIMING_FIELDS:
            row.pop(name)
        row["output_key"] = (row["output_key"] or "").replace(run_uri, "<run>")
    return rows


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


def test_kills_of_driver_actor_and_s3_resume_to_the_uninterrupted_result(tiny_weights, tmp_path):
    seed = int(os.environ.get("RESTYLE_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    print(f"chaos seed {seed} (replay: RESTYLE_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    events = rng.sample(EVENTS, len(EVENTS))

    images = write_images(tmp_path / "images", 2)
    manifest = tmp_path / "manifest"
    manifest.mkdir()
    for k in range(SHARDS):
        rows = uso_rows(f"c{k}", ITEMS_PER_SHARD, str(images[0]), str(images[1]))
        (manifest / f"part-{k}.parquet").write_bytes(parquet_bytes(rows))
    ids = {f"c{k}-{i}" for k in range(SHARDS) for i in range(ITEMS_PER_SHARD)}

    server = SeaweedS3Server.start(tmp_path / "s3")
    bucket = server.new_bucket("chaos").removeprefix("s3://")
    # The runs reach S3 through a proxy adding latency, so a commit's uploads stay open long
    # enough for a kill to land in the middle of one; the test itself talks to S3 directly.
    proxy = FaultProxy(server.endpoint_url, delay_s=REQUEST_DELAY_S).__enter__()
    chaos = Chaos(server, proxy.endpoint_url, bucket, manifest, tiny_weights, tmp_path / "logs")
    try:
        started = time.monotonic()
        assert chaos.run_to_end("reference") == 0
        log = [f"{time.monotonic() - started:5.0f} s  reference run done"]
        driver: subprocess.Popen | None = None
        for event in events:
            if driver is None or driver.poll() is not None:
                if driver is not None:
                    if driver.returncode >= 0:  # not our SIGKILL: it stopped on its own
                        log.append(f"  driver exited {driver.returncode}: {chaos.last_error()}")
                    kill_tree(driver.pid)
                driver = chaos.start("chaos")
            # A random point: early in start-up; in the middle of a commit (a multipart upload
            # is open); or once the actor runs (maybe after the next commit), plus a delay.
            point = rng.random()
            if point < 0.2:
                time.sleep(rng.uniform(1.0, 8.0))
            elif point < 0.55:
                wait_until(lambda d=driver: bool(actor_pids(d.pid)), 90, driver)
                wait_until(lambda: bool(chaos.open_uploads()), 60, driver, poll_s=0.01)
            else:
                wait_until(lambda d=driver: bool(actor_pids(d.pid)), 90, driver)
                if rng.random() < 0.5:
                    before = chaos.markers("chaos")
                    wait_until(lambda b=before: chaos.markers("chaos") > b, 15, driver)
                time.sleep(rng.uniform(0.0, 3.0))
            if event == "driver":
                kill_tree(driver.pid)
                driver.wait(timeout=30)
            elif event == "actor":
                wait_until(lambda d=driver: bool(actor_pids(d.pid)), 30, driver)
                for pid in actor_pids(driver.pid):
                    os.kill(pid, signal.SIGKILL)
            else:
                server.kill()
                time.sleep(rng.uniform(0.2, 3.0))
                server.restart()
            log.append(
                f"{time.monotonic() - started:5.0f} s  {event} killed at {point:.2f}; "
                f"{chaos.markers('chaos')} shards committed, "
                f"multipart uploads open: {chaos.open_uploads()}"
            )
        # The chaos is over: the last driver finishes, or the same command resumes the run
        # (again if a shard failed on the S3 outage) until it exits 0.
        code = None
        if driver is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = driver.wait(timeout=RUN_TIMEOUT_S)
            kill_tree(driver.pid)
        for _ in range(3):
            log.append(f"{time.monotonic() - started:5.0f} s  driver exited {code}")
            if code == 0:
                break
            code = chaos.run_to_end("chaos")
        print("\n".join(log))
        assert code == 0, (log, chaos.last_error())

        reference = chaos.objects(f"reference/{RUN}/")
        resumed = chaos.objects(f"chaos/{RUN}/")
        # the shard claims stay (who ran what); no lease or heartbeat of any driver is left
        claims = {f"_drivers/claims/shard-{k:06d}.json" for k in range(SHARDS)}
        for objects in (reference, resumed):
            assert {n for n in objects if n.startswith("_drivers/")} == claims
            for name in claims:
                del objects[name]
        names = {f"part-{k:06d}.{ext}" for k in range(SHARDS) for ext in ("tar", "parquet")}
        names |= {f"part-{k:06d}.stats.json" for k in range(SHARDS)} | {"run.json", "README.md"}
        names |= {"index/markers.parquet"}  # the marker index: a cache for status and resume
        assert set(resumed) == set(reference) == names  # no temp or extra objects
        # every interrupted multipart upload was aborted (listed without the tolerant helper)
        assert chaos.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        seen: list[str] = []
        for k in range(SHARDS):
            tar = f"part-{k:06d}.tar"
            assert resumed[tar] == reference[tar], f"{tar} differs from the uninterrupted run"
            members = tar_names(resumed[tar])
            assert len(members) == len(set(members)) == 3 * ITEMS_PER_SHARD
            records = f"part-{k:06d}.parquet"
            rows = records_without_timings(resumed[records], f"s3://{bucket}/chaos/{RUN}")
            assert rows == records_without_timings(
                reference[records], f"s3://{bucket}/reference/{RUN}"
            )
            assert all(row["status"] == "ok" for row in rows)
            seen += [row["id"] for row in rows]
        assert sorted(seen) == sorted(ids)  # 0 lost, 0 duplicated
        scratch = chaos.scratch_tmp / "restyle-scratch"
        assert not scratch.exists() or list(scratch.iterdir()) == []  # no actor scratch left
    finally:
        chaos.close()
        proxy.__exit__(None, None, None)
        server.stop()
