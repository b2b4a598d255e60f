"""A run folder keeps its promises: globs mean one thing, one current record per item after a
retry, absolute references, outputs that match the published schemas, and a dataset card."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest
import yaml
from support.paths import REPO
from support.run_folders import status_of

from pipeline.outputs.caption_sidecars import SIDECAR_SCHEMA
from pipeline.outputs.records import RECORD_SCHEMA
from pipeline.outputs.schemas import arrow_schema

SCHEMAS = REPO / "pipeline" / "outputs" / "schema"


def samples(tar: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar) as archive:
        for member in archive.getmembers():
            key, _, ext = member.name.partition(".")
            out.setdefault(key, {})[ext] = archive.extractfile(member).read()
    return out


def test_a_retry_leaves_one_current_record_per_item_pointing_at_its_image(run_folders):
    run = run_folders.omni
    status = status_of(run)
    assert (status["items"], status["ok"], status["failed"], status["retry_commits"]) == (
        7,
        7,
        0,
        1,
    )
    assert status["complete"] and not status["uncommitted"]
    records = [r for f in sorted(run.glob("part-*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert sorted(r["id"] for r in records) == [f"o{i}" for i in range(7)]
    retried = next(r for r in records if r["id"] == "o5")
    assert (retried["status"], retried["attempts"], retried["retry"]) == ("ok", 2, 1)
    tar, key = retried["output_key"].split("#")
    assert tar == str(run / "part-000001.retry-01.tar") and key == "o5"
    assert key in samples(Path(tar))
    for record in records:  # every reference is absolute and resolves
        tar, key = record["output_key"].split("#")
        assert Path(tar).is_absolute() and key in samples(Path(tar))
        assert Path(record["input_shard"]).is_absolute() and Path(record["input_shard"]).is_file()


def test_globs_reach_only_their_own_kind_even_recursively(run_folders):
    run = run_folders.omni
    names = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert [n for n in names if n.endswith(".tar")] == [
        "part-000000.tar",
        "part-000001.retry-01.tar",
        "part-000001.tar",
    ]
    assert sorted(run.rglob("part-*.parquet")) == sorted(run.glob("part-*.parquet"))
    for records in run.rglob("part-*.parquet"):
        assert pq.read_schema(records) == RECORD_SCHEMA
    sidecars = sorted(str(p.relative_to(run)) for p in run.glob("captions/*.parquet"))
    assert sidecars == [
        "captions/000000.parquet",
        "captions/000001.parquet",
        "captions/000001.retry-01.parquet",
    ]
    assert all(pq.read_schema(run / s).remove_metadata() == SIDECAR_SCHEMA for s in sidecars)
    assert {"README.md", "run.json"} <= set(names)
    assert json.loads((run / "run.json").read_text())["layout"] == 2


def test_outputs_match_the_published_schemas(run_folders):
    provenance_schema = json.loads((SCHEMAS / "provenance.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(provenance_schema)
    validator = jsonschema.Draft202012Validator(provenance_schema)
    records_schema = arrow_schema(json.loads((SCHEMAS / "records.arrow.json").read_text()))
    seen_models = set()
    for run in (run_folders.omni, run_folders.uso):
        for records in run.glob("part-*.parquet"):
            assert pq.read_schema(records) == records_schema
        for tar in run.glob("part-*.tar"):
            for key, members in samples(tar).items():
                provenance = json.loads(members["json"])
                validator.validate(provenance)
                assert provenance["key"] == key and provenance["random_weights"] is True
                seen_models.add(provenance["model"])
                for ref in provenance["inputs"]:
                    if ref["role"] in ("manifest", "subject", "style"):
                        assert Path(ref["uri"]).is_absolute() and Path(ref["uri"]).is_file()
    assert seen_models == {"uso", "omniconsistency"}


def test_provenance_has_one_shape_with_and_without_a_style_lora(run_folders):
    by_id = {}
    for tar in run_folders.omni.glob("part-*.tar"):
        for members in samples(tar).values():
            provenance = json.loads(members["json"])
            by_id[provenance["id"]] = provenance
    with_lora, without = by_id["o0"], by_id["o1"]
    assert with_lora["style_lora"]["name"] == "Ghibli" and with_lora["style_lora"]["scale"] == 1.0
    assert len(with_lora["style_lora"]["sha256"]) == 64
    assert without["style_lora"] == {
        "name": "",
        "source": "",
        "file": "",
        "sha256": "",
        "scale": 0.0,
    }
    assert json.loads(with_lora["extra"]) == {"sku": 100}
    assert json.loads(by_id["o4"]["extra"]) == {"sku": None}
    assert "cond_size" in json.loads(with_lora["parameters"]["model_specific"])
    assert with_lora["parameters"]["random_weights"] is True  # tiny presets are random weights


def test_the_dataset_card_describes_the_run(run_folders):
    text = (run_folders.omni / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    card = yaml.safe_load(front)
    assert (
        card["license"] == "other" and card["license_name"] == "flux-1-dev-non-commercial-license"
    )
    assert [c["config_name"] for c in card["configs"]] == ["images"]
    assert card["configs"][0]["data_files"][0]["path"] == "part-*.tar"
    assert "Random weights" in body and "omniconsistency" in body
    assert "`part-*.parquet`" in body and "`captions/*.parquet`" in body
    run_json = json.loads((run_folders.omni / "run.json").read_text())
    assert all(sha in body for sha in run_json["weights"].values())
    assert "`captions/*.parquet`" not in (run_folders.uso / "README.md").read_text()


def test_scores_are_a_struct_of_every_metric(run_folders):
    records = {
        r["id"]: r
        for f in run_folders.uso.glob("part-*.parquet")
        for r in pq.read_table(f).to_pylist()
    }
    assert set(records["u0"]["scores"]) == {"clip_t", "style"}
    assert all(isinstance(v, float) for v in records["u0"]["scores"].values())
    assert records["u3"]["scores"]["style"] is None  # no style image: no style score
    omni = pq.read_table(next(run_folders.omni.glob("part-*.parquet"))).to_pylist()
    assert omni[0]["scores"] == {"clip_t": None, "style": None}  # scoring was off
    with tarfile.open(run_folders.uso / "part-000000.tar") as tar:
        text_only = json.loads(tar.extractfile("u3.json").read())["scores"]
    assert text_only["style"] == {"computed": False, "value": 0.0}
    assert text_only["clip_t"] == {
        "computed": True,
        "value": pytest.approx(records["u3"]["scores"]["clip_t"]),
    }
