"""Two drivers on one run, as operators start them: `restyle run` twice at once (real Ray, the
tiny model), on a local folder and on S3 (SeaweedFS). The second is refused naming the holder;
with --join both finish and every item is generated exactly once."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from support.run_helpers import parquet_bytes, uso_rows, write_images

from pipeline.errors import ExitCode
from pipeline.storage import Storage

pytestmark = pytest.mark.slow

RESTYLE = [sys.executable, "-m", "pipeline.cli"]
SHARDS, ITEMS_PER_SHARD = 16, 3
# Enough work that the helper's Ray and actor are up long before the holder could finish
# alone. The rows' own size and steps are what a run uses; at 64x48 and 2 steps a suite run saw
# the holder commit all 16 shards first. Measured here at this size: holder ~33 s of run wall,
# the helper up ~7 s after it, splits such as 10/6.
WIDTH, HEIGHT, STEPS = 256, 192, 8


@pytest.fixture
def sixteen_shards(tmp_path: Path) -> Path:
    images = write_images(tmp_path / "images", 2)
    folder = tmp_path / "manifest"
    folder.mkdir()
    for k in range(SHARDS):
        rows = uso_rows(f"s{k}", ITEMS_PER_SHARD, str(images[0]), str(images[1]))
        for row in rows:  # the rows' own size and steps are what a run uses
            row.update(width=WIDTH, height=HEIGHT, steps=STEPS)
        (folder / f"part-{k}.parquet").write_bytes(parquet_bytes(rows))
    return folder


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> tuple[str, dict[str, str], Storage]:
    """(output root, environment for `restyle`, storage to read it back)."""
    if request.param == "local":
        return str(tmp_path / "out"), {}, Storage()
    server = request.getfixturevalue("s3_server")
    env = {
        "AWS_ENDPOINT_URL": server.endpoint_url,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
    }
    return f"{server.new_bucket('drivers')}/out", env, server.storage()


def run_args(manifest: Path, out: str, weights: Path, *extra: str) -> list[str]:
    size = ["--width", str(WIDTH), "--height", str(HEIGHT)]
    return [*RESTYLE, "run", str(manifest), "--out", out, "--run", "shared", "--weights",
            str(weights), "--actors", "1", *size, "--steps", str(STEPS),
            "--json", *extra]  # fmt: skip


def last_progress(log: str) -> dict:
    """The figures of a driver's last progress line (`--log-format json`: its close)."""
    lines = [json.loads(ln) for ln in log.splitlines() if ln.startswith("{")]
    return [ln["progress"] for ln in lines if "progress" in ln][-1]


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env}
    )


def test_a_second_driver_is_refused_or_joins_without_duplicates(
    sixteen_shards, tiny_weights, output
):
    out, env, storage = output
    run = f"{out}/shared"
    holder = start(run_args(sixteen_shards, out, tiny_weights), env)
    helper: subprocess.Popen | None = None
    try:
        deadline = time.monotonic() + 120
        while not storage.exists(f"{run}/_drivers/lease.json"):
            assert holder.poll() is None, holder.communicate()
            assert time.monotonic() < deadline, "the first driver never took the lease"
            time.sleep(0.2)

        # the helper starts at once, so both drivers' Rays come up together and share the work;
        # its log is JSON, so its progress figures can be read back
        helper_args = run_args(sixteen_shards, out, tiny_weights, "--join")
        helper = start([*RESTYLE, "--log-format", "json", *helper_args[len(RESTYLE) :]], env)
        refused = subprocess.run(
            run_args(sixteen_shards, out, tiny_weights),
            capture_output=True, text=True, timeout=300, env={**os.environ, **env},
        )  # fmt: skip
        assert refused.returncode == ExitCode.ALREADY_SUBMITTED, refused.stderr
        line = refused.stderr.strip()
        assert "\n" not in line and "being run by another driver" in line
        assert f"pid {holder.pid} since " in line and "--join" in line
        assert json.loads(refused.stdout)["exit_name"] == "ALREADY_SUBMITTED"

        helper_out, helper_err = helper.communicate(timeout=900)
        holder_out, holder_err = holder.communicate(timeout=900)
    finally:
        for process in (holder, helper):
            if process is not None and process.poll() is None:
                process.kill()
    assert holder.returncode == 0, holder_err[-3000:]
    assert helper is not None and helper.returncode == 0, helper_err[-3000:]
    first, second = json.loads(holder_out), json.loads(helper_out)
    print(
        f"shards committed: holder {first['shards_committed']}, helper {second['shards_committed']}"
        f" wall {first['wall_s']:.1f} s, {first['images_per_s']:.2f} images/s"
    )
    assert second["shards_committed"] >= 1, ("the helper took no shard", first, helper_err[-4000:])
    # each shard committed by exactly one of the two: no generation done twice
    assert first["shards_committed"] + second["shards_committed"] == SHARDS, (first, second)
    assert first["ok"] == second["ok"] == SHARDS * ITEMS_PER_SHARD
    # the helper's progress counted its own shards and items only, and said how many the
    # holder claimed (those the holder had committed before it started are not in its plan)
    figures = last_progress(helper_err)
    elsewhere = figures["shards_claimed_elsewhere"]
    assert figures["shards_total"] == SHARDS - second["shards_already_done"], figures
    assert figures["shards_committed"] + elsewhere == figures["shards_total"], figures
    assert figures["shards_committed"] == second["shards_committed"], figures
    assert figures["items_total"] == ITEMS_PER_SHARD * second["shards_committed"], figures
    assert figures["items_claimed_elsewhere"] == ITEMS_PER_SHARD * elsewhere, figures
    print(f"helper's last progress: {figures}")

    keys: list[str] = []
    for k in range(SHARDS):
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(f"{run}/part-{k:06d}.tar"))) as tar:
            keys += [m.name.rsplit(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".png")]
    assert len(keys) == len(set(keys)) == SHARDS * ITEMS_PER_SHARD
    claims = storage.list(f"{run}/_drivers/claims/")
    assert len(claims) == SHARDS
    tokens = {json.loads(storage.read_bytes(c))["token"] for c in claims}
    assert 1 <= len(tokens) <= 2
    # the lease and both heartbeats are gone; claims stay as the record of who did what
    assert storage.list(f"{run}/_drivers/") == claims
