"""`restyle run` / `restyle plan` options: refused up front in one line, resolved once.

A mistake in an option is reported before Ray or torch start (no model load, no cluster, a
fraction of a second), as one line naming the option, with exit code 2.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app

RESTYLE = [sys.executable, "-m", "pipeline.cli"]
MISTAKES = {
    "--width 0": "--width: must be between 16 and 4096, got 0",
    "--caption bogus": "--caption: must be one of prompt, template, model, got 'bogus'",
    "--caption template": "--caption-template: is required when --caption is template",
    "--model flux": "--model: must be one of uso, omniconsistency, got 'flux'",
    "--image-format gif": "--image-format: unknown image format 'gif'; use one of "
    "['jpeg', 'jpg', 'png', 'webp']",
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
