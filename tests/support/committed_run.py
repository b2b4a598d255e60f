"""A finished run as the runner commits it (ShardWriter, marker last), without running a model:
noise results, triplet references in the samples, one failed item per shard if asked."""

from __future__ import annotations

import json
import time

import numpy as np
from support.run_helpers import run_config

from pipeline.config import OutputOptions
from pipeline.outputs.commit import ShardStats, ShardWriter, sample_key
from pipeline.outputs.layout import LAYOUT_VERSION, ShardPaths
from pipeline.outputs.records import ItemRecord
from pipeline.outputs.samples import encode_image

FINGERPRINT = "f00d"


def noise(seed: int, size=(64, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)


def write_run(
    storage,
    run_uri: str,
    shards: dict[int, list[str]],
    failed: dict[int, str] | None = None,
    references: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """Commit `shards` (index -> ok item ids; `failed` adds one bad_input item per shard).
    Returns item id -> role -> pixels."""
    options = OutputOptions(include_references=True)
    output, _, name = run_uri.rpartition("/")
    config = run_config("in-*.parquet", output, "weights", run=name, outputs=options)
    storage.write_bytes(
        f"{run_uri}/run.json",
        json.dumps(
            {
                "fingerprint": FINGERPRINT,
                "config": config.public_dict(),
                "weights": {"x": "00"},
                "layout": LAYOUT_VERSION,
            }
        ).encode(),
    )
    images: dict[str, dict[str, np.ndarray]] = {}
    for shard, ids in shards.items():
        stats = ShardStats(shard=shard, input_shard=f"in-{shard}", run="r", fingerprint=FINGERPRINT)
        stats.started_at = time.time() - 5.0 + shard  # as if each shard took a few seconds
        writer = ShardWriter(storage, ShardPaths(run_uri, shard), stats)
        for n, item_id in enumerate(ids):
            seed = 100 + shard * 10 + n
            roles = {
                "result": noise(seed),
                "subject": noise(seed + 1000),
                "style": noise(seed + 2000),
            }
            images[item_id] = roles
            key = sample_key(item_id)
            members = {f"result.{options.extension}": encode_image(roles["result"], options)}
            inputs = []
            for role in ("subject", "style"):
                if references:  # a triplet run stores its references in the sample
                    members[f"{role}.png"] = encode_image(roles[role], options)
                else:  # else the provenance names them, as a run's does
                    uri = f"{run_uri}-inputs/{item_id}.{role}.png"
                    storage.write_bytes(uri, encode_image(roles[role], options))
                    inputs.append({"role": role, "uri": uri})
            members["txt"] = f"caption {item_id}".encode()
            members["json"] = json.dumps(
                {"id": item_id, "prompt": f"a picture of {item_id}", "inputs": inputs}
            ).encode()
            writer.add_sample(key, members)
            writer.add_record(
                ItemRecord(
                    id=item_id,
                    key=key,
                    status="ok",
                    prompt=f"a picture of {item_id}",
                    caption=f"caption {item_id}",
                    output_key=f"{ShardPaths(run_uri, shard).tar}#{key}",
                    model_s=0.1,  # within the few seconds each fake shard spans
                )
            )
        if failed and shard in failed:
            bad = failed[shard]
            writer.add_record(
                ItemRecord(
                    id=bad,
                    key=sample_key(bad),
                    status="bad_input",
                    error=f"item {bad!r}: corrupt subject image",
                )
            )
        writer.commit()
    return images
