"""Section 7: the shard processor end to end on the device, without Ray (processing/ is Ray-free
by design): a Parquet manifest of `items` USO rows (subject + style PNGs on local disk) through
the real read -> model -> encode -> commit path into a local output folder, on the model of
the production configuration (bf16, compiled). Reported: images per hour end to end, and the
model-busy fraction, the share of the shard's wall time the model spent generating (the
commit marker's model_s / wall_s), the figure that says whether the GPU ever waits for I/O.
"""

from __future__ import annotations

import io
import time

import pyarrow as pa
import pyarrow.parquet as pq

from check.report import Measurement
from check.stacks import StackConfig, Stacks, picture
from pipeline.config import RunConfig, SamplingDefaults
from pipeline.config.weights_spec import WeightsKind, WeightsSpec
from pipeline.manifests import list_shards
from pipeline.processing.captions import make_captioner
from pipeline.processing.shard import ShardProcessor, ShardTask
from pipeline.processing.style_loras import StyleLoraResolver
from pipeline.storage import Storage, StorageSettings

SHARD_CONFIG = StackConfig(compile=True)


def _png(seed: int, side: int) -> bytes:
    buffer = io.BytesIO()
    picture(seed, side).save(buffer, format="PNG")
    return buffer.getvalue()


def shard_end_to_end(stacks: Stacks, section: str, items: int) -> Measurement:
    settings = stacks.settings
    preset, folder = settings.preset, settings.work / "shard"
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(items):
        (images / f"subject{i}.png").write_bytes(_png(20_000 + i, preset.resolution))
        (images / f"style{i}.png").write_bytes(_png(30_000 + i, 384))
        rows.append(
            {
                "id": f"check-{i:03d}",
                "prompt": f"a photograph of a house by a lake, variant {i}",
                "subject": str(images / f"subject{i}.png"),
                "styles": [str(images / f"style{i}.png")],
            }
        )
    manifest = folder / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)

    model = stacks.get("uso", SHARD_CONFIG)
    # Compilation and first allocations, for the batch sizes the shard will use (the processor
    # batches equal layouts up to max_batch_size = 2), as a long-running actor has them behind it.
    warm = time.perf_counter()
    model.generate([stacks.request("uso", 40_000)])
    model.generate([stacks.request("uso", 40_001), stacks.request("uso", 40_002)])
    warm_s = time.perf_counter() - warm
    config = RunConfig(
        manifest=(str(manifest),),
        output=str(folder / "out"),
        run="gpu-check",
        model="uso",
        weights=WeightsSpec(WeightsKind.RANDOM_FULL, WeightsKind.RANDOM_FULL.value),
        sampling=SamplingDefaults(
            width=preset.resolution, height=preset.resolution, steps=preset.steps
        ),
        options=stacks.options("uso", SHARD_CONFIG),
    )
    storage = Storage(StorageSettings())
    processor = ShardProcessor(
        config,
        model,
        storage,
        make_captioner(config.outputs, str(settings.device)),
        StyleLoraResolver(storage, None, folder / "loras"),
        device=str(settings.device),
        scratch_dir=str(folder / "scratch"),
    )
    (folder / "scratch").mkdir(exist_ok=True)
    task = ShardTask(
        list_shards(str(manifest), storage)[0],
        folder=config.run_uri,
        fingerprint="gpu-check",
        weights={},
        random_weights=True,
    )
    try:
        stats = processor.process(task)
    finally:
        processor.close()
    measurement = Measurement(section, "uso", f"{SHARD_CONFIG.label}, shard of {items}")
    measurement.warmup_s = round(warm_s, 3)
    if stats.ok != items:
        measurement.status = f"failed: {stats.failed} of {items} items failed: {stats.errors}"
        return measurement
    measurement.s_per_image = round(stats.wall_s / items, 4)
    measurement.images_per_hour = round(3600 * items / stats.wall_s, 1)
    measurement.extra.update(
        model_busy=round(stats.model_s / stats.wall_s, 4),
        wall_s=round(stats.wall_s, 3),
        model_s=round(stats.model_s, 3),
        read_s=round(stats.read_s, 3),
        encode_s=round(stats.encode_s, 3),
        committed=str(folder / "out" / "gpu-check"),
    )
    return measurement
