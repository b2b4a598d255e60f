"""Turning a weights spec (`pipeline.config.WeightsSpec`) into a local weights root and the
sha256 of every file used.

Kinds:
- tiny: tiny random-weight checkpoints in the official formats, built once under the cache;
- random-full: full-size random weights built on the device (speed benchmarks only; every
  output's provenance says so);
- hf: the Hugging Face Hub, files per the registry, staged once per node into the cache;
- s3 mirror: written by `restyle weights pull --to s3://...`, staged once per node into the cache;
- local: a folder in the layout of `pipeline.models.weight_layout`, used in place.

Two callers: every Ray actor calls `local_root` (staging happens there, once per node, under a
file lock; the time it took is logged), and the driver side resolves once per run
(`resolve_weights`) for the per-file sha256 that go into run.json, the config fingerprint (and
so the default run name) and every output's provenance. The driver never downloads weights for
that: a mirror's manifest and the Hub's file metadata carry the digests (only the Hub's few
small config/tokenizer files are fetched, to hash them). Provenance keys are file paths inside
the weights root ("flux1-dev/ae.safetensors", ...). Every function also takes the spec's
string form, parsed by `WeightsSpec.of`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import WeightsKind, WeightsSpec
from pipeline.errors import WeightsError
from pipeline.storage import Storage, StorageSettings
from pipeline.weights.hashing import file_sha256
from pipeline.weights.inventory import model_files
from pipeline.weights.manifest import read_manifest
from pipeline.weights.registry import MODELS, PER_ITEM_COMPONENTS, check_models
from pipeline.weights.sources import LocalSource, S3MirrorSource, WeightSource, open_source
from pipeline.weights.staging import StageReport, stage
from pipeline.weights.tiny_marker import MARKER, is_complete_build, is_tiny_build

TINY_MARKER = MARKER  # the tiny build's marker (pipeline.weights.tiny writes it; torch-free here)

TINY, RANDOM_FULL = WeightsKind.TINY.value, WeightsKind.RANDOM_FULL.value


def weight_cache_dir() -> Path:
    """Default local weight cache: $RESTYLE_WEIGHTS_CACHE, else ~/.cache/restyle/weights."""
    default = Path.home() / ".cache" / "restyle" / "weights"
    return Path(os.environ.get("RESTYLE_WEIGHTS_CACHE", default))


def staged_root(source: WeightSource) -> Path:
    """The node-local folder a remote source is staged into."""
    return weight_cache_dir() / "staged" / source.cache_key


@dataclass(frozen=True)
class ResolvedWeights:
    spec: WeightsSpec
    root: Path | None  # local root when the driver has one (None: random-full, hf, s3 mirror)
    random: bool = False  # random weights (tiny, random-full, a tiny build's folder): noise
    sha256: dict[str, str] = field(default_factory=dict)  # file path in the root -> sha256

    def describe(self) -> str:
        """The weights as an operator reads them in a summary: the spec, and whether random."""
        if not self.random:
            return str(self.spec)
        return f"{self.spec} (RANDOM weights: the pictures are noise)"


def local_root(
    spec: WeightsSpec | str, *, model: str | None = None, storage: Storage | None = None
) -> Path | None:
    """The local weights root a spec names on this node, staging or building it if needed.

    `model` limits staging from "hf" or a mirror to that model's files (default: every model
    the source offers). `storage` reaches the mirror (default: from the AWS environment).
    """
    spec = WeightsSpec.of(spec)
    if spec.kind == WeightsKind.RANDOM_FULL:
        return None
    if spec.kind == WeightsKind.TINY:
        from pipeline.weights.tiny import build_tiny_weights

        return build_tiny_weights(weight_cache_dir() / TINY)
    if spec.kind == WeightsKind.LOCAL:
        return LocalSource(Path(spec.value)).root  # a local folder is used in place
    return stage_spec(spec, model=model, storage=storage).root


def tiny_root_built_apart() -> Path:
    """The tiny weights root, built first (once per machine) in a child process when missing:
    the driver and the light commands never import torch (torch and pyarrow in one interpreter
    can abort it at exit, and it costs seconds)."""
    root = weight_cache_dir() / TINY
    if not is_complete_build(root):
        build = subprocess.run(
            [sys.executable, "-m", "pipeline.weights.tiny", str(root)],
            capture_output=True,
            text=True,
        )
        if build.returncode != 0 or not is_complete_build(root):
            last = (build.stderr.strip().splitlines() or ["no output"])[-1]
            raise WeightsError(f"{root}: building the tiny weights failed: {last}")
    return root


def stage_spec(
    spec: WeightsSpec | str, *, model: str | None = None, storage: Storage | None = None
) -> StageReport:
    """Stage a remote spec ("hf" or an s3:// mirror) into this node's cache (see `local_root`);
    the report says what this process fetched and how long it waited for another one."""
    spec = WeightsSpec.of(spec)
    if not spec.remote:
        raise WeightsError(f"{str(spec)!r} is not a remote weights spec ('hf' or s3://...)")
    source = open_source(spec, storage)
    models = [model] if model else _offered_models(source)
    return stage(source, models, staged_root(source))


def resolve_weights(
    spec: WeightsSpec | str, model: str, *, storage: Storage | None = None
) -> ResolvedWeights:
    """Root (when local) and per-file sha256 of the files `model` loads from `spec`."""
    spec = WeightsSpec.of(spec)
    check_models([model])
    if spec.kind == WeightsKind.RANDOM_FULL:
        return ResolvedWeights(spec, None, random=True, sha256={RANDOM_FULL: "random"})
    if not spec.remote:
        root = tiny_root_built_apart() if spec.kind == WeightsKind.TINY else local_root(spec)
        assert root is not None
        files = model_files(root, model, per_item=False)
        return ResolvedWeights(
            spec,
            root,
            random=is_tiny_build(root),
            sha256={p: file_sha256(root / p) for p in sorted(files)},
        )
    source = open_source(spec, storage)
    offered = source.manifest([model])
    if any(f.sha256 is None for f in offered.files.values()):
        # The Hub publishes no sha256 for small (non-LFS) files: stage just those and hash them.
        root = staged_root(source)
        stage(source, [model], root, only=lambda _path, facts: facts.sha256 is None)
        staged = read_manifest(Storage(StorageSettings()), str(root))
        if staged is None:
            raise WeightsError(f"{root}: staging the Hub's small files wrote no manifest")
        offered.files.update(
            {p: staged.files[p] for p, f in offered.files.items() if f.sha256 is None}
        )
    sha256: dict[str, str] = {}
    for path in sorted(offered.files_of(model)):
        facts = offered.files[path]
        if facts.component in PER_ITEM_COMPONENTS:
            continue
        if facts.sha256 is None:  # staging above hashed every file the source had no digest for
            raise WeightsError(f"{path}: no sha256 known for this file after staging")
        sha256[path] = facts.sha256
    return ResolvedWeights(spec, None, sha256=sha256)


def _offered_models(source: WeightSource) -> list[str]:
    if isinstance(source, S3MirrorSource):
        return check_models(sorted(source.full_manifest().models))
    return list(MODELS)
