"""`ShardTask`: one unit of work the driver sends to an actor (plain data, pickled by Ray)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.manifests import ManifestShard


@dataclass(frozen=True)
class ShardTask:
    """One unit of work sent to an actor."""

    shard: ManifestShard
    folder: str  # the run folder, absolute (`public_uri`): records point into it
    fingerprint: str
    weights: dict[str, str]  # logical name -> sha256, for provenance
    random_weights: bool = False
    only_ids: frozenset[str] | None = None  # None = every item of the shard
    prior_attempts: dict[str, int] = field(default_factory=dict)  # retry commits
    retry: int = 0  # 0: the shard's first run; n: its n-th retry (`ShardPaths.retry`)
    seq: int = 0  # dispatch order; older shards get the model first
    items: int | None = None  # the whole shard's items, when the driver counted them
