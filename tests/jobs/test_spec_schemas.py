"""The published JSON Schemas of the job specs: generated from the spec models, never stale,
and every shipped spec both validates against its schema and says so to editors."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml
from support.paths import REPO

from pipeline.jobs.schemas import main, schema_file, schema_models, schema_text, stale_schemas

SCHEMAS = REPO / "jobs" / "schema"
HEADER = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")


def shipped_specs():
    return [p for p in sorted((REPO / "jobs").rglob("*.yaml")) if "kuberay" not in p.parts]


def test_committed_schemas_are_what_the_models_generate():
    assert not stale_schemas(SCHEMAS), (
        "regenerate with: python -m pipeline.jobs.schemas --write jobs/schema"
    )
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(
        schema_file(kind) for kind in schema_models()
    )


def test_the_check_command_notices_a_stale_schema(tmp_path, capsys):
    assert main(["--write", str(tmp_path)]) == 0
    assert main(["--check", str(tmp_path)]) == 0
    (tmp_path / "nightly.schema.json").write_text(schema_text("nightly").replace("1000", "999"))
    assert main(["--check", str(tmp_path)]) == 1
    assert "stale: " in capsys.readouterr().err


@pytest.mark.parametrize("path", shipped_specs(), ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_specs_validate_against_their_schema_and_name_it(path):
    lines = path.read_text().splitlines()
    header = HEADER.match(lines[0])
    data = yaml.safe_load(path.read_text())
    assert header, f"{path.name}: first line must be '# yaml-language-server: $schema=...'"
    schema_path = (path.parent / header.group(1)).resolve()
    assert schema_path == SCHEMAS / schema_file(data["kind"])
    schema = json.loads(schema_path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(data)


def test_schemas_refuse_what_the_specs_refuse():
    schema = json.loads((SCHEMAS / "triplets.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    good = {
        "kind": "triplets",
        "name": "t",
        "subjects": "s.parquet",
        "styles": ["t.parquet"],
        "output": "out",
    }
    assert not list(validator.iter_errors(good))
    driver_keys = {"lease_ttl": 30, "join": True, "storage_retry_budget": None}
    assert not list(validator.iter_errors({**good, **driver_keys}))
    for bad in (
        {"sampling": {"steps": "ten"}},
        {"sampling": {"width": 8192}},
        {"models": ["flux"]},
        {"outputs": {"image_format": "gif"}},
        {"options": {"dtype": "int8"}},
        {"colour": "blue"},
        {"kind": "nightly"},
        {"scoring": {"metrics": ["beauty"]}},
        {"pairing": {"mode": "random"}},
        {"capacity_wait": -1},
        {"lease_ttl": 0.5},
        {"join": "yes"},
        {"storage_retry_budget": -1},
        {"storage_retry_budget": "soon"},
    ):
        assert list(validator.iter_errors({**good, **bad})), bad
