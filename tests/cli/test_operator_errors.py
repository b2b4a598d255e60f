"""An operator's mistake is one line and exit code 2 on every command, never a traceback, and a
credential typed into the endpoint URL is refused without being printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.errors import ExitCode


def _one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert result.exit_code == ExitCode.CANNOT_START
    return lines[0]


@pytest.mark.parametrize(
    "command",
    [
        ["plan", "m", "--out", "s3://b/x"],
        ["status", "s3://b/x"],
        ["manifest", "validate", "s3://b/m/"],
    ],
)
def test_credentials_in_the_endpoint_url_are_refused_unprinted(command: list[str]):
    endpoint = "http://AKIAEXAMPLE:hunter2secret@127.0.0.1:1"
    result = CliRunner().invoke(app, [*command, "--endpoint-url", endpoint])
    line = _one_line(result)
    assert "must not carry credentials" in line and "hunter2secret" not in result.output


@pytest.mark.parametrize(
    "command", [["status", "{bucket}/run"], ["manifest", "validate", "{bucket}/m/"]]
)
def test_wrong_credentials_are_one_line(
    s3_server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, command: list[str]
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    args = [part.format(bucket=s3_bucket) for part in command]
    result = CliRunner().invoke(app, [*args, "--endpoint-url", s3_server.endpoint_url])
    line = _one_line(result)
    assert s3_bucket in line and "wrong-secret-value" not in result.output


def test_a_missing_local_run_is_one_line(tmp_path: Path):
    _one_line(CliRunner().invoke(app, ["status", str(tmp_path / "nothing")]))


@pytest.mark.parametrize(
    "command",
    [
        ["status", "{missing}"],
        ["plan", "{missing}", "--out", "{out}"],
        ["weights", "verify", "{missing}"],
        ["migrate", "{missing}"],
        ["report", "{missing}"],
    ],
)
def test_json_commands_print_their_error_as_one_json_object(tmp_path: Path, command: list[str]):
    """A script that reads `--json` gets an object on stdout however the command ended; the
    person still gets the red line on stderr."""
    import json
    import subprocess
    import sys

    args = [part.format(missing=tmp_path / "nothing", out=tmp_path / "out") for part in command]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    answer = json.loads(done.stdout)
    assert answer["exit_code"] == done.returncode == ExitCode.CANNOT_START
    assert answer["exit_name"] == "CANNOT_START"
    assert "nothing" in answer["error"] and answer["error"] in done.stderr.replace("\n", "")
