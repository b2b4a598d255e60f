"""Captions from an image-to-text model: in the actor (`caption: model`) and as a separate stage.

The captioner is a real `BlipForConditionalGeneration` with tiny random weights and a locally
built BERT tokenizer (pipeline/weights/tiny_aux.py); its words mean nothing, but every tensor
goes through transformers' real processor, generate loop and decoder.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image

from pipeline.config import OutputOptions, RunConfig
from pipeline.jobs.caption import caption_run
from pipeline.outputs.caption_sidecars import sidecar_uri
from pipeline.outputs.commit import ShardStats, ShardWriter, sample_key
from pipeline.outputs.layout import ShardPaths
from pipeline.outputs.records import ItemRecord
from pipeline.outputs.run_state import RunState
from pipeline.outputs.samples import encode_image
from pipeline.processing.caption_model import ModelCaptioner
from pipeline.processing.caption_shard import result_images
from pipeline.processing.captions import make_captioner
from pipeline.weights.aux_models import CAPTIONER, AuxModelError, model_folder
from pipeline.weights.tiny_aux import MARKER, build_tiny_captioner, build_tiny_clip


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    return build_tiny_captioner(tmp_path_factory.mktemp("aux") / "blip")


def noise(seed: int, size=(64, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)


def test_tiny_builds_are_reused_and_never_clobber_other_folders(blip, tmp_path):
    marker_time = (blip / MARKER).stat().st_mtime_ns
    assert build_tiny_captioner(blip) == blip
    assert (blip / MARKER).stat().st_mtime_ns == marker_time  # reused, not rebuilt
    precious = tmp_path / "real-model"
    precious.mkdir()
    (precious / "model.safetensors").write_bytes(b"weights someone downloaded")
    with pytest.raises(ValueError, match="not a tiny clip build"):
        build_tiny_clip(precious)
    assert (precious / "model.safetensors").read_bytes() == b"weights someone downloaded"


def test_model_captions_are_deterministic_batched_and_depend_on_the_image(blip):
    captioner = make_captioner(OutputOptions(caption="model", caption_model=str(blip)))
    assert isinstance(captioner, ModelCaptioner)
    images = [noise(i) for i in range(6)] + [np.zeros((48, 64, 3), np.uint8)]
    one_by_one = [captioner.caption({"id": str(i)}, image) for i, image in enumerate(images)]
    assert all(isinstance(c, str) and c for c in one_by_one)
    assert captioner.caption_images(images) == one_by_one  # batching changes nothing
    assert ModelCaptioner(blip).caption({}, images[0]) == one_by_one[0]  # a fresh load agrees
    assert len(set(one_by_one)) >= 2, one_by_one  # it looks at the picture


def test_bad_captioner_folders_are_named_in_the_error(tmp_path, blip):
    with pytest.raises(AuxModelError, match=r"no config.json") as error:
        ModelCaptioner(tmp_path / "nothing-here")
    assert "nothing-here" in str(error.value)
    clip = build_tiny_clip(tmp_path / "clip")
    with pytest.raises(ValueError, match="not an image-to-text model"):
        ModelCaptioner(clip)


def test_captioner_folder_on_s3_is_staged_once_per_node(
    blip, s3_server, s3_bucket, tmp_path, monkeypatch
):
    monkeypatch.setenv("RESTYLE_WEIGHTS_CACHE", str(tmp_path / "cache"))
    storage = s3_server.storage()
    for path in blip.iterdir():
        storage.write_bytes(f"{s3_bucket}/models/blip/{path.name}", path.read_bytes())
    staged = model_folder(f"{s3_bucket}/models/blip/", CAPTIONER, storage)
    assert {p.name: p.read_bytes() for p in staged.iterdir() if not p.name.startswith(".")} == {
        p.name: p.read_bytes() for p in blip.iterdir()
    }
    before = {p.name: p.stat().st_mtime_ns for p in staged.iterdir()}
    assert model_folder(f"{s3_bucket}/models/blip", CAPTIONER, storage) == staged
    assert {p.name: p.stat().st_mtime_ns for p in staged.iterdir()} == before
    with pytest.raises(AuxModelError, match=r"no config.json"):
        model_folder(f"{s3_bucket}/models/", CAPTIONER, storage)  # files only below subfolders


# ------------------------------------------------------------------ the separate stage
def write_committed_run(
    storage, run_uri: str, shards: dict[int, list[str]], options: OutputOptions
) -> dict[str, np.ndarray]:
    """A finished run as the runner commits it (ShardWriter, marker last), with noise images."""
    config = RunConfig(manifest=("in",), output=run_uri, run="r", model="uso", outputs=options)
    RunState(storage, run_uri).claim({"config": config.public_dict(), "fingerprint": "f00d"})
    images = {}
    for shard, ids in shards.items():
        stats = ShardStats(shard=shard, input_shard=f"in-{shard}", run="r", fingerprint="f00d")
        writer = ShardWriter(storage, ShardPaths(run_uri, shard), stats)
        for n, item_id in enumerate(ids):
            images[item_id] = noise(100 + shard * 10 + n)
            key = sample_key(item_id)
            members = {
                f"result.{options.extension}": encode_image(images[item_id], options),
                "subject.png": encode_image(noise(7), options),
                "txt": b"prompt",
                "json": f'{{"id": "{item_id}"}}'.encode(),
            }
            writer.add_sample(key, members)
            writer.add_record(ItemRecord(id=item_id, key=key, status="ok"))
        writer.commit()
    return images


@pytest.mark.slow
def test_caption_stage_writes_sidecars_for_committed_shards_on_s3(
    blip, s3_server, s3_bucket, tmp_path
):
    storage = s3_server.storage()
    run_uri = f"{s3_bucket}/out/run"
    options = OutputOptions(include_references=True)
    images = write_committed_run(storage, run_uri, {0: ["a.1", "a-2", "a-3"], 1: ["b-1"]}, options)
    tars = {k: storage.read_bytes(ShardPaths(run_uri, k).tar) for k in (0, 1)}
    assert [r.item_id for r in result_images(storage, ShardPaths(run_uri, 0).tar)] == [
        "a.1",
        "a-2",
        "a-3",
    ]

    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        summary = caption_run(run_uri, str(blip), s3_server.settings(), actors=1, device="cpu")
        assert (summary.shards_captioned, summary.captions, summary.failed) == (2, 4, {})
        captioner = ModelCaptioner(blip)
        for shard, ids in {0: ["a.1", "a-2", "a-3"], 1: ["b-1"]}.items():
            table = pq.read_table(
                io.BytesIO(storage.read_bytes(sidecar_uri(ShardPaths(run_uri, shard))))
            )
            assert table.schema.metadata[b"caption_model"] == str(blip).encode()
            rows = table.to_pylist()
            assert [r["id"] for r in rows] == ids
            assert [r["key"] for r in rows] == [sample_key(i) for i in ids]
            assert [r["caption"] for r in rows] == [captioner.caption({}, images[i]) for i in ids]
        # Committed tars are never rewritten; a second pass keeps what this model already made.
        assert {k: storage.read_bytes(ShardPaths(run_uri, k).tar) for k in (0, 1)} == tars
        again = caption_run(run_uri, str(blip), s3_server.settings(), actors=1, device="cpu")
        assert (again.shards_captioned, again.shards_kept) == (0, 2)
        other = build_tiny_captioner(tmp_path / "blip-seed1", seed=1)
        changed = caption_run(run_uri, str(other), s3_server.settings(), actors=1, device="cpu")
        assert (changed.shards_captioned, changed.shards_kept) == (2, 0)
    finally:
        ray.shutdown()
    assert RunState(storage, run_uri).read_run_json() is not None
    card = storage.read_bytes(f"{run_uri}/README.md").decode()
    assert "`captions/*.parquet`" in card  # the card now lists the captions
    with pytest.raises(FileNotFoundError, match=r"no run.json"):
        caption_run(f"{s3_bucket}/out/not-a-run", str(blip), s3_server.settings())


def test_result_image_decodes_to_the_committed_pixels(tmp_path):
    from pipeline.storage import Storage

    storage = Storage()
    images = write_committed_run(storage, str(tmp_path / "run"), {0: ["x"]}, OutputOptions())
    (result,) = list(result_images(storage, ShardPaths(str(tmp_path / "run"), 0).tar))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(result.data))), images["x"])
    assert sidecar_uri(ShardPaths("r", 0)) == "r/captions/000000.parquet"
    assert sidecar_uri(ShardPaths("r", 0, retry=2)) == "r/captions/000000.retry-02.parquet"
