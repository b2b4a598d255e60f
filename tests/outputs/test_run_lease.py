"""The run lease, shard claims and the run.json claim, on a local folder and on real S3
(SeaweedFS, which honours If-None-Match and If-Match)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
from support.s3_server import SeaweedS3Server

from pipeline.config import RunConfig
from pipeline.errors import RunConflictError, RunLeaseHeldError
from pipeline.outputs.lease import Conditional, DriverRecord, RunLease
from pipeline.outputs.run_state import RunState
from pipeline.storage import Storage


@pytest.fixture(params=["local", "s3"])
def run_folder(request, tmp_path) -> tuple[Storage, str]:
    if request.param == "local":
        return Storage(), str(tmp_path / "run")
    server: SeaweedS3Server = request.getfixturevalue("s3_server")
    bucket = server.new_bucket("lease")
    return server.storage(), f"{bucket}/out/run"


def stop_heartbeat(lease: RunLease) -> None:
    """As if the driver was killed: no more renewals, nothing removed."""
    lease._stop.set()
    assert lease._thread is not None
    lease._thread.join()


def test_a_second_driver_is_refused_naming_the_holder(run_folder) -> None:
    storage, run = run_folder
    first = RunLease(storage, run, ttl_s=30)
    first.acquire()
    try:
        assert first.holder and storage.exists(f"{run}/_drivers/lease.json")
        with pytest.raises(RunLeaseHeldError) as info:
            RunLease(storage, run, ttl_s=30).acquire()
        message = str(info.value)
        assert "\n" not in message and first.me.host in message
        assert f"pid {first.me.pid} since " in message and "--join" in message
    finally:
        first.release()
    assert not storage.exists(f"{run}/_drivers/lease.json")
    again = RunLease(storage, run, ttl_s=30)  # released: free for the next driver
    again.acquire()
    again.release()


def test_helpers_claim_only_unclaimed_shards_and_take_over_from_the_dead(run_folder) -> None:
    storage, run = run_folder
    holder, helper = RunLease(storage, run, ttl_s=2), RunLease(storage, run, ttl_s=2)
    holder.acquire()
    helper.acquire(join=True)
    try:
        assert holder.holder and not helper.holder and helper.me.role == "helper"
        assert holder.claim(0) and holder.claim(0)  # a retried claim stays ours
        assert not helper.claim(0)
        assert helper.claim(1) and not holder.claim(1)
        assert helper.claim(1, retry=1) is True and not holder.claim(1, retry=1)
        time.sleep(3)  # past the TTL: heartbeats keep both alive
        assert not helper.claim(0) and not holder.claim(1)

        stop_heartbeat(holder)  # the holder dies with shard 0 claimed and uncommitted
        time.sleep(2.5)
        assert not helper.claim(0, committed=lambda: True)  # done meanwhile: left alone
        helper._alive.clear()
        assert helper.claim(0, committed=lambda: False)  # taken over
        assert json.loads(storage.read_bytes(holder.claim_uri(0)))["token"] == helper.me.token

        successor = RunLease(storage, run, ttl_s=2)  # the expired lease is taken over
        successor.acquire()
        assert successor.holder
        holder.holder = True
        holder.renew()  # the old holder, back from the dead, learns it lost the lease
        assert holder.lost and not holder.holder and not holder.claim(5)
        successor.release()
    finally:
        helper.release()


def test_a_killed_driver_on_this_host_frees_the_run_at_once(run_folder) -> None:
    storage, run = run_folder
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    record = DriverRecord.mine(ttl_s=3600, role="holder")
    dead = DriverRecord(
        record.token, record.host, int(gone.stdout), record.since, record.expires_at
    )
    storage.write_bytes(f"{run}/_drivers/lease.json", dead.encode())
    lease = RunLease(storage, run, ttl_s=30)
    lease.acquire()
    try:
        assert lease.holder
    finally:
        lease.release()


def test_racing_lease_takeovers_and_creates_have_one_winner(run_folder) -> None:
    storage, run = run_folder
    leases = [RunLease(storage, run, ttl_s=30) for _ in range(6)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(leases))

    def acquire(lease: RunLease) -> None:
        barrier.wait()
        try:
            lease.acquire()
        except RunLeaseHeldError as error:
            errors.append(error)

    threads = [threading.Thread(target=acquire, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [lease for lease in leases if lease.holder]
    try:
        assert len(winners) == 1 and len(errors) == len(leases) - 1
        claims = [w.claim(3) for w in leases if w._thread is not None]
        assert claims == [True]
    finally:
        winners[0].release()


def run_json(fingerprint: str) -> dict:
    """A run.json of the real shape (the dataset card is written from it)."""
    config = RunConfig(manifest=("m.parquet",), output="out", run="run", model="uso")
    return {"config": config.public_dict(), "fingerprint": fingerprint, "fingerprint_fields": {}}


def test_racing_run_json_claims_have_exactly_one_winner(run_folder) -> None:
    storage, run = run_folder
    barrier = threading.Barrier(6)
    outcome: dict[str, str] = {}

    def claim(fingerprint: str) -> None:
        barrier.wait()
        try:
            RunState(storage, run).claim(run_json(fingerprint))
            outcome[fingerprint] = "won"
        except RunConflictError:
            outcome[fingerprint] = "refused"

    threads = [threading.Thread(target=claim, args=(f"f{k}",)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [f for f, result in outcome.items() if result == "won"]
    assert len(winners) == 1 and len(outcome) == 6
    assert RunState(storage, run).read_run_json()["fingerprint"] == winners[0]
    RunState(storage, run).claim(run_json(winners[0]))  # the same config: accepted


def test_the_fallback_without_conditional_writes(tmp_path) -> None:
    cond = Conditional(Storage(), native=False)
    uri = str(tmp_path / "lease.json")
    version = cond.create(uri, b"a")
    assert version is not None and cond.create(uri, b"b") is None
    assert cond.replace(uri, b"c", "stale") is None
    assert cond.replace(uri, b"c", version) is not None
    assert Storage().read_bytes(uri) == b"c"


def test_drivers_folder_is_reached_by_no_glob_and_no_listing(tmp_path) -> None:
    storage, run = Storage(), str(tmp_path / "run")
    lease = RunLease(storage, run, ttl_s=30)
    lease.acquire()
    try:
        lease.claim(0)
        for glob in ("part-*.tar", "part-*.parquet", "**/part-*.parquet", "**/part-*.tar"):
            assert storage.glob(f"{run}/{glob}") == []
        listing = RunState(storage, run).listing()
        assert (listing.markers, listing.tars, listing.records) == ({}, {}, {})
    finally:
        lease.release()


def test_an_unreadable_lease_or_claim_is_taken_over(run_folder) -> None:
    """A store killed mid-write can leave an empty object: it counts as a dead driver's."""
    storage, run = run_folder
    storage.write_bytes(f"{run}/_drivers/lease.json", b"")
    lease = RunLease(storage, run, ttl_s=30)
    lease.acquire()
    try:
        assert lease.holder
        storage.write_bytes(lease.claim_uri(2), b"")
        assert lease.claim(2, committed=lambda: False)
    finally:
        lease.release()
