"""A multi-day run on KubeRay is watched through Prometheus: the driver and the actors publish
Ray metrics, read back here from the metrics endpoint of a real local Ray."""

from __future__ import annotations

import re
import socket
import time
import urllib.request

import pytest
import ray
from support.run_helpers import parquet_bytes, run_config, uso_rows, write_images

from pipeline.execution.driver import Runner
from pipeline.storage import StorageSettings

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def value(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples of `name` carrying `labels`, or None when there is none."""
    found = None
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            found = (found or 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def test_a_run_publishes_items_by_status_rate_busy_commit_and_staging_metrics(
    tiny_weights, tmp_path
):
    port = free_port()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=port,
    )
    try:
        write_images(tmp_path / "images", 2)
        rows = uso_rows("m", 3, "images/img0.png", "images/img1.png")
        rows[2]["styles"] = ["images/missing.png"]
        (tmp_path / "m.parquet").write_bytes(parquet_bytes(rows))
        config = run_config(str(tmp_path / "m.parquet"), str(tmp_path / "out"), tiny_weights)
        summary = Runner(config, StorageSettings(), show_progress=False).run()
        assert (summary.ok, summary.failed) == (2, 1)

        wanted = {
            ("ray_restyle_items_total", "ok"): 2.0,
            ("ray_restyle_items_total", "io_error"): 1.0,
        }
        deadline = time.monotonic() + 90  # Ray exports metrics every few seconds
        while True:
            text = scrape(port)
            got = {key: value(text, key[0], model="uso", status=key[1]) for key in wanted}
            if got == wanted or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert got == wanted
        assert value(text, "ray_restyle_shards_total", outcome="committed") == 1.0
        assert (value(text, "ray_restyle_images_per_second", model="uso") or 0) > 0
        assert 0 < (value(text, "ray_restyle_model_busy_fraction", model="uso") or 0) <= 1
        assert value(text, "ray_restyle_shard_commit_seconds_count", model="uso") == 1.0
        assert value(text, "ray_restyle_queue_depth", model="uso") == 0.0
        assert re.search(r"^ray_restyle_weight_staging_seconds_count\{.*\} 1\.0$", text, re.M)
        assert re.search(r"^ray_restyle_model_load_seconds_count\{.*\} 1\.0$", text, re.M)
    finally:
        ray.shutdown()
