"""A model whose numbers overflow gives NaN latents (caught in the model) or a flat image (caught
here); either way the item becomes an error, not an ok record of a black picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from support.run_helpers import SMALL, parquet_bytes, run_config, uso_rows, write_images

from pipeline.errors import ItemStatus
from pipeline.manifests import ManifestShard
from pipeline.models.base import GenerationRequest, ModelOptions
from pipeline.models.registry import load_model
from pipeline.outputs.records import read_records
from pipeline.processing.captions import make_captioner
from pipeline.processing.output_checks import output_problem
from pipeline.processing.shard import ShardProcessor, ShardTask
from pipeline.processing.style_loras import StyleLoraResolver
from pipeline.storage import Storage, StorageSettings


def _request(**overrides) -> GenerationRequest:
    rng = np.random.default_rng(0)
    subject = Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8))
    fields = dict(item_id="i", prompt="a cat", seed=1, subject=subject, styles=[subject], **SMALL)
    return GenerationRequest(**(fields | overrides))


def test_an_overflowing_item_is_a_model_error_naming_it_and_its_shard_neighbours_are_ok(
    tmp_path: Path, tiny_weights: Path
):
    """Guidance 1e308 overflows the item's latents to NaN: the model says so (non-finite latents
    after step k), the shard records that item's model_error and commits the others ok."""
    images = write_images(tmp_path / "images", 2)
    rows = uso_rows("g", 3, str(images[0]), str(images[1]))
    for row, guidance in zip(rows, [None, 1e308, None], strict=True):
        row["guidance"] = guidance
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(parquet_bytes(rows))
    config = run_config(str(manifest), str(tmp_path / "out"), tiny_weights)
    storage = Storage(StorageSettings())
    processor = ShardProcessor(
        config,
        load_model("uso", tiny_weights, ModelOptions(device="cpu", max_batch_size=3)),
        storage,
        make_captioner(config.outputs),
        StyleLoraResolver(storage, None, tmp_path),
    )
    folder = str(tmp_path / "out" / "test")
    stats = processor.process(
        ShardTask(ManifestShard(0, str(manifest), "parquet"), folder, "f", weights={})
    )
    processor.close()
    assert (stats.ok, stats.failed) == (2, 1)
    records = {r.id: r for r in read_records(storage, f"{folder}/part-000000.parquet")}
    assert records["g-0"].ok and records["g-2"].ok
    bad = records["g-1"]
    assert bad.status == ItemStatus.MODEL_ERROR
    assert (bad.error or "").startswith(
        "item 'g-1': non-finite latents (NaN or inf) after denoising step 1 of 2"
    )


def test_flat_inputs_may_give_a_flat_result_and_float_images_must_be_finite():
    flat = Image.new("RGB", (40, 32), (255, 255, 255))
    white = np.full((32, 40, 3), 255, dtype=np.uint8)
    assert output_problem(white, _request(subject=flat, styles=[flat])) is None
    assert "constant image" in (output_problem(white, _request()) or "")
    nan = np.full((32, 40, 3), np.nan, dtype=np.float32)
    assert "non-finite" in (output_problem(nan, _request()) or "")


def test_a_flat_colour_other_than_black_is_caught_and_a_varied_image_passes():
    red = np.zeros((32, 40, 3), dtype=np.uint8)
    red[..., 0] = 255
    assert "(255, 0, 0)" in (output_problem(red, _request()) or "")
    varied = np.arange(32 * 40 * 3, dtype=np.uint8).reshape(32, 40, 3)
    assert output_problem(varied, _request()) is None
