"""Synthetic training triplets: pairing, the derived manifest, and a full job on S3.

The end-to-end test runs the real job on the real tiny USO model, with a real tiny CLIP scorer
and BLIP captioner, against the SeaweedFS server, and reads the shards back with `webdataset`
exactly as a trainer would (jobs/examples/read_triplets.py).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import webdataset as wds
from PIL import Image
from support.paths import REPO
from support.run_helpers import SMALL, parquet_bytes, png_bytes, sigterm_at_first_commit

from pipeline.errors import ExitCode
from pipeline.jobs.specs import SpecError, parse_spec_text, read_spec
from pipeline.jobs.triplet_pairing import Catalog, Pairing, TripletError, make_pairs, pair_sample
from pipeline.jobs.triplets import TripletJob, TripletSpec, triplet_row
from pipeline.manifests import ManifestItem
from pipeline.manifests.images import ImageRef
from pipeline.models.base import GenerationRequest
from pipeline.processing.caption_model import ModelCaptioner
from pipeline.processing.scoring import ClipScorer
from pipeline.weights.tiny import build_tiny_weights
from pipeline.weights.tiny_aux import build_tiny_captioner, build_tiny_clip


# ------------------------------------------------------------------ pairing
def test_sampled_pairs_are_seeded_and_stable_when_styles_are_added():
    subjects = [f"s{i}" for i in range(20)]
    styles = [f"t{i}" for i in range(8)]
    pairs = pair_sample(subjects, styles, per_subject=3, seed=7)
    assert sorted(pairs) == sorted(pair_sample(subjects[::-1], styles[::-1], 3, 7))  # order-free
    assert len(pairs) == 60 and len(set(pairs)) == 60
    assert pairs != pair_sample(subjects, styles, 3, seed=8)  # the seed matters
    picks = {s: {t for a, t in pairs if a == s} for s in subjects}
    assert len({frozenset(p) for p in picks.values()}) > 1  # subjects do not all get one set
    grown = pair_sample(subjects, [*styles, "t-new"], 3, 7)
    for subject in subjects:
        new_picks = {t for a, t in grown if a == subject}
        kept = new_picks - {"t-new"}
        assert kept <= picks[subject] and len(picks[subject] - kept) <= 1  # at most one displaced
    assert pair_sample(["s"], ["a", "b"], per_subject=5, seed=0) == [("s", "a"), ("s", "b")]


def item(item_id: str, **fields) -> ManifestItem:
    return ManifestItem(
        id=item_id, prompt=fields.pop("prompt", ""), source=("cat.parquet", 3), **fields
    )


def test_explicit_pairs_name_the_pair_and_the_reason_when_they_cannot_be_made():
    subjects = Catalog({"cup": item("cup", subject=ImageRef(uri="cup.png"))}).usable_for(
        "subject", ""
    )
    styles = Catalog(
        {
            "ink": item("ink", styles=[ImageRef(uri="ink.png")]),
            "ghibli": item("ghibli", style_lora="Ghibli"),
        }
    )
    uso_styles = styles.usable_for("style", "uso")
    assert make_pairs(
        Pairing(mode="pairs", pairs=(("cup", "ink"),)), subjects, uso_styles, None
    ) == [("cup", "ink")]
    with pytest.raises(TripletError, match=r"pairing.pairs\[1\].*'ghibli'.*no style image"):
        make_pairs(
            Pairing(mode="pairs", pairs=(("cup", "ink"), ("cup", "ghibli"))),
            subjects,
            uso_styles,
            None,
        )
    with pytest.raises(
        TripletError, match=r"\[0\].*subject id 'mug' is not in the subject catalog"
    ):
        make_pairs(Pairing(mode="pairs", pairs=(("mug", "ink"),)), subjects, uso_styles, None)
    with pytest.raises(TripletError, match="listed twice"):
        make_pairs(
            Pairing(mode="pairs", pairs=(("cup", "ink"), ("cup", "ink"))),
            subjects,
            uso_styles,
            None,
        )
    omni_styles = styles.usable_for("style", "omniconsistency")
    assert sorted(omni_styles.items) == ["ghibli"]
    assert "no style_lora" in omni_styles.unusable["ink"]


def test_a_triplet_row_carries_both_sides_and_the_template_fields():
    subject = item(
        "cup",
        subject=ImageRef(uri="s3://b/cup.png"),
        prompt="A mug.",
        width=64,
        extra={"category": "kitchen", "bytes": 3},
    )
    style = item(
        "ink",
        styles=[ImageRef(uri="s3://b/ink.png")],
        style_lora="Chinese_Ink",
        style_lora_scale=0.8,
        extra={"name": "Ink wash", "lora": "x"},
    )
    row = triplet_row(
        subject, style, "omniconsistency", "{subject_prompt} {style_name} ({subject_category})"
    )
    assert row["id"] == "cup__ink" and row["model"] == "omniconsistency"
    assert row["prompt"] == "A mug. Ink wash (kitchen)"
    assert (row["subject"], row["styles"], row["width"]) == (
        "s3://b/cup.png",
        ["s3://b/ink.png"],
        64,
    )
    assert (row["style_lora"], row["style_lora_scale"]) == ("Chinese_Ink", 0.8)
    assert (row["subject_id"], row["style_id"], row["style_name"]) == ("cup", "ink", "Ink wash")
    assert (
        "subject_bytes" not in row or row["subject_bytes"] is None
    )  # a column called "bytes" cannot clash
    uso_row = triplet_row(subject, style, "uso", "{subject_prompt}")
    assert uso_row.get("style_lora") is None  # USO does not take style LoRAs
    with pytest.raises(TripletError, match=r"names field 'colour'"):
        triplet_row(subject, style, "uso", "{colour}")


def test_spec_mistakes_name_the_key(tmp_path):
    base = "kind: triplets\nname: t\nsubjects: s.parquet\nstyles: t.parquet\noutput: out\n"
    cases = {
        "pairing: {mode: random}": "pairing.mode: must be one of all, sample, pairs",
        "pairing: {mode: sample, per_subject: 0}": "pairing.per_subject: must be at least 1",
        "pairing: {mode: pairs}": "pairing.pairs: mode 'pairs' needs",
        "models: [uso, flux]": "models[1]: must be one of",
        "sampling: {steps: ten}": "sampling.steps: must be an integer, got str 'ten'",
        "scoring: {metrics: [beauty], model: tiny}": "scoring.metrics: unknown score metric",
        "scoring: {metrics: [clip_t]}": "scoring.model: is required",
        "outputs: {caption: model}": "outputs.caption_model: is required",
        "outputs: {image_format: gif}": "outputs.image_format: unknown image format",
        "colour: blue": "unknown key(s) ['colour']",
    }
    for extra, message in cases.items():
        with pytest.raises(SpecError) as error:
            TripletSpec.parse(parse_spec_text(base + extra, "jobs/t.yaml"))
        assert str(error.value).startswith("jobs/t.yaml: ") and message in str(error.value), extra
    with pytest.raises(SpecError, match="name: must be 1-63"):
        parse_spec_text("kind: triplets\nname: 'a b'\n", "x.yaml")
    with pytest.raises(SpecError, match="cannot read it"):
        read_spec(str(tmp_path / "missing.yaml"))


def test_shipped_job_specs_are_valid():
    from pipeline.jobs.nightly import NightlySpec

    for path in sorted((REPO / "jobs").rglob("*.yaml")):
        if "kuberay" in path.parts:
            continue
        spec = read_spec(str(path))
        parsed = (TripletSpec if spec.data["kind"] == "triplets" else NightlySpec).parse(spec)
        assert parsed.name == spec.data["name"]


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def aux_models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("aux")
    return {"clip": build_tiny_clip(folder / "clip"), "blip": build_tiny_captioner(folder / "blip")}


@pytest.mark.slow
def test_triplet_job_on_s3_writes_shards_a_trainer_reads_with_webdataset(
    tmp_path, s3_server, s3_bucket, aux_models
):
    storage = s3_server.storage()
    images = {name: png_bytes(seed) for seed, name in enumerate(["cup", "house", "ink", "waves"])}
    for name, data in images.items():
        storage.write_bytes(f"{s3_bucket}/images/{name}.png", data)
    storage.write_bytes(
        f"{s3_bucket}/catalog/subjects.parquet",
        parquet_bytes(
            [
                {
                    "id": "cup",
                    "subject": "../images/cup.png",
                    "prompt": "A mug.",
                    "category": "kitchen",
                    **SMALL,
                },
                {
                    "id": "house",
                    "subject": "../images/house.png",
                    "prompt": "A house.",
                    "category": "home",
                    **SMALL,
                },
                {"id": "no-picture", "prompt": "Left out: no subject image."},
            ]
        ),
    )
    storage.write_bytes(
        f"{s3_bucket}/catalog/styles.parquet",
        parquet_bytes(
            [
                {"id": "ink", "styles": ["../images/ink.png"], "name": "Ink"},
                {"id": "waves", "styles": ["../images/waves.png"], "name": "Waves"},
            ]
        ),
    )
    spec_uri = f"{s3_bucket}/jobs/triplets.yaml"  # a spec on S3: catalogs resolve beside it
    storage.write_bytes(
        spec_uri,
        f"""
kind: triplets
name: tri
subjects: ../catalog/subjects.parquet
styles: ../catalog/styles.parquet
pairing: {{mode: all}}
models: [uso]
prompt: "{{subject_prompt}} In {{style_name}} style."
output: {s3_bucket}/out
weights: {build_tiny_weights(tmp_path / "weights")}
options: {{device: cpu}}
outputs: {{caption: model, caption_model: {aux_models["blip"]}}}
scoring: {{metrics: [clip_t, style], model: {aux_models["clip"]}}}
eval: {{metrics: [clip_i_style, clip_t], models: {{clip: {aux_models["clip"]}}}}}
gates: {{clip_i_style: 0.9}}
actors: 1
rows_per_shard: 3
""".encode(),
    )
    spec = TripletSpec.parse(read_spec(spec_uri, storage))
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        summary = TripletJob(spec, s3_server.settings(), show_progress=False).run()
        again = TripletJob(spec, s3_server.settings(), show_progress=False).run()
    finally:
        ray.shutdown()

    assert summary.pairs == {"uso": 4} and summary.exit_code == 0
    assert any("'no-picture'" in m and "no subject image" in m for m in summary.rejected_rows)
    run = summary.runs["uso"]
    assert (run.ok, run.failed, run.shards_committed) == (4, 0, 2)  # 4 rows, 3 per shard
    assert (again.runs["uso"].shards_already_done, again.runs["uso"].shards_committed) == (2, 0)
    # Scored after the run (resumed, not redone, the second time) and split by the gate.
    assert (summary.evals["uso"].shards_scored, again.evals["uso"].shards_kept) == (2, 2)
    gate = again.gates["uso"]
    kept = pq.read_table(io.BytesIO(storage.read_bytes(gate.kept_uri))).to_pylist()
    rejected = pq.read_table(io.BytesIO(storage.read_bytes(gate.rejected_uri))).to_pylist()
    assert sorted(r["id"] for r in kept + rejected) == [
        "cup__ink",
        "cup__waves",
        "house__ink",
        "house__waves",
    ]
    assert all(r["clip_i_style"] >= 0.9 for r in kept)
    assert all(
        r["reason"].startswith("clip_i_style ") and " < 0.9" in r["reason"] for r in rejected
    )
    assert gate.kept_uri == f"{s3_bucket}/out/tri/uso/gates/kept.parquet"

    # A trainer's view: plain webdataset over the two shards (copied locally; webdataset has
    # no s3:// reader of its own).
    local = tmp_path / "shards"
    local.mkdir()
    for k in (0, 1):
        (local / f"part-{k:06d}.tar").write_bytes(
            storage.read_bytes(f"{s3_bucket}/out/tri/uso/part-{k:06d}.tar")
        )
    samples = list(wds.WebDataset(str(local / "part-{000000..000001}.tar"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == [
        "cup__ink",
        "cup__waves",
        "house__ink",
        "house__waves",
    ]
    clip = ClipScorer(aux_models["clip"], ("clip_t", "style"))
    captioner = ModelCaptioner(aux_models["blip"])
    for sample in samples:
        assert {"subject.png", "style.png", "result.png", "txt", "json"} <= set(sample)
        subject_id, style_id = sample["__key__"].split("__")
        assert sample["subject.png"] == _png_of(images[subject_id])  # the references themselves
        assert sample["style.png"] == _png_of(images[style_id])
        result = np.asarray(Image.open(io.BytesIO(sample["result.png"])))
        assert result.shape == (SMALL["height"], SMALL["width"], 3)
        provenance = json.loads(sample["json"])
        assert json.loads(provenance["extra"])["subject_id"] == subject_id
        assert (
            provenance["prompt"] == f"A {'mug' if subject_id == 'cup' else 'house'}. "
            f"In {style_id.capitalize()} style."
        )
        assert sample["txt"].decode() == captioner.caption({}, result)  # captioned in the actor
        style_image = Image.open(io.BytesIO(images[style_id])).convert("RGB")
        expected = clip.score(
            {}, GenerationRequest("x", provenance["prompt"], 0, styles=[style_image]), result
        )
        computed = {k: v["value"] for k, v in provenance["scores"].items() if v["computed"]}
        assert computed == pytest.approx(expected, abs=1e-5)
        assert all(-1.0 <= v <= 1.0 for v in expected.values())

    records = pq.read_table(
        io.BytesIO(storage.read_bytes(f"{s3_bucket}/out/tri/uso/part-000000.parquet"))
    )
    rows = records.to_pylist()
    assert [None not in r["scores"].values() for r in rows] == [True] * 3

    # The shipped reader filters on the scores.
    threshold = sorted(json.loads(s["json"])["scores"]["style"]["value"] for s in samples)[2]
    reader = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs" / "examples" / "read_triplets.py"),
            str(local / "part-{000000..000001}.tar"),
            "--min-style",
            str(threshold),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reader.returncode == 0, reader.stderr
    assert reader.stdout.strip().endswith(f"2 triplets passed the filters {{'style': {threshold}}}")


@pytest.mark.slow
def test_a_triplet_job_stopped_by_sigterm_exits_75_without_scoring_or_gating(tmp_path, aux_models):
    """Scores and gates of a part of a run would split the triplets of that part only: a
    stopped job does neither (nor any later model's run); its rerun resumes."""
    for seed, name in enumerate(["cup", "ink"]):
        (tmp_path / f"{name}.png").write_bytes(png_bytes(seed))
    subjects = [
        {"id": f"s{i}", "subject": "cup.png", "prompt": "A mug.", **SMALL, "steps": 4}
        for i in range(10)
    ]
    (tmp_path / "subjects.parquet").write_bytes(parquet_bytes(subjects))
    styles = [{"id": "ink", "styles": ["ink.png"], "name": "Ink"}]
    (tmp_path / "styles.parquet").write_bytes(parquet_bytes(styles))
    (tmp_path / "t.yaml").write_text(
        f"""
kind: triplets
name: tri
subjects: subjects.parquet
styles: styles.parquet
pairing: {{mode: all}}
models: [uso]
prompt: "{{subject_prompt}} In {{style_name}} style."
output: {tmp_path / "out"}
weights: {build_tiny_weights(tmp_path / "weights")}
options: {{device: cpu}}
eval: {{metrics: [clip_i_style], models: {{clip: {aux_models["clip"]}}}}}
gates: {{clip_i_style: 0.9}}
actors: 1
rows_per_shard: 2
"""
    )
    run = tmp_path / "out" / "tri" / "uso"
    command = [sys.executable, "-m", "pipeline.cli", "triplets", str(tmp_path / "t.yaml")]
    command += ["--no-progress", "--json"]
    code, stdout, stderr = sigterm_at_first_commit(command, run)

    assert code == ExitCode.INTERRUPTED, stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["exit_code"] == 75 and summary["stopped"]
    assert "triplets tri stopped by a signal after the uso run" in stderr
    assert len(list(run.glob("*.stats.json"))) < 5  # the drain left queued shards
    assert not (run / "scores").exists() and not (run / "gates").exists()


def _png_of(data: bytes) -> bytes:
    """The catalog image re-encoded the way the run encodes references (decoded RGB -> PNG)."""
    from pipeline.config import OutputOptions
    from pipeline.outputs.samples import encode_image

    return encode_image(Image.open(io.BytesIO(data)).convert("RGB"), OutputOptions())
