"""The published output schemas: generated from the code, never stale, and strict about what
made readers fail before (nulls that switch with objects, empty objects, maps)."""

from __future__ import annotations

import json

import datasets
import jsonschema
import pytest
from support.paths import REPO

from pipeline.models.base import SHARED_PARAMETER_KEYS
from pipeline.outputs.features import image_features
from pipeline.outputs.provenance import PROVENANCE_SCHEMA, SHARED_PARAMETERS, provenance
from pipeline.outputs.schemas import main, published, stale_schemas, text
from pipeline.weights import resolve, tiny

SCHEMAS = REPO / "pipeline" / "outputs" / "schema"


def test_committed_schemas_are_what_the_code_generates():
    assert not stale_schemas(SCHEMAS), (
        "regenerate with: python -m pipeline.outputs.schemas --write pipeline/outputs/schema"
    )
    assert sorted(p.name for p in SCHEMAS.iterdir()) == sorted(published())


def test_provenance_types_every_parameter_the_models_share():
    """A key models report as shared (fp8_matmul came with the fp8 kernels) has a fixed type in
    the schema instead of landing untyped in model_specific."""
    assert set(SHARED_PARAMETERS) == set(SHARED_PARAMETER_KEYS)


def test_the_check_command_notices_a_stale_schema(tmp_path, capsys):
    assert main(["--write", str(tmp_path)]) == 0
    assert main(["--check", str(tmp_path)]) == 0
    records = tmp_path / "records.arrow.json"
    records.write_text(records.read_text().replace('"double"', '"float"', 1))
    assert main(["--check", str(tmp_path)]) == 1
    assert "stale: " in capsys.readouterr().err
    assert text(published()["records.arrow.json"]) != records.read_text()


def example(**changes) -> dict:
    parameters = {name: 1 for name, kind in SHARED_PARAMETERS.items() if kind == "integer"}
    parameters.update(model="uso", prompt="p", guidance=4.0, mu=1.2, noise="n", dtype="float32")
    parameters.update(compile=False, fuse_lora=False, random_weights=True, fp8=False, pe="d")
    parameters.update(fp8_matmul=None)  # what Runtime.parameters reports with fp8 off
    arguments = dict(
        item_id="a",
        key="a",
        run="r",
        fingerprint="f",
        model="uso",
        random_weights=True,
        weights={"flux1-dev/flux1-dev.safetensors": "0" * 64},
        parameters=parameters,
        prompt=None,
        caption="",
        manifest="/m/part-0.parquet",
        row=0,
        subject=None,
        styles=[],
        style_lora=None,
        extra={},
        code_version="restyle 0",
    )
    return provenance(**{**arguments, **changes})


def test_provenance_has_no_nulls_and_no_empty_lists_even_for_a_bare_item():
    bare = example()
    jsonschema.Draft202012Validator(PROVENANCE_SCHEMA).validate(bare)
    assert bare["inputs"] == [{"role": "manifest", "uri": "/m/part-0.parquet"}]
    assert bare["extra"] == "{}" and bare["parameters"]["fp8"] == ""
    assert bare["parameters"]["fp8_matmul"] == ""
    assert bare["scores"]["style"] == {"computed": False, "value": 0.0}
    assert json.loads(bare["parameters"]["model_specific"]) == {"pe": "d"}

    def leaves(value):
        if isinstance(value, dict):
            assert value, "an empty object"
            for v in value.values():
                yield from leaves(v)
        elif isinstance(value, list):
            assert value, "an empty list"
            for v in value:
                yield from leaves(v)
        else:
            yield value

    assert None not in list(leaves(bare))


@pytest.mark.parametrize(
    "change",
    [
        {"style_lora": None},
        {"extra": {}},
        {"scores": {"clip_t": 0.3}},
        {"model": "flux"},
        {"inputs": []},
    ],
)
def test_the_schema_refuses_the_shapes_readers_choked_on(change):
    bad = {**example(), **change}
    assert list(jsonschema.Draft202012Validator(PROVENANCE_SCHEMA).iter_errors(bad))


def test_a_model_that_reports_no_shared_parameter_is_refused():
    reported = {k: v for k, v in example()["parameters"].items() if k != "mu"}
    with pytest.raises(ValueError, match="the model reported no 'mu' parameter"):
        example(parameters=reported)


def test_card_features_are_hugging_face_features():
    features = datasets.Features._from_yaml_list(image_features("png", triplets=True))
    assert features["result.png"] == datasets.Image()
    assert features["json"]["style_lora"]["scale"] == datasets.Value("float64")
    assert features["json"]["inputs"] == datasets.List(
        {"role": datasets.Value("string"), "uri": datasets.Value("string")}
    )


def test_the_tiny_marker_name_is_the_one_resolve_looks_for():
    assert resolve.TINY_MARKER == tiny.MARKER
