"""Shared pytest fixtures. Keep each fixture small and documented; helpers live in modules.

S3: a real SeaweedFS server (tests/s3_server.py) is started once per test session on free
loopback ports with access keys, and stopped at the end. Its log stays in the session's tmp
folder (path printed on failure). Each test that needs S3 takes a fresh bucket.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.s3_server import SeaweedS3Server

from pipeline.weights.tiny import build_tiny_weights


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight root in the default (BFL) layout, built once per session.
    Read-only: a test that changes files copies it first."""
    return build_tiny_weights(tmp_path_factory.mktemp("tiny") / "weights")


@pytest.fixture
def private_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the sha256 and weight caches into this test's tmp folder."""
    monkeypatch.setenv("RESTYLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RESTYLE_WEIGHTS_CACHE", str(tmp_path / "weights-cache"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A running SeaweedFS S3 gateway: `.endpoint_url`, `.access_key`, `.secret_key`,
    `.settings()`, `.storage()`, `.new_bucket()`, `.log_path`."""
    server = SeaweedS3Server.start(tmp_path_factory.mktemp("s3-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: SeaweedS3Server, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket for this test, as "s3://<name>"."""
    return s3_server.new_bucket(request.node.name.split("[")[0].replace("test_", "t-"))


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """On a failing S3 test, attach the server log's tail to the report."""
    outcome = yield
    report = outcome.get_result()
    server = getattr(item, "funcargs", {}).get("s3_server")
    if report.failed and isinstance(server, SeaweedS3Server):
        report.sections.append(
            ("SeaweedFS log tail (" + str(server.log_path) + ")", server.log_tail(40))
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` need a CUDA device: skipped (with the reason) where torch sees none."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)
