"""Where weight files come from: a local folder, an s3:// mirror, or the Hugging Face Hub.

Every source answers two questions, so staging and pulling never care which one they talk to:

- `manifest(models)`: which files the models need from it, with their size and sha256 as far as
  they are known without downloading (a mirror's manifest knows all; the Hub publishes LFS
  sha256; a local folder is hashed once, cached);
- `fetch(path, target)`: write that file's bytes at `target`, a temporary path; the caller
  checks size and sha256 before the file is ever used.

`open_source(spec, storage)` picks one by the spec's kind (`pipeline.config.WeightsSpec`): "hf"
is the Hub (`pipeline.weights.hub`), "s3://..." a mirror written by `restyle weights pull --to
s3://...`, a local folder is used in place.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Protocol

from pipeline.config import WeightsKind, WeightsSpec
from pipeline.errors import WeightsError
from pipeline.storage import Storage, StorageError, join
from pipeline.storage.uris import local_path
from pipeline.weights.hashing import file_sha256
from pipeline.weights.inventory import model_files
from pipeline.weights.manifest import MANIFEST_NAME, FileFacts, WeightManifest, read_manifest
from pipeline.weights.registry import check_models


class WeightSource(Protocol):
    description: str  # for messages and provenance ("s3://bucket/weights", "/data/weights", ...)
    cache_key: str  # names this source's node-local staged copy under the weight cache

    def manifest(self, models: list[str]) -> WeightManifest:
        """The files `models` need from this source, with what is known about each."""

    def fetch(self, path: str, target: Path) -> None:
        """Write the bytes of `path` (posix, inside the weights root) at `target`."""


def _readable_key(prefix: str, text: str, identity: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60]
    return f"{prefix}-{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


class LocalSource:
    """A local folder in the weights-root layout; used in place, hashed once (cached)."""

    def __init__(self, root: Path):
        self.root = Path(local_path(str(root))).expanduser()
        if not self.root.is_dir():
            raise WeightsError(
                f"weights folder {str(root)!r} does not exist (give 'tiny', "
                "'random-full', 'hf', an s3:// mirror or a folder laid out as in "
                "weights/README.md)"
            )
        self.description = str(self.root)
        self.cache_key = _readable_key("local", self.root.name, str(self.root.resolve()))

    def manifest(self, models: list[str]) -> WeightManifest:
        models = check_models(models)
        per_model = {m: model_files(self.root, m) for m in models}
        components = {p: c for files in per_model.values() for p, c in files.items()}
        facts = {}
        for path, component in components.items():
            file = self.root / path
            facts[path] = FileFacts(file.stat().st_size, file_sha256(file), component)
        return WeightManifest(
            facts, {m: sorted(files) for m, files in per_model.items()}, source=self.description
        )

    def fetch(self, path: str, target: Path) -> None:
        shutil.copyfile(self.root / path, target)


class S3MirrorSource:
    """An s3:// prefix written by `restyle weights pull --to s3://...` (files + manifest)."""

    def __init__(self, uri: str, storage: Storage):
        self.uri = uri.rstrip("/")
        self.storage = storage
        self.description = self.uri
        identity = f"{storage.settings.endpoint_url or 'aws'}|{self.uri}"
        self.cache_key = _readable_key("s3", self.uri[len("s3://") :], identity)
        self._manifest: WeightManifest | None = None

    def full_manifest(self) -> WeightManifest:
        if self._manifest is None:
            found = read_manifest(self.storage, self.uri)
            if found is None:
                raise WeightsError(
                    f"{self.uri} is not a restyle weights mirror: it has no {MANIFEST_NAME} "
                    f"(create one with `restyle weights pull <model> --to {self.uri}`; a mirror "
                    "whose pull was interrupted has none either)"
                )
            self._manifest = found
        return self._manifest

    def manifest(self, models: list[str]) -> WeightManifest:
        return self.full_manifest().subset(check_models(models))

    def fetch(self, path: str, target: Path) -> None:
        """Download the object to `target` in parallel ranged parts (`Storage.download_file`:
        each part retried on its own; a crashed process restarts the file)."""
        uri = join(self.uri, path)
        try:
            self.storage.download_file(uri, target)
        except StorageError as error:
            raise WeightsError(f"cannot download {path} from mirror {self.uri}: {error}") from error


def open_source(spec: WeightsSpec | str, storage: Storage | None = None) -> WeightSource:
    """The source a `--from`/`--weights` spec names: "hf", "s3://bucket/prefix", or a folder."""
    spec = WeightsSpec.of(spec)
    if spec.kind == WeightsKind.HUB:
        from pipeline.weights.hub import HubSource

        return HubSource()
    if spec.kind == WeightsKind.S3_MIRROR:
        return S3MirrorSource(spec.value, storage if storage is not None else Storage())
    if spec.kind == WeightsKind.LOCAL:
        return LocalSource(Path(spec.value))
    raise WeightsError(
        f"{spec.value!r} weights are built on each node, not read from a source; "
        "give 'hf', an s3:// mirror or a local weights folder"
    )
