"""Metric and auxiliary models named `hf://owner/repo[@revision]`, from a Hub-compatible server.

`LocalHub` (tests/support/hub_server.py) answers huggingface_hub's real HTTP calls on loopback:
`model_info`, `list_repo_tree` and the file downloads of `snapshot_download`. It serves a tiny
CLIP folder built locally, so an eval scored with `clip=hf://org/clip-tiny` can be compared with
the same folder given as a local path.
"""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.committed_run import write_run
from support.hub_server import COMMIT, LocalHub
from support.node_consumer import stage_aux_model
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.config import ConfigError, EvalSettings, MetricModels, PathBase, validate
from pipeline.config.hub_ref import HubRef, parse_hub_ref
from pipeline.config.run_config import ScoringOptions
from pipeline.errors import ExitCode, HubAccessError
from pipeline.outputs.run_layout import committed
from pipeline.outputs.run_state import RunState
from pipeline.outputs.scores import EVAL_KEY, read_scores
from pipeline.processing.eval_shard import ShardEvaluator
from pipeline.processing.metric_suite import MetricSuite, Sample
from pipeline.processing.scoring import make_scorer
from pipeline.storage import Storage
from pipeline.storage.parquet import schema_from_bytes
from pipeline.storage.settings import StorageSettings
from pipeline.weights.aux_hub import HUB_MARKER, hub_commit
from pipeline.weights.aux_models import AuxModelError, folder_sha256, model_folder
from pipeline.weights.resolve import weight_cache_dir
from pipeline.weights.tiny_aux import build_tiny_clip

CLIP_REPO, GATED_REPO, EMPTY_REPO = "org/clip-tiny", "org/clip-gated", "org/no-model"
ACCEPTED = "hf_accepted"


def folder_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip-tiny")


@pytest.fixture
def hub(clip_folder: Path, private_caches, monkeypatch: pytest.MonkeyPatch):
    """A LocalHub serving the tiny CLIP (open and gated) and a repo that holds no model; the
    node's weight cache is this test's own."""
    files = folder_files(clip_folder)
    server = LocalHub(
        {CLIP_REPO: dict(files), GATED_REPO: dict(files), EMPTY_REPO: {"README.md": b"hi"}},
        gated={GATED_REPO: {ACCEPTED}},
    ).start()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    try:
        yield server
    finally:
        server.stop()


def pictures(count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(count)
    ]


def test_a_hub_clip_scores_like_the_local_folder_and_is_downloaded_once_per_node(
    hub: LocalHub, clip_folder: Path, tmp_path: Path
):
    spec = "hf://org/clip-tiny"
    # two consumers at once, in processes of their own (two actors of a node)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        staged = list(pool.map(stage_aux_model, [spec, spec], ["clip", "clip"]))
    assert staged[0] == staged[1] and staged[0][1] == COMMIT
    assert set(hub.served) == {(CLIP_REPO, name) for name in folder_files(clip_folder)}
    assert set(hub.served.values()) == {1}  # every file downloaded once, for both

    metrics = ["clip_i", "clip_i_style", "clip_t"]
    via_hub = EvalSettings(metrics=metrics, models=MetricModels(clip=spec))
    assert via_hub.models.clip == "hf://org/clip-tiny@main"  # one spelling
    local = EvalSettings(metrics=metrics, models=MetricModels(clip=str(clip_folder)))
    storage = Storage(StorageSettings())
    from_hub, from_folder = MetricSuite(via_hub, storage), MetricSuite(local, storage)
    assert set(hub.served.values()) == {1}  # a third consumer reuses the staged folder too
    results, subjects, styles = pictures(3, 1), pictures(3, 2), pictures(3, 3)
    samples = [
        Sample(str(i), str(i), results[i], subjects[i], styles[i], prompt=f"a picture {i}")
        for i in range(3)
    ]
    hub_rows, local_rows = from_hub.score(samples), from_folder.score(samples)
    for hub_row, local_row in zip(hub_rows, local_rows, strict=True):
        for metric in metrics:
            assert hub_row[metric] is not None
            assert hub_row[metric] == pytest.approx(local_row[metric], abs=1e-6), metric
    assert len({round(r["clip_i"], 6) for r in hub_rows}) == 3  # they look at the pictures

    # provenance: the same weights (sha256, fingerprint), plus where on the Hub they came from
    info = from_hub.info()
    assert info["sha256"] == from_folder.info()["sha256"] == {"clip": folder_sha256(clip_folder)}
    assert from_hub.fingerprint == from_folder.fingerprint
    assert info["models"] == {"clip": "hf://org/clip-tiny@main"}
    assert info["hub_commits"] == {"clip": COMMIT}
    assert from_folder.info()["hub_commits"] == {}

    # ... and it lands in the score file's metadata, as `restyle eval`'s actors write it
    run_uri = str(tmp_path / "run")
    write_run(storage, run_uri, {0: ["cup", "lamp"]})
    (files,) = committed(RunState(storage, run_uri))
    ShardEvaluator(from_hub, storage).evaluate(
        files.tar, files.records, files.scores, files.features
    )
    metadata = schema_from_bytes(storage.read_bytes(files.scores)).metadata
    provenance = json.loads(metadata[EVAL_KEY])
    assert provenance["hub_commits"] == {"clip": COMMIT}
    assert provenance["sha256"] == {"clip": folder_sha256(clip_folder)}
    assert [r["id"] for r in read_scores(storage, files.scores)] == ["cup", "lamp"]


def test_the_run_scorer_takes_the_same_hub_spec(hub: LocalHub, clip_folder: Path):
    options = ScoringOptions(metrics=["clip_t"], model="hf://org/clip-tiny")
    scorer = make_scorer(options)
    assert hub_commit(scorer.folder) == COMMIT
    assert folder_sha256(scorer.folder) == folder_sha256(clip_folder)


def test_a_moved_branch_is_staged_again_and_a_pinned_commit_needs_no_hub(
    hub: LocalHub, clip_folder: Path
):
    first = model_folder("hf://org/clip-tiny@main", "clip")
    files = folder_files(clip_folder)
    files.pop("tokenizer_config.json")
    files["notes.txt"] = b"a new file"
    commit = hub.push(CLIP_REPO, files)
    again = model_folder("hf://org/clip-tiny@main", "clip")
    assert again == first and hub_commit(again) == commit != COMMIT
    on_disk = {
        p.relative_to(again).as_posix()
        for p in again.rglob("*")
        if p.is_file() and not p.relative_to(again).as_posix().startswith(".")
    }
    assert on_disk == set(files)  # the file the new commit dropped is gone
    assert (again / "notes.txt").read_bytes() == b"a new file"

    # a staging cut short (killed before its marker; a file not there yet) is completed
    (again / HUB_MARKER).unlink()
    (again / "model.safetensors").unlink()
    before = +hub.served
    assert hub_commit(model_folder("hf://org/clip-tiny@main", "clip")) == commit
    assert hub.served - before == Counter({(CLIP_REPO, "model.safetensors"): 1})
    assert (again / "model.safetensors").read_bytes() == files["model.safetensors"]

    pinned = model_folder(f"hf://org/clip-tiny@{commit}", "clip")
    assert pinned != again and hub_commit(pinned) == commit
    hub.stop()  # a pinned commit, once staged, is used without asking the Hub
    assert model_folder(f"hf://org/clip-tiny@{commit}", "clip") == pinned
    with pytest.raises(HubAccessError, match="cannot reach the Hugging Face Hub"):
        model_folder("hf://org/clip-tiny@main", "clip")  # a branch is asked for its commit


def test_a_gated_repo_without_a_token_says_accept_the_licence_and_set_hf_token(
    hub: LocalHub, monkeypatch: pytest.MonkeyPatch
):
    with pytest.raises(HubAccessError) as caught:
        model_folder("hf://org/clip-gated", "clip")
    message = str(caught.value)
    assert message.startswith(f"{GATED_REPO} is gated and no Hugging Face token is set")
    assert f"accept the licence at https://huggingface.co/{GATED_REPO}" in message
    assert "set HF_TOKEN" in message and "HTTP 401" in message and "\n" not in message
    assert not hub.served

    monkeypatch.setenv("HF_TOKEN", "hf_someone_else")
    with pytest.raises(HubAccessError, match=r"is gated and the token in use has no access.*403"):
        model_folder("hf://org/clip-gated", "clip")
    monkeypatch.setenv("HF_TOKEN", ACCEPTED)
    assert hub_commit(model_folder("hf://org/clip-gated", "clip")) == COMMIT


def test_an_unreachable_hub_says_what_to_do(private_caches, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(HubAccessError) as caught:
        model_folder("hf://org/clip-tiny@v1", "clip")
    message = str(caught.value)
    assert message.startswith(
        "cannot reach the Hugging Face Hub at http://127.0.0.1:9 to resolve hf://org/clip-tiny@v1"
    )
    assert "check the network, proxy or HF_ENDPOINT, or give a local folder or an s3:// mirror" in (
        message
    )
    assert "`hf download org/clip-tiny --revision v1 --local-dir DIR`" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("spec", "error", "says"),
    [
        (
            "hf://org/missing",
            HubAccessError,
            r"^org/missing was not found on http://127.0.0.1:\d+, or it is private or gated and "
            r"no Hugging Face token is set .*: check the repo id in the clip model spec "
            r"hf://org/missing@main and set HF_TOKEN",
        ),
        (
            "hf://org/clip-tiny@v9",
            HubAccessError,
            r"^org/clip-tiny has no revision 'v9' \(could not resolve hf://org/clip-tiny@v9\): "
            r"fix the revision in the clip model spec hf://org/clip-tiny@v9$",
        ),
        (
            "hf://org/no-model",
            AuxModelError,
            r"^hf://org/no-model@main: not a model folder \(no config.json in the repo at "
            r"0123456789ab; found \['README.md'\]\)",
        ),
    ],
)
def test_a_wrong_repo_or_revision_is_one_line(hub: LocalHub, spec: str, error, says: str):
    with pytest.raises(error, match=says) as caught:
        model_folder(spec, "clip")
    assert "\n" not in str(caught.value) and not hub.served
    assert not list(weight_cache_dir().rglob(HUB_MARKER))  # nothing marked as staged


# ----------------------------------------------------------------------------- the spec itself
def test_hub_specs_parse_with_their_revision():
    assert parse_hub_ref("hf://openai/clip-vit-base-patch32") == HubRef(
        "openai/clip-vit-base-patch32", "main"
    )
    assert parse_hub_ref("hf://facebook/dino-vits16@v1.0").revision == "v1.0"
    assert parse_hub_ref("hf://org/repo@refs/pr/3").revision == "refs/pr/3"
    pinned = parse_hub_ref(f"hf://org/repo@{COMMIT}")
    assert pinned.pinned and not parse_hub_ref("hf://org/repo").pinned


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("hf://", "'' is not a Hub repo id (hf://owner/repo or hf://owner/repo@revision"),
        ("hf://clip", "'clip' is not a Hub repo id"),
        ("hf://a/b/c", "'a/b/c' is not a Hub repo id"),
        ("hf://-org/repo", "'-org/repo' is not a Hub repo id"),
        ("hf://org/re po", "'org/re po' is not a Hub repo id"),
        ("hf://org/a--b", "'org/a--b' is not a Hub repo id (no '--' or '..'"),
        ("hf://org/repo@", "'' is not a revision (a branch, tag or commit sha after '@')"),
        ("hf://org/repo@a b", "'a b' is not a revision"),
        ("hf://org/repo@../x", "'../x' is not a revision"),
    ],
)
def test_a_malformed_hub_spec_is_a_one_line_config_error(spec: str, says: str):
    with pytest.raises(ConfigError) as caught:
        validate(EvalSettings, {"models": {"clip": spec}}, paths=PathBase(None))
    message = str(caught.value)
    assert message.startswith(f"models.clip: {spec!r}: ") and says in message, message
    assert "\n" not in message


def test_restyle_eval_refuses_a_malformed_hub_spec_before_starting(tmp_path: Path):
    result = CliRunner().invoke(app, ["eval", str(tmp_path), "--clip", "hf://clip"])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "--clip: 'hf://clip': 'clip' is not a Hub repo id" in result.output
