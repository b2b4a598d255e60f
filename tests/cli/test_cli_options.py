"""`restyle run` / `restyle plan` options: refused up front in one line, resolved once.

A mistake in an option is reported before Ray or torch start (no model load, no cluster, a
fraction of a second), as one line naming the option, with exit code 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.errors import ExitCode

RESTYLE = [sys.executable, "-m", "pipeline.cli"]
MISTAKES = {
    "--width 0": "--width: must be between 16 and 4096, got 0",
    "--caption bogus": "--caption: must be one of prompt, template, model, got 'bogus'",
    "--caption template": "--caption-template: is required when --caption is template",
    "--model flux": "--model: must be one of uso, omniconsistency, got 'flux'",
    "--image-format gif": "--image-format: must be one of png, jpeg, jpg, webp, got 'gif'",
    "--dtype fp9": "--dtype: must be one of auto, bf16, bfloat16, fp16, float16, fp32, float32, "
    "float64, got 'fp9'",
    "--model all": "--model: must be one of uso, omniconsistency, got 'all'",
    "--quality 0": "--quality: must be between 1 and 100, got 0",
}


@pytest.mark.parametrize("options", sorted(MISTAKES))
def test_a_wrong_option_is_one_line_and_exit_2(options, tmp_path):
    result = subprocess.run(
        [*RESTYLE, "run", "m.parquet", "--out", str(tmp_path / "o"), *options.split()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (result.returncode, result.stderr, result.stdout) == (
        2,
        f"error: {MISTAKES[options]}\n",
        "",
    )


def test_a_wrong_option_stops_before_ray_or_torch_are_imported(tmp_path):
    code = (
        "import sys\nfrom pipeline.cli.main import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as done:\n"
        "    print(done.code, sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "plan", "m.parquet", "--out", str(tmp_path), "--steps", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip() == "2 []", result.stderr
    assert result.stderr.strip() == "error: --steps: must be between 1 and 1000, got 0"
    assert not (tmp_path / "o").exists()


def test_plan_resolves_the_weights_once_for_the_run_name_and_the_plan(
    tmp_path, tiny_weights, monkeypatch
):
    """Naming the run `<model>-<fingerprint>` needs the weights' sha256s; the driver reuses
    them instead of hashing (or asking the Hub or a mirror) a second time."""
    from support.run_helpers import parquet_bytes, uso_rows, write_images

    import pipeline.execution.driver as driver
    import pipeline.weights.resolve as resolve

    images = write_images(tmp_path / "images", 2)
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(parquet_bytes(uso_rows("a", 2, str(images[0]), str(images[1]))))
    calls = []
    original = resolve.resolve_weights

    def counted(spec, model, **kwargs):
        calls.append(str(spec))
        return original(spec, model, **kwargs)

    monkeypatch.setattr(resolve, "resolve_weights", counted)
    monkeypatch.setattr(driver, "resolve_weights", counted)
    result = CliRunner().invoke(
        app,
        [
            "plan",
            str(manifest),
            "--out",
            str(tmp_path / "out"),
            "--weights",
            str(tiny_weights),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert calls == [str(tiny_weights)]
    assert '"run_uri": "' + str(tmp_path / "out" / "uso-") in result.stdout


def test_an_error_is_printed_as_written_brackets_included(tmp_path):
    """Messages quote lists and key paths ("[subject_id, style_id]"): they are text, not the
    console's style markup, so nothing of them disappears."""
    spec = tmp_path / "t.yaml"
    spec.write_text(
        "kind: triplets\nname: t\nsubjects: s.parquet\nstyles: t.parquet\n"
        "output: out\npairing: {mode: pairs, pairs: [[a, b], [c]]}\n"
    )
    result = subprocess.run(
        [*RESTYLE, "triplets", str(spec)], capture_output=True, text=True, timeout=120
    )
    assert (result.returncode, result.stderr) == (
        2,
        f"error: {spec}: pairing.pairs[1]: must be [subject_id, style_id], got ['c']\n",
    )


def test_every_option_can_come_from_a_restyle_environment_variable():
    """Cron lines and Kubernetes manifests set options as variables: every option of every
    command has one, named RESTYLE_<OPTION> and shown in --help."""
    import typer

    def commands(command, path=()):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from commands(sub, (*path, name))

    exempt = {"help", "version", "install_completion", "show_completion"}
    missing = [
        f"restyle {' '.join(path)} {param.name}"
        for path, command in commands(typer.main.get_command(app))
        for param in command.params
        if param.name not in exempt and not str(param.envvar or "").startswith("RESTYLE_")
    ]
    assert missing == []


def test_every_command_answers_in_json_for_scripts():
    import typer

    def leaves(command, path=()):
        subcommands = getattr(command, "commands", {})
        if not subcommands:
            yield path, command
        for name, sub in subcommands.items():
            yield from leaves(sub, (*path, name))

    without = [
        f"restyle {' '.join(path)}"
        for path, command in leaves(typer.main.get_command(app))
        if not any("--json" in getattr(param, "opts", ()) for param in command.params)
    ]
    assert without == []


def test_an_option_from_its_environment_variable_is_checked_like_the_option(tmp_path):
    result = subprocess.run(
        [*RESTYLE, "run", "m.parquet", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "RESTYLE_WIDTH": "0"},
    )
    assert (result.returncode, result.stderr) == (
        2,
        "error: --width: must be between 16 and 4096, got 0\n",
    )


def test_choices_are_listed_in_help_and_completed_by_the_shell():
    import os

    help_text = subprocess.run(
        [*RESTYLE, "run", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    assert "uso|omniconsistency" in help_text and "RESTYLE_MODEL" in help_text
    completed = subprocess.run(  # the installed `restyle` script, as a shell calls it
        [str(Path(sys.executable).with_name("restyle"))],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "_RESTYLE_COMPLETE": "complete_bash",
            "COMP_WORDS": "restyle run --caption ",
            "COMP_CWORD": "3",
        },
    )
    assert completed.stdout.split() == ["prompt", "template", "model"]


def small_manifest(tmp_path):
    from support.run_helpers import parquet_bytes, uso_rows, write_images

    images = write_images(tmp_path / "images", 2)
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(parquet_bytes(uso_rows("a", 2, str(images[0]), str(images[1]))))
    return manifest


def plan_json(*args: str, cwd=None) -> dict:
    result = CliRunner().invoke(app, ["plan", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_run_config_file_has_the_job_specs_run_settings_and_options_win(tmp_path, tiny_weights):
    """`restyle run --config run.yaml`: the keys of a job spec's run settings (plus manifest,
    output, model); paths resolve beside the file; an option on the command line wins."""
    manifest = small_manifest(tmp_path)
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "run.yaml").write_text(
        "# yaml-language-server: $schema=../../jobs/schema/run.schema.json\n"
        f"manifest: ../m.parquet\noutput: ../out\nweights: {tiny_weights}\n"
        "seed: 7\nsampling: {width: 64, height: 48, steps: 2}\n"
    )
    from_file = plan_json("--config", str(folder / "run.yaml"))
    by_options = plan_json(
        str(manifest),
        "--out",
        str(tmp_path / "out"),
        "--weights",
        str(tiny_weights),
        "--width",
        "64",
        "--height",
        "48",
        "--steps",
        "2",
        "--seed",
        "7",
    )
    assert from_file == by_options
    overridden = plan_json("--config", str(folder / "run.yaml"), "--steps", "3")
    assert overridden["fingerprint"] != from_file["fingerprint"]
    assert overridden == plan_json(
        str(manifest),
        "--out",
        str(tmp_path / "out"),
        "--weights",
        str(tiny_weights),
        "--width",
        "64",
        "--height",
        "48",
        "--steps",
        "3",
        "--seed",
        "7",
    )


def test_a_mistake_in_the_config_file_names_the_file_and_the_key(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("manifest: m.parquet\noutput: out\nsampling: {steps: ten}\n")
    result = subprocess.run(
        [*RESTYLE, "run", "--config", str(config)], capture_output=True, text=True, timeout=120
    )
    assert (result.returncode, result.stderr) == (
        ExitCode.USAGE,
        f"error: {config}: sampling.steps: must be an integer, got str 'ten'\n",
    )


def test_plan_refuses_a_run_folder_that_run_would_refuse_naming_only_what_changed(
    tmp_path, tiny_weights
):
    """The conflict names what really changed (seed), not `scoring` (a tuple in memory is a
    list in run.json), and `plan` refuses it as `run` would."""
    from support.run_helpers import run_config

    from pipeline.cli.run import resolve_run
    from pipeline.execution.driver import Runner
    from pipeline.storage import StorageSettings

    manifest = small_manifest(tmp_path)
    first = run_config(str(manifest), str(tmp_path / "out"), tiny_weights, run="shared", seed=1)
    first, weights = resolve_run(first, StorageSettings())
    runner = Runner(first, StorageSettings(), weights=weights)
    runner.state.claim(runner.plan().run_json(StorageSettings()))

    result = CliRunner().invoke(
        app,
        [
            *("plan", str(manifest), "--out", str(tmp_path / "out"), "--run", "shared"),
            *("--weights", str(tiny_weights), "--width", "64", "--height", "48", "--steps", "2"),
        ],
    )
    assert result.exit_code == ExitCode.CANNOT_START, result.output
    assert "(changed: seed)" in result.output.replace("\n", "")


def test_a_manifest_without_an_id_column_is_refused_before_anything_starts(tmp_path):
    from support.run_helpers import parquet_bytes

    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(parquet_bytes([{"prompt": "a cat", "subject": "x.png"}]))
    code = (
        "import sys\nfrom pipeline.cli.main import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as done:\n"
        "    print(done.code, sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "run", str(manifest), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip() == f"{int(ExitCode.CANNOT_START)} []", result.stderr
    assert result.stderr.strip().startswith(f"error: {manifest}")
    assert "id" in result.stderr and "required column is missing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unreachable_ray_address_fails_within_seconds(tmp_path, tiny_weights):
    import socket
    import time

    manifest = small_manifest(tmp_path)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    result = subprocess.run(
        [
            *(*RESTYLE, "run", str(manifest), "--out", str(tmp_path / "o")),
            *("--weights", str(tiny_weights), "--address", f"127.0.0.1:{port}"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == ExitCode.CANNOT_START
    assert result.stderr.startswith(f"error: cannot reach the Ray cluster at 127.0.0.1:{port}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 30  # Ray's own retries take minutes
    assert not (tmp_path / "o").exists()  # nothing claimed
