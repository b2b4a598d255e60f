"""Weights come from a local folder, an s3:// mirror (real S3 server) or the Hub (a loopback
endpoint that answers like the Hub: the real one is not reachable from the tests)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from support.hub_server import LocalHub
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.errors import ExitCode, HubAccessError, WeightIntegrityError, WeightsError
from pipeline.models.base import ModelOptions
from pipeline.models.registry import load_model
from pipeline.storage import Storage, join
from pipeline.weights.hub import HubSource
from pipeline.weights.inventory import model_files
from pipeline.weights.manifest import MANIFEST_NAME, read_manifest
from pipeline.weights.pull import pull
from pipeline.weights.registry import MODELS, load_registry
from pipeline.weights.resolve import local_root, resolve_weights, staged_root
from pipeline.weights.sources import LocalSource, S3MirrorSource
from pipeline.weights.staging import partial_dir, stage
from pipeline.weights.verify import verify_root

FLUX_REPO = "black-forest-labs/FLUX.1-dev"
ACCEPTED = "token-that-accepted-the-licence"


@pytest.fixture(autouse=True)
def private_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTYLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RESTYLE_WEIGHTS_CACHE", str(tmp_path / "weights-cache"))
    for name in ("HF_TOKEN", "HF_ENDPOINT", "RESTYLE_WEIGHTS_REGISTRY"):
        monkeypatch.delenv(name, raising=False)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- local folder
def test_a_local_folder_is_used_in_place(tiny_weights: Path):
    assert local_root(str(tiny_weights)) == tiny_weights
    resolved = resolve_weights(str(tiny_weights), "omniconsistency")
    assert resolved.root == tiny_weights
    assert resolved.sha256["flux1-dev/flux1-dev.safetensors"] == _sha(
        tiny_weights / "flux1-dev" / "flux1-dev.safetensors"
    )
    assert (
        "t5/spiece.model" in resolved.sha256
        and "omniconsistency/OmniConsistency.safetensors" in resolved.sha256
    )
    assert not any(p.startswith("style_loras/") for p in resolved.sha256)  # recorded per item
    with pytest.raises(WeightsError, match="weights folder '/nonexistent/w' does not exist"):
        local_root("/nonexistent/w")


# ----------------------------------------------------------------------------- s3 mirror
@pytest.fixture(scope="module")
def mirror(s3_server, tiny_weights: Path) -> str:
    """The tiny weights of both models mirrored to a fresh bucket by `pull`."""
    uri = s3_server.new_bucket("mirror") + "/weights/tiny"
    pull(LocalSource(tiny_weights), list(MODELS), uri, s3_server.storage(), Path("/nonexistent"))
    return uri


def test_pull_writes_every_file_and_a_manifest_last(mirror: str, s3_server, tiny_weights: Path):
    storage = s3_server.storage()
    manifest = read_manifest(storage, mirror)
    assert manifest is not None and sorted(manifest.models) == ["omniconsistency", "uso"]
    files = model_files(tiny_weights, list(MODELS))
    assert set(manifest.files) == set(files)
    for path, facts in manifest.files.items():
        assert facts.sha256 == _sha(tiny_weights / path) and facts.component == files[path]
        assert storage.size(join(mirror, path)) == facts.size
    again = pull(LocalSource(tiny_weights), ["uso"], mirror, storage, Path("/nonexistent"))
    assert again.copied == [] and again.files == len(model_files(tiny_weights, "uso"))
    assert sorted(read_manifest(storage, mirror).models) == ["omniconsistency", "uso"]  # merged


def test_a_mirror_stages_back_byte_identical_and_verifies(
    mirror: str, s3_server, tiny_weights: Path, tmp_path: Path
):
    root = tmp_path / "staged"
    report = stage(S3MirrorSource(mirror, s3_server.storage()), ["uso"], root)
    assert sorted(report.fetched) == sorted(model_files(tiny_weights, "uso"))
    for path in report.fetched:
        assert (root / path).read_bytes() == (tiny_weights / path).read_bytes()
    verified = verify_root(root)
    assert verified.ok and verified.models == ["uso"], verified.problems()
    assert not list(partial_dir(root).rglob("*.partial"))


def test_the_driver_reads_digests_from_the_mirror_without_downloading(
    mirror: str, s3_server, tiny_weights: Path, tmp_path: Path
):
    storage = s3_server.storage()
    remote = resolve_weights(mirror, "uso", storage=storage)
    assert remote.root is None
    assert remote.sha256 == resolve_weights(str(tiny_weights), "uso").sha256
    assert not (tmp_path / "weights-cache").exists()  # nothing was staged for that
    staged = local_root(mirror, model="uso", storage=storage)
    assert staged == staged_root(S3MirrorSource(mirror, storage))
    assert resolve_weights(str(staged), "uso").sha256 == remote.sha256  # same provenance either way


def test_a_folder_that_is_not_a_mirror_says_how_to_make_one(s3_server):
    empty = s3_server.new_bucket("empty") + "/weights"
    with pytest.raises(
        WeightsError,
        match=f"{empty} is not a restyle weights mirror: it has no "
        f"{MANIFEST_NAME} \\(create one with `restyle weights pull",
    ):
        local_root(empty, model="uso", storage=s3_server.storage())


def test_a_mirror_without_the_model_names_what_it_holds(s3_server, tiny_weights: Path):
    uri = s3_server.new_bucket("uso-only") + "/w"
    pull(LocalSource(tiny_weights), ["uso"], uri, s3_server.storage(), Path("/nonexistent"))
    with pytest.raises(
        WeightsError, match="do not include model 'omniconsistency' \\(they hold: uso\\)"
    ):
        resolve_weights(uri, "omniconsistency", storage=s3_server.storage())


def test_a_corrupt_mirror_object_is_never_used(s3_server, tiny_weights: Path, tmp_path: Path):
    storage = s3_server.storage()
    uri = s3_server.new_bucket("corrupt") + "/w"
    pull(LocalSource(tiny_weights), ["uso"], uri, storage, Path("/nonexistent"))
    good = (tiny_weights / "uso" / "projector.safetensors").read_bytes()
    storage.write_bytes(join(uri, "uso/projector.safetensors"), good[:-1] + b"\x00")
    root = tmp_path / "staged"
    with pytest.raises(
        WeightIntegrityError, match=f"uso/projector.safetensors from {uri}: sha256 is "
    ):
        stage(S3MirrorSource(uri, storage), ["uso"], root)
    assert not (root / "uso" / "projector.safetensors").exists()
    assert not list(partial_dir(root).rglob("*.partial"))
    storage.write_bytes(join(uri, "uso/projector.safetensors"), good[:100])  # truncated object
    with pytest.raises(WeightIntegrityError, match="got 100 bytes, expected"):
        stage(S3MirrorSource(uri, storage), ["uso"], root)


def test_a_changed_file_is_mirrored_and_restaged_alone(
    s3_server, tiny_weights: Path, tmp_path: Path
):
    storage = s3_server.storage()
    source_root = Path(shutil.copytree(tiny_weights, tmp_path / "source"))
    uri = s3_server.new_bucket("changed") + "/w"
    pull(LocalSource(source_root), ["uso"], uri, storage, Path("/nonexistent"))
    root = tmp_path / "staged"
    stage(S3MirrorSource(uri, storage), ["uso"], root)
    shutil.copy(
        tiny_weights / "style_loras" / "Ghibli_rank128_bf16.safetensors",
        source_root / "uso" / "dit_lora.safetensors",
    )  # a new release of one file
    assert pull(LocalSource(source_root), ["uso"], uri, storage, Path("/nonexistent")).copied == [
        "uso/dit_lora.safetensors"
    ]
    again = stage(S3MirrorSource(uri, storage), ["uso"], root)
    assert again.fetched == ["uso/dit_lora.safetensors"]
    assert _sha(root / "uso" / "dit_lora.safetensors") == _sha(
        source_root / "uso" / "dit_lora.safetensors"
    )


def test_cli_pulls_to_a_mirror_and_back_to_a_folder(s3_server, tiny_weights: Path, tmp_path: Path):
    env = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url,
        "AWS_REGION": "us-east-1",
        "COLUMNS": "200",
    }
    uri = s3_server.new_bucket("cli") + "/weights"
    up = CliRunner().invoke(
        app,
        ["weights", "pull", "omniconsistency", "--from", str(tiny_weights), "--to", uri],
        env=env,
    )
    assert up.exit_code == 0, up.output
    assert f"--weights {uri}" in up.output
    down = CliRunner().invoke(
        app,
        ["weights", "pull", "omniconsistency", "--from", uri, "--to", str(tmp_path / "local")],
        env=env,
    )
    assert down.exit_code == 0, down.output
    checked = CliRunner().invoke(app, ["weights", "verify", str(tmp_path / "local")], env=env)
    assert checked.exit_code == 0, checked.output
    missing = CliRunner().invoke(app, ["weights", "pull", "uso", "--from", uri], env=env)
    assert (
        missing.exit_code == ExitCode.CANNOT_START
        and "do not include model 'uso'" in missing.output
    )


# ----------------------------------------------------------------------------- the Hub
def _hub_registry(tiny_weights: Path, folder: Path) -> tuple[Path, dict[str, dict[str, bytes]]]:
    """A registry of the real repos (gating included) whose files are the tiny build's, and
    the repo contents to serve: the Hub path end to end on small files."""
    real = load_registry()
    repo_of = {f.component: f.repo for f in real.files}
    lines = ["format = 1"]
    for repo in real.repos.values():
        lines += [
            f"[repos.{json.dumps(repo.id)}]",
            f"revision = {json.dumps(repo.revision)}",
            f"gated = {str(repo.gated).lower()}",
        ]
        if repo.licence_url:
            lines.append(f"licence_url = {json.dumps(repo.licence_url)}")
    for model in MODELS:
        lines += [f"[models.{model}]", f"components = {json.dumps(list(real.models[model]))}"]
    repos: dict[str, dict[str, bytes]] = {}
    for path, component in sorted(model_files(tiny_weights, list(MODELS)).items()):
        repo = repo_of[component]
        repos.setdefault(repo, {})[path] = (tiny_weights / path).read_bytes()
        lines += [
            "[[files]]",
            f"component = {json.dumps(component)}",
            f"repo = {json.dumps(repo)}",
            f"path = {json.dumps(path)}",
            f"dest = {json.dumps(path)}",
        ]
    toml = folder / "hub-registry.toml"
    toml.write_text("\n".join(lines) + "\n")
    return toml, repos


@pytest.fixture(scope="module")
def hub_setup(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    toml, repos = _hub_registry(tiny_weights, tmp_path_factory.mktemp("hub"))
    hub = LocalHub(repos, gated={FLUX_REPO: {ACCEPTED}}).start()
    try:
        yield hub, load_registry(toml), toml
    finally:
        hub.stop()


def _source(hub_setup, token: str | None = ACCEPTED) -> HubSource:
    hub, registry, _ = hub_setup
    return HubSource(registry, endpoint=hub.endpoint, token=token)


def test_hub_files_are_staged_verified_and_load(hub_setup, tiny_weights: Path, tmp_path: Path):
    root = tmp_path / "staged"
    report = stage(_source(hub_setup), ["uso"], root)
    assert sorted(report.fetched) == sorted(model_files(tiny_weights, "uso"))
    manifest = read_manifest(Storage(), str(root))
    assert manifest.files["t5/config.json"].git_sha1  # small files: checked against the git blob id
    assert manifest.files["t5/config.json"].sha256 == _sha(tiny_weights / "t5" / "config.json")
    assert verify_root(root).ok
    model = load_model("uso", root, ModelOptions(device="cpu", dtype="fp32"))
    assert not model.random_weights
    assert stage(_source(hub_setup), ["uso"], root).fetched == []  # staged once


def test_a_gated_repo_without_a_token_says_accept_the_licence_and_set_hf_token(hub_setup, tmp_path):
    with pytest.raises(HubAccessError) as caught:
        stage(_source(hub_setup, token=None), ["uso"], tmp_path / "staged")
    message = str(caught.value)
    assert message.startswith(f"{FLUX_REPO} is gated and no Hugging Face token is set")
    assert "accept the licence at https://huggingface.co/black-forest-labs/FLUX.1-dev" in message
    assert "set HF_TOKEN" in message and "HTTP 401" in message


def test_a_token_without_the_licence_is_told_apart(hub_setup, tmp_path: Path):
    with pytest.raises(
        HubAccessError,
        match=f"{FLUX_REPO} is gated and the token in use has no "
        "access to it: accept the licence at .* HTTP 403",
    ):
        stage(_source(hub_setup, token="someone-else"), ["uso"], tmp_path / "staged")


def test_an_unreachable_hub_says_what_to_do(tmp_path: Path, tiny_weights: Path):
    source = HubSource(load_registry(), endpoint="http://127.0.0.1:9", token=ACCEPTED)
    with pytest.raises(
        HubAccessError,
        match=r"cannot reach the Hugging Face Hub at http://127.0.0.1:9 .* or an s3:// mirror",
    ):
        stage(source, ["uso"], tmp_path / "staged")


def test_a_file_missing_from_the_repo_names_the_registry(hub_setup, tmp_path: Path):
    hub, _registry, toml = hub_setup
    repo = hub.repos["bytedance-research/USO"]
    data = repo.pop("uso/projector.safetensors")
    try:
        with pytest.raises(
            WeightsError,
            match="bytedance-research/USO has no file "
            f"uso/projector.safetensors at revision main .*{toml}",
        ):
            stage(_source(hub_setup), ["uso"], tmp_path / "staged")
    finally:
        repo["uso/projector.safetensors"] = data


def test_a_corrupt_download_from_the_hub_is_discarded(
    hub_setup, tmp_path: Path, tiny_weights: Path
):
    hub, _, _ = hub_setup
    good = (tiny_weights / "uso" / "dit_lora.safetensors").read_bytes()
    hub.corrupt("bytedance-research/USO", "uso/dit_lora.safetensors", b"\x00" * len(good))
    root = tmp_path / "staged"
    try:
        with pytest.raises(
            WeightIntegrityError,
            match=r"uso/dit_lora.safetensors from hf .* the download was discarded",
        ):
            stage(_source(hub_setup), ["uso"], root)
    finally:
        hub.corrupt("bytedance-research/USO", "uso/dit_lora.safetensors", good)
    assert not (root / "uso" / "dit_lora.safetensors").exists()
    assert not [p for p in partial_dir(root).rglob("*") if p.is_file()]


def test_a_registry_pin_the_hub_contradicts_is_refused(hub_setup, tmp_path: Path):
    hub, _, toml = hub_setup
    pinned = tmp_path / "pinned.toml"
    pinned.write_text(
        toml.read_text().replace(
            'dest = "uso/projector.safetensors"', 'dest = "uso/projector.safetensors"\nsize = 12345'
        )
    )
    source = HubSource(load_registry(pinned), endpoint=hub.endpoint, token=ACCEPTED)
    with pytest.raises(
        WeightIntegrityError, match=r"uso/projector.safetensors: the Hub reports size .* pins 12345"
    ):
        source.manifest(["uso"])


def test_the_driver_gets_hub_digests_without_downloading_weights(
    hub_setup, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
):
    hub, _, toml = hub_setup
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", ACCEPTED)
    monkeypatch.setenv("RESTYLE_WEIGHTS_REGISTRY", str(toml))
    before = +hub.served
    resolved = resolve_weights("hf", "uso")
    fetched = hub.served - before
    assert resolved.sha256 == resolve_weights(str(tiny_weights), "uso").sha256
    assert fetched and not [path for _, path in fetched if path.endswith(".safetensors")]


def test_a_file_removed_from_the_repo_after_listing_names_the_file(hub_setup, tmp_path: Path):
    hub, _, _ = hub_setup
    repo = hub.repos["bytedance-research/USO"]
    data = repo.pop("uso/projector.safetensors")
    try:
        with pytest.raises(
            WeightsError,
            match=r"could not download uso/projector.safetensors from "
            "bytedance-research/USO: no such file at revision main",
        ):
            _source(hub_setup).fetch("uso/projector.safetensors", tmp_path / "projector.partial")
    finally:
        repo["uso/projector.safetensors"] = data
    assert not list(tmp_path.iterdir())  # no scratch folder left behind
