"""Joining the Ray cluster a stage runs on: the one place that calls `ray.init`."""

from __future__ import annotations

import ray


def connect(address: str | None = None) -> None:
    """Join the cluster at `address` (`auto`, `ray://...`, host:port), else the one in
    $RAY_ADDRESS (inside a Ray job), else start a local Ray. Already connected: nothing to do."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(include_dashboard=False, log_to_driver=True)
