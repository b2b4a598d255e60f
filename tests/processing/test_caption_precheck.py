"""A caption template an item cannot fill fails that item before the model runs on it."""

from __future__ import annotations

from pathlib import Path

from support.run_helpers import run_config

from pipeline.config import OutputOptions
from pipeline.manifests import ManifestItem
from pipeline.models.registry import load_model
from pipeline.processing.captions import make_captioner
from pipeline.processing.shard import ShardProcessor
from pipeline.processing.style_loras import StyleLoraResolver
from pipeline.storage import Storage, StorageSettings


def test_an_item_missing_a_template_field_is_refused_before_generation(
    tmp_path: Path, tiny_weights: Path
):
    outputs = OutputOptions(caption="template", caption_template="{prompt} by {artist}")
    config = run_config(str(tmp_path), str(tmp_path / "out"), tiny_weights, outputs=outputs)
    storage = Storage(StorageSettings())
    processor = ShardProcessor(
        config,
        load_model("uso", tiny_weights, config.options),
        storage,
        make_captioner(outputs),
        StyleLoraResolver(storage, None, tmp_path),
    )
    with_artist = ManifestItem(id="a", prompt="p", extra={"artist": "Hokusai"})
    without = ManifestItem(id="b", prompt="p")
    assert processor.reader.prepare(with_artist).request is not None
    refused = processor.reader.prepare(without)
    assert refused.request is None and refused.error is not None
    assert "'artist'" in str(refused.error) and "'b'" in str(refused.error)
    processor.close()
