"""Interactive commands give up on an unreachable store after a short storage retry budget
(20 s) unless the operator sets one; `run` and `eval` keep 300 s to ride out an outage."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from pipeline.cli.common import LIGHT_RETRY_BUDGET_S, storage_settings
from pipeline.errors import ExitCode
from pipeline.storage.settings import DEFAULT_RETRY_BUDGET_S, RETRY_BUDGET_ENV


def refusing_endpoint() -> str:
    """An http endpoint on loopback where nothing listens (every connection is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_light_commands_default_to_the_short_budget_unless_one_is_set(monkeypatch):
    monkeypatch.delenv(RETRY_BUDGET_ENV, raising=False)
    assert storage_settings(None, None, None, light=True).retry_budget_s == LIGHT_RETRY_BUDGET_S
    assert storage_settings(None, None, None).retry_budget_s == DEFAULT_RETRY_BUDGET_S == 300
    assert storage_settings(None, None, None, 45.0, light=True).retry_budget_s == 45.0
    monkeypatch.setenv(RETRY_BUDGET_ENV, "120")
    assert storage_settings(None, None, None, light=True).retry_budget_s == 120.0
    assert storage_settings(None, None, None).retry_budget_s == 120.0


def test_status_plan_and_validate_fail_in_one_line_after_the_short_budget(tmp_path, tiny_weights):
    """All three at once against a closed loopback port: each ends with exit 5 and one line
    that names the object and the 20 s budget it spent (not 300 s), and the same line as JSON."""
    endpoint = refusing_endpoint()
    commands = {
        "status": ["status", "s3://bucket/run"],
        "manifest validate": ["manifest", "validate", "s3://bucket/m.parquet"],
        "plan": [
            "plan",
            "s3://bucket/m.parquet",
            "--out",
            str(tmp_path / "out"),
            "--weights",
            str(tiny_weights),
        ],
    }
    environ = {k: v for k, v in os.environ.items() if k != RETRY_BUDGET_ENV}
    environ |= {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "COLUMNS": "400"}
    running = {
        name: subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *args, "--endpoint-url", endpoint, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
            cwd=tmp_path,
        )
        for name, args in commands.items()
    }
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=120)
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert (name, process.returncode, len(errors)) == (name, ExitCode.CANNOT_START, 1), stderr
        answer = json.loads(stdout)
        assert answer["exit_code"] == ExitCode.CANNOT_START and answer["error"] == errors[0][7:]
        assert "s3://bucket/" in answer["error"], answer
        assert f"past the {LIGHT_RETRY_BUDGET_S:.0f} s retry budget" in answer["error"], answer
        assert "could not connect to the endpoint" in answer["error"], answer
        assert f"of the {LIGHT_RETRY_BUDGET_S:.0f} s storage retry budget spent" in stderr


def test_an_explicit_budget_wins_for_a_light_command(tmp_path):
    """`--storage-retry-budget 0` on status: only botocore's burst, no budget wording."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "status",
            "s3://bucket/run",
            "--endpoint-url",
            refusing_endpoint(),
            "--storage-retry-budget",
            "0",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK"},
        cwd=tmp_path,
    )
    answer = json.loads(result.stdout)
    assert result.returncode == ExitCode.CANNOT_START, result.stderr
    assert "retry budget" not in answer["error"] and "gave up after" in answer["error"]
    assert "WARNING" not in result.stderr
