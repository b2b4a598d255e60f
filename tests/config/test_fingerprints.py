"""Run folders are named and found by the config fingerprint: it must never drift.

The values below were computed with the code before the config redesign (commit a20d39e).
Existing run folders, commit markers and nightly done indexes are identified by them, so a
change here means every operator's next run redoes its whole catalog in a new folder.
"""

from __future__ import annotations

import pytest

from pipeline.config import OutputOptions, RunConfig, SamplingDefaults, ScoringOptions
from pipeline.models.base import ModelOptions

WEIGHTS = {
    "flux1-dev/ae.safetensors": "a" * 64,
    "flux1-dev/flux1-dev.safetensors": "b" * 64,
    "uso/uso_flux_v1.0/dit_lora.safetensors": "c" * 64,
}
RANDOM = {"random-full": "random"}


def config(model: str = "uso", **overrides) -> RunConfig:
    return RunConfig(manifest=("m.parquet",), output="out", run="r", model=model, **overrides)


PINNED = {
    "defaults": (config(), WEIGHTS, "21990c2642999da8"),
    "random-full": (config(weights="random-full"), RANDOM, "eae313f4ec7508c0"),
    "jpeg+quality": (
        config(outputs=OutputOptions(image_format="jpeg", quality=90)),
        WEIGHTS,
        "54839f7c1464561f",
    ),
    "jpg spelling": (
        config(outputs=OutputOptions(image_format="jpg", quality=90)),
        WEIGHTS,
        "fd3f1f7292755ee1",
    ),
    "webp": (
        config(outputs=OutputOptions(image_format="webp", quality=80)),
        WEIGHTS,
        "ecfff56b931ca3d1",
    ),
    "template captions": (
        config(outputs=OutputOptions(caption="template", caption_template="{id}: {prompt}")),
        WEIGHTS,
        "eb4719849e2311a2",
    ),
    "model captions, triplets": (
        config(
            outputs=OutputOptions(caption="model", caption_model="tiny", include_references=True)
        ),
        WEIGHTS,
        "a62694e0037f4adc",
    ),
    "scoring": (
        config(
            scoring=ScoringOptions(
                metrics=("clip_t", "style"), model="/models/clip-vit-large-patch14"
            )
        ),
        WEIGHTS,
        "1156543404a39790",
    ),
    "fp8+compile": (
        config(options=ModelOptions(fp8=True, compile=True, dtype="bf16")),
        WEIGHTS,
        "deb1492fbdb422da",
    ),
    "fuse_lora+extra": (
        config(
            model="omniconsistency",
            options=ModelOptions(fuse_lora=True, extra={"apply_proj_loras": True}),
        ),
        WEIGHTS,
        "0358e1040ef8684a",
    ),
    "sampling overrides": (
        config(seed=42, sampling=SamplingDefaults(width=512, height=768, steps=30, guidance=3.5)),
        WEIGHTS,
        "7163599e486eb71b",
    ),
    "guidance only": (config(sampling=SamplingDefaults(guidance=4.0)), WEIGHTS, "30fa1caeaf25a70d"),
    "uppercase format, long dtype name": (
        config(outputs=OutputOptions(image_format="PNG"), options=ModelOptions(dtype="bfloat16")),
        WEIGHTS,
        "36938b30ce9a3d50",
    ),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_fingerprint_is_todays(name):
    run_config, weights, expected = PINNED[name]
    assert run_config.fingerprint(weights) == expected


def test_paths_cluster_shape_and_placement_do_not_change_the_fingerprint():
    moved = RunConfig(
        manifest=("s3://b/other/",),
        output="s3://b/out",
        run="other",
        model="uso",
        actors=4,
        prefetch_items=2,
        max_shard_attempts=5,
        only_ids=("a",),
        options=ModelOptions(device="cuda:1", offload=True, max_batch_size=4),
    )
    assert moved.fingerprint(WEIGHTS) == PINNED["defaults"][2]


NIGHTLY_SPECS = {
    "uso style images, prompt": (
        """kind: nightly
name: n
catalog: c/
output: o
model: uso
weights: tiny
style: {images: [styles/watercolor.png]}
prompt: "{prompt}, watercolor"
sampling: {width: 512, height: 512, steps: 20, guidance: 4}
outputs: {caption: template, caption_template: "{id}: {prompt}"}
""",
        "7a3257bc2bbe191e",
    ),
    "omniconsistency lora": (
        """kind: nightly
name: n
catalog: c/
output: o
model: omniconsistency
weights: tiny
style: {lora: Ghibli, lora_scale: 1}
outputs: {image_format: jpeg, quality: 92}
scoring: {metrics: [clip_t], model: tiny}
""",
        "ba24e227b5b1d3ee",
    ),
}


@pytest.mark.parametrize("name", sorted(NIGHTLY_SPECS))
def test_nightly_job_fingerprint_is_todays(name, monkeypatch):
    """The done index lives under the job fingerprint: run fingerprint + style set + prompt."""
    from pipeline.jobs.nightly import NightlyJob, NightlySpec
    from pipeline.jobs.specs import parse_spec_text
    from pipeline.weights import resolve
    from pipeline.weights.resolve import ResolvedWeights

    monkeypatch.setattr(
        resolve,
        "resolve_weights",
        lambda spec, model, storage=None: ResolvedWeights(spec, None, sha256=WEIGHTS),
    )
    text, expected = NIGHTLY_SPECS[name]
    spec = NightlySpec.parse(parse_spec_text(text, "/jobs/nightly.yaml"))
    assert NightlyJob(spec, None, night="2026-01-01").fingerprint() == expected
