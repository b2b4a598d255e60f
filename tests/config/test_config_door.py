"""One config door: the command line and the job specs build a run the same way.

An operator who writes `--width 0` and one who writes `sampling: {width: 0}` get the same
refusal, worded the same way, each naming the place they wrote it; the same choices give the
same `RunConfig` and the same fingerprint, whichever door they came through.
"""

from __future__ import annotations

import os
import pickle

import pytest

from pipeline.cli.run_options import OPTION_FIELDS, run_request
from pipeline.config import (
    ConfigError,
    ExecutionOptions,
    ModelName,
    RunConfig,
    RunSettings,
    WeightsKind,
    WeightsSpec,
)
from pipeline.config.values import Dtype, PathBase
from pipeline.jobs.specs import SpecError, parse_spec_text
from pipeline.jobs.triplets import TripletSpec
from pipeline.models.base import ModelOptions
from pipeline.models.registry import MODEL_NAMES

SPEC = "kind: triplets\nname: t\nsubjects: s.parquet\nstyles: t.parquet\noutput: out\n"
REQUIRED = {"MANIFEST": ["m.parquet"], "--out": "out", "--model": "uso"}

# (option, spec key path, bad value, what both doors say)
REFUSALS = [
    ("--width", "sampling.width", 0, "must be between 16 and 4096, got 0"),
    ("--height", "sampling.height", 4097, "must be between 16 and 4096, got 4097"),
    ("--steps", "sampling.steps", 0, "must be between 1 and 1000, got 0"),
    ("--guidance", "sampling.guidance", -1.0, "must be at least 0, got -1.0"),
    ("--guidance", "sampling.guidance", float("inf"), "must be a finite number, got inf"),
    ("--seed", "seed", -1, "must be between 0 and 9223372036854775807, got -1"),
    ("--actors", "actors", -1, "must be at least 0, got -1"),
    ("--quality", "outputs.quality", 101, "must be between 1 and 100, got 101"),
    (
        "--image-format",
        "outputs.image_format",
        "gif",
        "unknown image format 'gif'; use one of ['jpeg', 'jpg', 'png', 'webp']",
    ),
    (
        "--caption",
        "outputs.caption",
        "bogus",
        "must be one of prompt, template, model, got 'bogus'",
    ),
    (
        "--caption-template",
        "outputs.caption_template",
        "{prompt",
        "not a valid template: expected '}' before end of string",
    ),
    (
        "--dtype",
        "options.dtype",
        "int8",
        "must be one of auto, bf16, bfloat16, fp16, float16, fp32, float32, float64, got 'int8'",
    ),
    ("--device", "options.device", "gpu", "must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("--max-batch-size", "options.max_batch_size", 0, "must be at least 1, got 0"),
    ("--capacity-wait", "capacity_wait", -1.0, "must be at least 0, got -1.0"),
    ("--lease-ttl", "lease_ttl", 0.5, "must be at least 1, got 0.5"),
    ("--lease-ttl", "lease_ttl", float("inf"), "must be a finite number, got inf"),
    ("--storage-retry-budget", "storage_retry_budget", -1.0, "must be at least 0, got -1.0"),
]


def spec_with(path: str, value) -> str:
    section, _, key = path.rpartition(".")
    shown = repr(value) if isinstance(value, str) else value
    shown = ".inf" if value == float("inf") else shown
    return SPEC + (f"{section}: {{{key}: {shown}}}\n" if section else f"{key}: {shown}\n")


@pytest.mark.parametrize(
    ("option", "path", "value", "message"), REFUSALS, ids=[f"{r[0]}={r[2]}" for r in REFUSALS]
)
def test_both_doors_refuse_a_value_with_the_same_words(option, path, value, message):
    with pytest.raises(ConfigError) as cli:
        run_request({**REQUIRED, option: value})
    assert str(cli.value) == f"{option}: {message}"
    with pytest.raises(SpecError) as spec:
        TripletSpec.parse(parse_spec_text(spec_with(path, value), "jobs/t.yaml"))
    assert str(spec.value) == f"jobs/t.yaml: {path}: {message}"


def test_rules_between_settings_name_both_places_the_door_s_way():
    with pytest.raises(
        ConfigError,
        match=r"^--caption-template: is required when --caption is "
        r"template$",
    ):
        run_request({**REQUIRED, "--caption": "template"})
    with pytest.raises(ConfigError, match=r"^--caption-model: is required when --caption is model"):
        run_request({**REQUIRED, "--caption": "model"})
    with pytest.raises(
        SpecError,
        match=r"^jobs/t.yaml: outputs.caption_template: is required when "
        r"outputs.caption is template$",
    ):
        TripletSpec.parse(parse_spec_text(SPEC + "outputs: {caption: template}", "jobs/t.yaml"))
    with pytest.raises(SpecError, match=r"scoring.model: is required when scoring.metrics is set"):
        TripletSpec.parse(parse_spec_text(SPEC + "scoring: {metrics: [style]}", "jobs/t.yaml"))
    with pytest.raises(
        ConfigError,
        match=r"^--model: must be one of uso, omniconsistency, "
        r"got 'flux'$",
    ):
        run_request({**REQUIRED, "--model": "flux"})


def test_several_mistakes_are_still_one_line_naming_each_place():
    with pytest.raises(ConfigError) as error:
        run_request({**REQUIRED, "--width": 0, "--steps": 0, "--caption": "bogus"})
    assert str(error.value) == (
        "--width: must be between 16 and 4096, got 0 (and 2 more: --steps, --caption)"
    )
    with pytest.raises(SpecError) as error:
        TripletSpec.parse(
            parse_spec_text(SPEC + "colour: blue\nflavour: x\nsampling: {bogus: 1}", "jobs/t.yaml")
        )
    message = str(error.value)
    assert message.startswith(
        "jobs/t.yaml: sampling: unknown key(s) ['bogus']; known: width, "
        "height, steps, guidance (and 1 more: the whole input)"
    )
    assert "\n" not in message and "pydantic" not in message.lower()


def test_yaml_is_held_to_its_types_not_coerced():
    for extra, message in {
        "seed: '7'": "seed: must be an integer, got str '7'",
        "actors: 1.0": "actors: must be an integer, got float 1.0",
        "options: {fp8: 'yes'}": "options.fp8: must be true/false, got str 'yes'",
        "options: {compile: 1}": "options.compile: must be true/false, got int 1",
        "join: 'yes'": "join: must be true/false, got str 'yes'",
        "lease_ttl: '30'": "lease_ttl: must be a number, got str '30'",
        "sampling: {guidance: true}": "sampling.guidance: must be a number, got True",
        "outputs: {include_references: true}": "outputs: unknown key(s) ['include_references']",
        "options: {extra: {cond_size: 32}}": "options: unknown key(s) ['extra']",
    }.items():
        with pytest.raises(SpecError) as error:
            TripletSpec.parse(parse_spec_text(SPEC + extra, "jobs/t.yaml"))
        assert message in str(error.value), extra
    spec = TripletSpec.parse(
        parse_spec_text(SPEC + "sampling: {guidance: 4, steps: null}", "t.yaml")
    )
    assert spec.sampling.guidance == 4.0 and isinstance(spec.sampling.guidance, float)
    assert spec.sampling.steps is None  # null means the default


def test_the_same_choices_through_either_door_make_the_same_run():
    cli = run_request(
        {
            "MANIFEST": ["m.parquet"],
            "--out": "out",
            "--run": "r",
            "--model": "omniconsistency",
            "--weights": "hf",
            "--seed": 42,
            "--actors": 2,
            "--width": 512,
            "--height": 768,
            "--steps": 30,
            "--guidance": 3.5,
            "--image-format": "jpeg",
            "--quality": 90,
            "--caption": "template",
            "--caption-template": "{id}: {prompt}",
            "--device": "cpu",
            "--dtype": "bf16",
            "--compile": True,
            "--fp8": True,
            "--offload": False,
            "--fuse-lora": False,
            "--max-batch-size": 2,
        }
    ).config()
    spec = TripletSpec.parse(
        parse_spec_text(
            SPEC
            + """
weights: hf
seed: 42
actors: 2
sampling: {width: 512, height: 768, steps: 30, guidance: 3.5}
outputs: {image_format: jpeg, quality: 90, caption: template, caption_template: "{id}: {prompt}"}
options: {device: cpu, dtype: bf16, compile: true, fp8: true, max_batch_size: 2}
""",
            "jobs/t.yaml",
        )
    )
    from_spec = spec.settings.run_config(
        manifest=["m.parquet"], output="out", run="r", model="omniconsistency"
    )
    assert from_spec == cli
    assert from_spec.fingerprint({"f": "0" * 64}) == cli.fingerprint({"f": "0" * 64})


def test_the_command_line_defaults_are_todays_defaults():
    from test_fingerprints import PINNED

    config, weights, fingerprint = PINNED["defaults"]
    built = run_request({**REQUIRED, "--run": "r"}).config()
    assert built == config and built.fingerprint(weights) == fingerprint
    unnamed = run_request(REQUIRED).config()
    assert unnamed.run == "" and unnamed.named(weights).run == f"uso-{fingerprint}"
    assert unnamed.named(weights).named({"other": "sha"}).run == f"uso-{fingerprint}"  # kept


def test_every_option_fills_a_setting_that_exists():
    for option, path in OPTION_FIELDS.items():
        model = (
            RunConfig
            if path.split(".")[0] in ("manifest", "output", "run", "model")
            else RunSettings
        )
        node = model
        for part in path.split("."):
            assert part in node.model_fields, (option, path)
            node = node.model_fields[part].annotation


def test_weights_spec_is_parsed_once_into_its_kind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert WeightsSpec.parse("tiny") == WeightsSpec(WeightsKind.TINY, "tiny")
    assert WeightsSpec.parse("random-full").kind == WeightsKind.RANDOM_FULL
    assert WeightsSpec.parse("hf").remote and WeightsSpec.parse("s3://b/w/").remote
    assert WeightsSpec.parse("s3://b/w/") == WeightsSpec(WeightsKind.S3_MIRROR, "s3://b/w/")
    local = WeightsSpec.parse("weights/here")
    assert local == WeightsSpec(WeightsKind.LOCAL, str(tmp_path / "weights" / "here"))
    assert not local.remote and str(local) == str(tmp_path / "weights" / "here")
    assert WeightsSpec.parse("file:///data/w").value == "/data/w"
    assert WeightsSpec.parse("w", PathBase("/jobs/nightly.yaml")).value == "/jobs/w"
    assert WeightsSpec.parse("w", PathBase("s3://b/jobs/n.yaml")).value == "s3://b/jobs/w"
    assert WeightsSpec.of(local) is local and WeightsSpec.of("tiny").kind == WeightsKind.TINY
    with pytest.raises(ValueError, match="got ''"):
        WeightsSpec.parse("")

    spec = TripletSpec.parse(parse_spec_text(SPEC + "weights: ../w", "/jobs/sub/t.yaml"))
    assert spec.weights == WeightsSpec(WeightsKind.LOCAL, "/jobs/w")
    config = run_request({**REQUIRED, "--weights": "w", "--run": "r"}).config()
    assert config.weights.kind == WeightsKind.LOCAL
    assert config.public_dict()["weights"] == os.path.join(str(tmp_path), "w")  # a string


def test_a_run_config_travels_to_ray_actors_intact():
    config = run_request(
        {**REQUIRED, "--run": "r", "--weights": "s3://b/w", "--width": 64}
    ).config()
    copy = pickle.loads(pickle.dumps(config))
    assert copy == config and copy.weights.kind == WeightsKind.S3_MIRROR
    assert isinstance(copy.options, ModelOptions) and copy.model == "uso"
    assert type(copy.model) is str and type(copy.outputs.caption) is str  # messages show 'uso'


def test_direct_construction_is_held_to_the_same_rules():
    """Code that builds a RunConfig itself (tests, benchmarks) meets the same rules, as
    pydantic's own report: only the doors word it for operators."""
    from pydantic import ValidationError

    with pytest.raises(ValueError, match="max_batch_size must be an integer >= 1, got 0"):
        ModelOptions(max_batch_size=0)  # the models' own options refuse it before any config
    with pytest.raises(ValidationError, match="must be at least 1"):
        RunConfig(manifest=("m",), output="o", run="r", model="uso", prefetch_items=0)
    with pytest.raises(ValidationError, match="must be one of uso, omniconsistency, got 'flux'"):
        RunConfig(manifest=("m",), output="o", run="r", model="flux")


def test_choices_follow_the_code_that_uses_them():
    from pipeline.models.runtime import DTYPES

    assert {m.value for m in ModelName} == set(MODEL_NAMES)
    assert {d.value for d in Dtype} == {"auto", *DTYPES}
    defaults = ModelOptions()
    assert set(ExecutionOptions.model_fields) == {
        f for f in defaults.__dataclass_fields__ if f != "extra"
    }
    assert ExecutionOptions().model_options() == defaults


def test_the_config_imports_neither_torch_nor_ray():
    import subprocess
    import sys

    code = (
        "import sys, pipeline.config, pipeline.jobs.specs, pipeline.cli.run; "
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_driver_and_storage_settings_come_through_either_door_outside_the_run_config(tmp_path):
    """lease_ttl, join and storage_retry_budget: the same keys as --lease-ttl, --join and
    --storage-retry-budget, through options, a --config file or a job spec; they never reach
    the RunConfig (run.json) nor the fingerprint, so a helper joins whatever they say."""
    from pipeline.config import DriverSettings

    cli = run_request(
        {**REQUIRED, "--lease-ttl": 30.0, "--join": True, "--storage-retry-budget": 12.0}
    )
    spec = TripletSpec.parse(
        parse_spec_text(
            SPEC + "lease_ttl: 30\njoin: true\nstorage_retry_budget: 12\n", "jobs/t.yaml"
        )
    )
    run_file = tmp_path / "run.yaml"
    run_file.write_text("lease_ttl: 30\njoin: true\nstorage_retry_budget: 12\n")
    defaults = {"--lease-ttl": 60.0, "--join": False, "--storage-retry-budget": None}
    from_file = run_request({**REQUIRED, **defaults}, set(defaults), str(run_file))
    for door in (cli, spec, spec.settings, from_file):
        assert door.driver_settings() == DriverSettings(lease_ttl_s=30.0, join=True), door
        assert door.storage_retry_budget == 12.0, door
    # an option given on the command line wins over the file
    over = run_request({**REQUIRED, **defaults, "--lease-ttl": 90.0}, {"--join"}, str(run_file))
    assert over.driver_settings() == DriverSettings(lease_ttl_s=90.0, join=True)
    plain = run_request(REQUIRED)
    assert plain.driver_settings() == DriverSettings() and plain.storage_retry_budget is None
    assert cli.config() == plain.config()  # not the run's configuration
    assert "lease_ttl" not in cli.config().public_dict()


def test_a_job_runs_with_its_specs_storage_retry_budget(monkeypatch):
    from pipeline.jobs.nightly import NightlyJob, NightlySpec
    from pipeline.jobs.triplets import TripletJob
    from pipeline.storage import StorageSettings

    monkeypatch.delenv("RESTYLE_STORAGE_RETRY_BUDGET", raising=False)
    given = StorageSettings(retry_budget_s=300)
    spec = TripletSpec.parse(parse_spec_text(SPEC + "storage_retry_budget: 45\n", "t.yaml"))
    assert TripletJob(spec, given).settings.retry_budget_s == 45
    assert TripletJob(spec, None).storage.settings.retry_budget_s == 45
    unset = TripletSpec.parse(parse_spec_text(SPEC, "t.yaml"))
    assert TripletJob(unset, given).settings.retry_budget_s == 300
    nightly = NightlySpec.parse(
        parse_spec_text(
            "kind: nightly\nname: n\ncatalog: c.parquet\noutput: out\nmodel: uso\n"
            "style: {images: [s.png]}\nstorage_retry_budget: 0\njoin: true\n",
            "n.yaml",
        )
    )
    assert NightlyJob(nightly, given, night="2026-12-01").settings.retry_budget_s == 0
    assert nightly.driver_settings().join
