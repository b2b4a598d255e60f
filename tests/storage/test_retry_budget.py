"""Storage outages against the real SeaweedFS server behind the fault proxy: an outage shorter
than the retry budget costs nothing; a longer one fails with one line naming the outage."""

from __future__ import annotations

import dataclasses
import io
import logging
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.fault_proxy import FaultProxy
from support.s3_server import SeaweedS3Server

from pipeline.manifests.parquet import count_parquet_rows
from pipeline.storage import Storage, StorageError, StorageNotFoundError, StorageSettings
from pipeline.storage.retry import ARROW_SCALE_S, RetryBudget, arrow_attempts


def proxied(s3_server: SeaweedS3Server, proxy: FaultProxy, **overrides: object) -> Storage:
    settings = s3_server.settings(
        max_attempts=2, retry_base_delay_s=0.05, retry_cap_s=0.5, **overrides
    )
    return Storage(dataclasses.replace(settings, endpoint_url=proxy.endpoint_url))


@pytest.mark.parametrize("drop", [False, True], ids=["503", "dropped"])
def test_outage_shorter_than_the_budget_costs_nothing(
    s3_server: SeaweedS3Server, s3_bucket: str, caplog: pytest.LogCaptureFixture, drop: bool
) -> None:
    s3_server.storage().write_bytes(f"{s3_bucket}/a.bin", b"before")
    with FaultProxy(s3_server.endpoint_url) as proxy:
        storage = proxied(s3_server, proxy, retry_budget_s=30)
        with caplog.at_level(logging.WARNING, logger="pipeline.storage"):
            proxy.outage_for(3.0, drop=drop)  # the store comes back after 3 s
            started = time.monotonic()
            storage.write_bytes(f"{s3_bucket}/b.bin", b"during")
            assert time.monotonic() - started >= 2.5  # it did wait the outage out
            assert storage.read_bytes(f"{s3_bucket}/a.bin") == b"before"
            assert storage.list(s3_bucket) == [f"{s3_bucket}/a.bin", f"{s3_bucket}/b.bin"]
        failed = [r for r in proxy.requests() if r[2] != "forwarded"]
        assert len(failed) > 2  # more than botocore's burst of max_attempts
        assert {r[2] for r in failed} == {"dropped" if drop else "503 SlowDown"}
    assert "storage write" in caplog.text and "of the 30 s storage retry budget" in caplog.text
    assert s3_server.secret_key not in caplog.text


def test_outage_longer_than_the_budget_fails_with_one_line_naming_it(
    s3_server: SeaweedS3Server, s3_bucket: str
) -> None:
    with FaultProxy(s3_server.endpoint_url) as proxy:
        storage = proxied(s3_server, proxy, retry_budget_s=2)
        proxy.outage()
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            storage.write_bytes(f"{s3_bucket}/x.bin", b"x")
        assert 2 <= time.monotonic() - started < 10
    message = str(info.value)
    assert "\n" not in message and info.value.transient
    assert message.startswith(f"storage write {s3_bucket}/x.bin: storage unavailable for ")
    assert "past the 2 s retry budget (--storage-retry-budget)" in message
    assert "SlowDown" in message and info.value.attempts > 2


def test_missing_objects_and_auth_failures_are_not_retried(
    s3_server: SeaweedS3Server, s3_bucket: str
) -> None:
    with FaultProxy(s3_server.endpoint_url) as proxy:
        storage = proxied(s3_server, proxy, retry_budget_s=60)
        started = time.monotonic()
        with pytest.raises(StorageNotFoundError):
            storage.read_bytes(f"{s3_bucket}/missing.bin")
        proxy.fail_next(1, 403, "AccessDenied")
        with pytest.raises(StorageError, match="AccessDenied"):
            storage.write_bytes(f"{s3_bucket}/denied.bin", b"x")
        assert time.monotonic() - started < 5
        assert len(proxy.requests()) == 2


def test_a_parquet_read_rides_out_a_short_outage(
    s3_server: SeaweedS3Server, s3_bucket: str
) -> None:
    """pyarrow's own S3 client (manifests) gets attempts enough for the same budget."""
    table = pa.table({"id": [f"i{k}" for k in range(10)], "prompt": ["p"] * 10})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    s3_server.storage().write_bytes(f"{s3_bucket}/m.parquet", sink.getvalue())
    with FaultProxy(s3_server.endpoint_url) as proxy:
        storage = proxied(s3_server, proxy, retry_budget_s=60)
        proxy.outage_for(1.5)
        assert count_parquet_rows(f"{s3_bucket}/m.parquet", storage) == 10
        assert any(r[2] == "503 SlowDown" for r in proxy.requests())


def test_budget_arithmetic() -> None:
    # pyarrow's waits (25 ms x 2^n) add up to at least the budget
    for budget in (1, 30, 300, 3600):
        attempts = arrow_attempts(3, budget)
        assert sum(ARROW_SCALE_S * 2**n for n in range(1, attempts)) >= budget
    assert arrow_attempts(5, 0) == 5
    budget = RetryBudget(budget_s=0.0, min_failures=3)
    assert [budget.next_delay() is not None for _ in range(4)] == [True, True, False, False]
    delays = [RetryBudget(100, base_s=0.5, cap_s=30).next_delay() for _ in range(200)]
    assert all(d is not None and 0 <= d <= 0.5 for d in delays)
    with pytest.raises(ValueError, match="retry_budget_s"):
        StorageSettings(retry_budget_s=-1)
    env = {"RESTYLE_STORAGE_RETRY_BUDGET": "12.5"}
    assert StorageSettings.from_env(env).retry_budget_s == 12.5
    with pytest.raises(ValueError, match="RESTYLE_STORAGE_RETRY_BUDGET"):
        StorageSettings.from_env({"RESTYLE_STORAGE_RETRY_BUDGET": "soon"})
    threshold = StorageSettings.from_env({"RESTYLE_S3_MULTIPART_THRESHOLD": "1"})
    assert threshold.multipart_threshold_bytes == 1
    with pytest.raises(ValueError, match="RESTYLE_S3_MULTIPART_THRESHOLD must be a whole number"):
        StorageSettings.from_env({"RESTYLE_S3_MULTIPART_THRESHOLD": "1.5"})
