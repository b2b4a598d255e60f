"""How one driver shares its run with other drivers: not the run's configuration (not in the
fingerprint, not in run.json), so a helper joins a run whatever these say."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.errors import ConfigError

DEFAULT_LEASE_TTL_S = 60.0


@dataclass(frozen=True)
class DriverSettings:
    """- lease_ttl_s: how long the run lease (and each driver's heartbeat) lasts without a
      renewal; renewed every third of it, so a killed driver's run is free after at most this.
    - join: when another live driver holds the run, help it (take only unclaimed shards)
      instead of being refused."""

    lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    join: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lease_ttl_s) and self.lease_ttl_s >= 1):
            raise ConfigError("--lease-ttl", f"must be at least 1 second, got {self.lease_ttl_s}")
