"""`restyle submit`: a job spec runs on a real Ray cluster, once per night.

The cluster is a real Ray head started by the test (`ray start --head --block` on free loopback
ports, token authentication on, the test S3 server's credentials in its environment, as a
cluster's pods would have them); the job is a real nightly run of the tiny USO model.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from support.paths import REPO
from support.run_helpers import SMALL, parquet_bytes, png_bytes

from pipeline.errors import ExitCode
from pipeline.jobs.specs import SPEC_ENV, SPEC_ORIGIN_ENV, parse_spec_text
from pipeline.jobs.submit import (
    SubmissionError,
    build_submission,
    client_for,
    project_requirements,
    submission_id,
)
from pipeline.weights.tiny import build_tiny_weights

RESTYLE = [sys.executable, "-m", "pipeline.cli"]
HEAD_START_S = 120


def nightly_spec(bucket: str, weights: Path) -> str:
    return f"""kind: nightly
name: shop
catalog: {bucket}/catalog/
output: {bucket}/restyled
model: uso
weights: {weights}
sampling: {{width: {SMALL["width"]}, height: {SMALL["height"]}, steps: {SMALL["steps"]}}}
options: {{device: cpu}}
actors: 1
"""


# ------------------------------------------------------------------ what gets submitted
def test_submission_id_entrypoint_and_runtime_envs(tmp_path):
    spec_path = tmp_path / "nightly.yaml"
    text = nightly_spec("s3://b", tmp_path / "w")
    spec = parse_spec_text(text, str(spec_path))

    project = build_submission(spec, "2026-09-01")
    assert project.submission_id == submission_id("shop", "2026-09-01") == "shop-2026-09-01"
    assert project.entrypoint == "python -m pipeline.cli nightly --no-progress --night 2026-09-01"
    assert project.runtime_env["env_vars"] == {SPEC_ENV: text, SPEC_ORIGIN_ENV: str(spec_path)}
    assert project.runtime_env["py_modules"] == [str(REPO / "pipeline")]
    pip = project.runtime_env["pip"]
    assert pip == project_requirements()
    names = [re.split(r"[\s<>=!~;\[]", p, maxsplit=1)[0] for p in pip]
    assert any(p.startswith("diffusers") for p in pip)
    # The cluster's own torch (its CUDA build) and Ray stay: neither is pinned into the job
    # (torchmetrics is fine).
    assert "torch" not in names and "ray" not in names, pip
    assert not any("pytest" in p for p in pip)  # extras are not installed on the cluster
    assert project.metadata == {
        "restyle_job": "shop",
        "restyle_kind": "nightly",
        "restyle_night": "2026-09-01",
    }

    cluster = build_submission(spec, "2026-09-01", runtime="cluster", submission="shop-rerun")
    assert cluster.entrypoint == "restyle nightly --no-progress --night 2026-09-01"
    assert set(cluster.runtime_env) == {"env_vars"} and cluster.submission_id == "shop-rerun"
    source = build_submission(spec, "2026-09-01", runtime="source")
    assert "pip" not in source.runtime_env and source.runtime_env["py_modules"]

    triplets = parse_spec_text("kind: triplets\nname: tri\n", "t.yaml")
    assert (
        build_submission(triplets, "2026-09-01").entrypoint
        == "python -m pipeline.cli triplets --no-progress"
    )
    with pytest.raises(SubmissionError, match="unknown runtime env 'conda'"):
        build_submission(spec, "2026-09-01", runtime="conda")


def test_submit_dry_run_prints_the_entrypoint_and_runtime_env_and_submits_nothing(
    tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from pipeline.cli.main import app

    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # nothing is contacted
    spec_path = tmp_path / "nightly.yaml"
    spec_path.write_text(nightly_spec("s3://b", tmp_path / "w"))
    result = CliRunner().invoke(
        app, ["submit", str(spec_path), "--night", "2026-09-01", "--dry-run", "--json"]
    )
    assert result.exit_code == ExitCode.OK, result.output
    shown = json.loads(result.stdout)
    assert shown["submission_id"] == "shop-2026-09-01"
    assert shown["entrypoint"] == "python -m pipeline.cli nightly --no-progress --night 2026-09-01"
    assert shown["runtime_env"]["env_vars"][SPEC_ENV] == spec_path.read_text()
    shown_names = [re.split(r"[\s<>=!~;\[]", p, maxsplit=1)[0] for p in shown["runtime_env"]["pip"]]
    assert "torch" not in shown_names and "ray" not in shown_names
    table = CliRunner().invoke(app, ["submit", str(spec_path), "--dry-run"])
    assert table.exit_code == 0 and "dry run: nothing submitted" in table.output


def test_no_address_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SubmissionError, match="no Ray cluster address"):
        client_for(None)
    port = _free_ports(1)[0]
    with pytest.raises(
        SubmissionError, match=f"cannot reach the Ray job API at http://127.0.0.1:{port}"
    ):
        client_for(f"http://127.0.0.1:{port}")


# ------------------------------------------------------------------ a real head
def _free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [s.getsockname()[1] for s in sockets]
    for sock in sockets:
        sock.close()
    return ports


class RayHead:
    """`ray start --head --block` with every port free-picked on loopback; stop() ends the
    processes it started (SIGTERM to `ray start`, which shuts its daemons down; then SIGKILL
    to any of its descendants still alive)."""

    def __init__(self, workdir: Path, env: dict[str, str]):
        (
            gcs,
            dashboard,
            agent_http,
            agent_grpc,
            metrics,
            runtime_env,
            node_manager,
            object_manager,
            client,
        ) = _free_ports(9)
        self.address = f"http://127.0.0.1:{dashboard}"
        self.env = env
        # Ray's socket paths must stay under 108 bytes: a short folder, not pytest's tmp_path.
        self.temp_dir = tempfile.mkdtemp(prefix="rayhead-")
        self.log_path = workdir / "ray-head.log"
        command = [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--node-manager-port={node_manager}",
            f"--object-manager-port={object_manager}",
            f"--ray-client-server-port={client}",
            "--num-cpus=2",
            "--num-gpus=0",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
        ]
        self.process = subprocess.Popen(
            command, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT, env=env
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Ready = the job API answers with this token (probed from a fresh process: Ray reads
        RAY_AUTH_MODE once per process)."""
        probe = (
            "import sys; from ray.job_submission import JobSubmissionClient; "
            "JobSubmissionClient(sys.argv[1]).list_jobs()"
        )
        deadline = time.monotonic() + HEAD_START_S
        last = ""
        while time.monotonic() < deadline and self.process.poll() is None:
            result = subprocess.run(
                [sys.executable, "-c", probe, self.address],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if result.returncode == 0:
                return
            last = result.stderr[-500:]
            time.sleep(1)
        self.stop()
        raise RuntimeError(
            f"Ray head did not become ready: {last}\n{self.log_path.read_text()[-3000:]}"
        )

    def stop(self) -> None:
        try:
            root = psutil.Process(self.process.pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            return
        root.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(family, timeout=30)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        self.process.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_submitted_nightly_job_runs_once_per_night(tmp_path, s3_server, s3_bucket):
    storage = s3_server.storage()
    storage.write_bytes(f"{s3_bucket}/images/item.png", png_bytes(1))
    storage.write_bytes(
        f"{s3_bucket}/catalog/part-0.parquet",
        parquet_bytes(
            [
                {"id": f"sku-{i}", "subject": "../images/item.png", "prompt": f"item {i}"}
                for i in range(2)
            ]
        ),
    )
    spec = tmp_path / "nightly.yaml"
    spec.write_text(nightly_spec(s3_bucket, build_tiny_weights(tmp_path / "weights")))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    cluster_env = {
        **os.environ,
        **auth,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_REGION": "us-east-1",
    }
    cluster_env.pop("RAY_ADDRESS", None)
    # A cluster image has Ray and the libraries in its base Python; this cluster runs from the
    # test's virtualenv, so the job's virtualenv (Ray's pip runtime env inherits the *base*
    # site-packages) is given this one's: restyle's pip list leaves Ray to the cluster.
    cluster_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [sysconfig.get_paths()["purelib"], cluster_env.get("PYTHONPATH")])
    )
    head = RayHead(tmp_path, cluster_env)
    try:

        def submit(*extra: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [
                    *RESTYLE,
                    "submit",
                    str(spec),
                    "--address",
                    head.address,
                    "--night",
                    "2026-09-01",
                    "--runtime-env",
                    "source",
                    *extra,
                ],
                capture_output=True,
                text=True,
                timeout=400,
                env={**os.environ, **auth},
            )

        first = submit("--wait")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "shop-2026-09-01" in first.stdout
        assert "job shop-2026-09-01: SUCCEEDED" in first.stderr
        assert "2 ok, 0 failed" in first.stdout  # the job's own summary, streamed back

        second = submit()
        assert second.returncode == ExitCode.ALREADY_SUBMITTED, second.stdout + second.stderr
        assert "'shop-2026-09-01' exists already (status SUCCEEDED)" in " ".join(
            second.stderr.split()
        )

        # Ctrl-C while following a job stops the following, not the job
        following = [*RESTYLE, "submit", str(spec), "--address", head.address]
        following += ["--night", "2026-09-02", "--runtime-env", "source", "--wait"]
        follower = subprocess.Popen(
            following,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **auth},
        )
        assert follower.stdout is not None
        for line in follower.stdout:  # the submission's table comes first, then the job's logs
            if "shop-2026-09-02" in line:
                break
        time.sleep(1)  # following by now
        follower.send_signal(signal.SIGINT)
        _, stopped = follower.communicate(timeout=60)
        assert follower.returncode == ExitCode.INTERRUPTED, stopped[-3000:]
        assert "stopped following job shop-2026-09-02 (SIGINT): the job keeps running" in stopped
        again = subprocess.run(  # the job is known, and was not stopped
            following[:-1],  # the same submission, without --wait
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **auth},
        )
        assert again.returncode == ExitCode.ALREADY_SUBMITTED, again.stdout + again.stderr
        assert "'shop-2026-09-02' exists already" in " ".join(again.stderr.split())
        assert "STOPPED" not in again.stderr

        wrong_token = subprocess.run(
            [*RESTYLE, "submit", str(spec), "--address", head.address, "--night", "2026-09-02"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"},
        )
        assert (
            wrong_token.returncode == ExitCode.CANNOT_START
            and "RAY_AUTH_TOKEN" in wrong_token.stderr
        )
        assert "not-the-token" not in wrong_token.stderr
    finally:
        head.stop()

    run = f"{s3_bucket}/restyled/runs/2026-09-01"
    assert storage.exists(f"{run}/part-000000.stats.json")
    stats = json.loads(storage.read_bytes(f"{run}/part-000000.stats.json"))
    assert (stats["ok"], stats["failed"]) == (2, 0)
    index = [
        u for u in storage.list(f"{s3_bucket}/restyled/index/") if u.endswith("/2026-09-01.parquet")
    ]
    assert len(index) == 1
