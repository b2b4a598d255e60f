"""Live metrics of a run, through Ray's metrics API (`ray.util.metrics`).

Ray exports them on every node's metrics endpoint in the Prometheus format (KubeRay's
PodMonitor / the Ray dashboard's Grafana panels scrape them), with the `ray_` prefix:

    ray_restyle_items_total{model, status}        items by status: ok, skipped, each error class
    ray_restyle_shards_total{model, outcome}      shards committed / failed
    ray_restyle_images_per_second{model}          the one images/s (see `RunProgress`)
    ray_restyle_model_busy_fraction{model}        model time over actor busy time, committed shards
    ray_restyle_shard_commit_seconds{model}       upload + publish time of each shard commit
    ray_restyle_weight_staging_seconds{model}     per actor: staging weights to the node (actors)
    ray_restyle_model_load_seconds{model}         per actor: loading the model (actors)
    ray_restyle_queue_depth{model}                shards waiting for an actor (driver)
    ray_restyle_items_in_flight{model}            items of shards being processed (driver)

Why metrics rather than a progress file: a multi-day job on KubeRay is watched by the
cluster's Prometheus and alerting, which already scrape Ray; `restyle status` reads the commit
markers for the exact account. Metrics are best effort: a process without Ray records nothing.
"""

from __future__ import annotations

import contextlib
import logging
from types import SimpleNamespace
from typing import Any

from pipeline.outputs.commit import ShardStats
from pipeline.outputs.status import model_fraction

log = logging.getLogger(__name__)
COMMIT_BUCKETS = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 300]
LOAD_BUCKETS = [1, 5, 10, 30, 60, 120, 300, 600, 1800]


def _metrics() -> Any:
    from ray.util import metrics

    return metrics


class RunMetrics:
    """The driver's metrics of one run (tag `model`)."""

    def __init__(self, model: str):
        self.tags = {"model": model}
        m = _metrics()
        self.items = m.Counter(
            "restyle_items_total", "Items finished, by status", tag_keys=("model", "status")
        )
        self.shards = m.Counter(
            "restyle_shards_total", "Shards finished, by outcome", tag_keys=("model", "outcome")
        )
        self.rate = m.Gauge("restyle_images_per_second", "ok images/s", tag_keys=("model",))
        self.busy = m.Gauge(
            "restyle_model_busy_fraction", "Model time / actor busy time", tag_keys=("model",)
        )
        self.commit = m.Histogram(
            "restyle_shard_commit_seconds",
            "Seconds to publish a shard (tar, records, marker)",
            boundaries=COMMIT_BUCKETS,
            tag_keys=("model",),
        )
        self.queue = m.Gauge(
            "restyle_queue_depth", "Shards waiting for an actor", tag_keys=("model",)
        )
        self.in_flight = m.Gauge(
            "restyle_items_in_flight", "Items of shards being processed", tag_keys=("model",)
        )
        self._committed: list[SimpleNamespace] = []  # as `model_fraction` reads commits

    def shard_committed(self, stats: ShardStats) -> None:
        self.shards.inc(1, tags={**self.tags, "outcome": "committed"})
        for status, count in {"ok": stats.ok, "skipped": stats.skipped, **stats.errors}.items():
            if count:
                self.items.inc(count, tags={**self.tags, "status": status})
        self.commit.observe(stats.upload_s, tags=self.tags)
        self._committed.append(SimpleNamespace(stats=stats))
        self.busy.set(model_fraction(self._committed), tags=self.tags)

    def shard_failed(self) -> None:
        self.shards.inc(1, tags={**self.tags, "outcome": "failed"})

    def tick(self, images_per_s: float, queued_shards: int, items_in_flight: int) -> None:
        self.rate.set(images_per_s, tags=self.tags)
        self.queue.set(queued_shards, tags=self.tags)
        self.in_flight.set(items_in_flight, tags=self.tags)


def record_actor_start(model: str, staging_s: float, load_s: float) -> None:
    """In an actor: how long it waited for the weights on its node, and to load the model."""
    with contextlib.suppress(Exception):  # metrics are best effort (no Ray: nothing recorded)
        m = _metrics()
        tags = {"model": model}
        m.Histogram(
            "restyle_weight_staging_seconds",
            "Seconds an actor spent getting the weights onto its node",
            boundaries=LOAD_BUCKETS,
            tag_keys=("model",),
        ).observe(staging_s, tags=tags)
        m.Histogram(
            "restyle_model_load_seconds",
            "Seconds an actor spent loading its model",
            boundaries=LOAD_BUCKETS,
            tag_keys=("model",),
        ).observe(load_s, tags=tags)
