"""One output key per item, one item per id: checked over the whole run before it starts.

Item ids become WebDataset keys (`outputs.commit.sample_key`); two ids that map to one key would
put duplicate members in a tar (which `webdataset` refuses) and two records under one key, and
an id repeated across input shards would be generated twice. The plan reads every shard's ids
once (`manifests.ids`), keeps a 64-bit digest per key (8 bytes an item, so 10^7 items fit in
80 MB), and only where digests repeat reads those shards again to name the ids. Repeats within
one shard are not refused here: the shard reader records the later row as a failed item.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pipeline.errors import RunError
from pipeline.manifests import ManifestError, ManifestShard
from pipeline.manifests.ids import read_ids
from pipeline.outputs.commit import sample_key
from pipeline.storage import Storage, StorageError

READ_THREADS = 8


class IdentityError(RunError):
    """Two input rows would become one output item (a key collision or a repeated id)."""


@dataclass(frozen=True)
class _Place:
    shard: ManifestShard
    row: int
    item_id: str

    def __str__(self) -> str:
        return f"{self.shard.uri} row {self.row}"


def _digest(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def check_run_identity(shards: list[ManifestShard], storage: Storage) -> None:
    """Raise `IdentityError` (one line naming both rows) when two rows of different shards share
    an id, or two different ids anywhere share an output key. Shards that cannot be read are
    left to fail on their own when the run reaches them."""

    def digests(shard: ManifestShard) -> np.ndarray:
        return _shard_digests(shard, storage)

    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="restyle-ids") as pool:
        per_shard = list(pool.map(digests, shards))
    owners = np.concatenate(
        [np.full(len(d), i, dtype=np.int64) for i, d in enumerate(per_shard)]
        or [np.zeros(0, dtype=np.int64)]
    )
    everything = np.concatenate(per_shard or [np.zeros(0, dtype=np.uint64)])
    values, counts = np.unique(everything, return_counts=True)
    repeated = values[counts > 1]
    if not len(repeated):
        return
    suspects = sorted({int(owners[i]) for i in np.flatnonzero(np.isin(everything, repeated))})
    wanted = {int(v) for v in repeated}
    _name_the_clash([shards[i] for i in suspects], storage, wanted.__contains__)


def _shard_digests(shard: ManifestShard, storage: Storage) -> np.ndarray:
    try:
        return np.fromiter(
            (_digest(sample_key(item_id)) for _, item_id in read_ids(shard, storage)),
            dtype=np.uint64,
        )
    except (ManifestError, StorageError):
        return np.zeros(0, dtype=np.uint64)


def _name_the_clash(
    shards: Iterable[ManifestShard], storage: Storage, suspect: Callable[[int], bool]
) -> None:
    seen: dict[str, _Place] = {}
    for shard in shards:
        for row, item_id in _ids_or_none(shard, storage):
            key = sample_key(item_id)
            if not suspect(_digest(key)):
                continue
            place = _Place(shard, row, item_id)
            first = seen.setdefault(key, place)
            if first is place:
                continue
            if first.item_id != place.item_id:
                raise IdentityError(
                    f"ids {first.item_id!r} ({first}) and {place.item_id!r} ({place}) map to "
                    f"the same output key {key!r}: rename one of them"
                )
            if first.shard != place.shard:
                raise IdentityError(
                    f"id {item_id!r} appears in two input shards ({first} and {place}); an id "
                    "names one item of a run: remove or rename one of the rows"
                )


def _ids_or_none(shard: ManifestShard, storage: Storage) -> Iterable[tuple[int, str]]:
    try:
        yield from read_ids(shard, storage)
    except (ManifestError, StorageError):
        return
