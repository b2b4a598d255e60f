"""`restyle-weights.json`: what a weights folder or mirror holds, with every file's size and sha256.

Written last, after every file it lists is in place, by `restyle weights pull` (local folder or
s3:// mirror) and by per-node staging, so it doubles as the completion marker: a mirror or staged
folder without it is not finished. It lets the driver know each file's sha256 without
downloading anything, and `restyle weights verify` check a folder against it.

    {"format": 1, "source": "hf", "files": {"uso/projector.safetensors":
        {"size": 21.., "sha256": "...", "component": "uso_projector"}, ...},
     "models": {"uso": ["flux1-dev/ae.safetensors", ...]}}
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace

from pipeline.errors import WeightsError
from pipeline.storage import Storage, StorageError, StorageNotFoundError, join

MANIFEST_NAME = "restyle-weights.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class FileFacts:
    """What is known about one file before or after fetching it.

    `git_sha1` is the Hub's git blob id, the only digest it publishes for small (non-LFS) files;
    staging checks it and computes the sha256 itself.
    """

    size: int | None = None
    sha256: str | None = None
    component: str | None = None
    git_sha1: str | None = None


@dataclass
class WeightManifest:
    files: dict[str, FileFacts] = field(default_factory=dict)  # posix path in the root -> facts
    models: dict[str, list[str]] = field(default_factory=dict)  # model -> the paths it loads
    source: str = ""
    created_at: float = field(default_factory=time.time)

    def files_of(self, model: str) -> list[str]:
        """Paths `model` loads; a model the manifest does not cover is an error naming it."""
        if model not in self.models:
            have = ", ".join(sorted(self.models)) or "none"
            raise WeightsError(
                f"weights from {self.source or 'this source'} do not include model "
                f"{model!r} (they hold: {have})"
            )
        return list(self.models[model])

    def subset(self, models: Iterable[str]) -> WeightManifest:
        """The part of the manifest that `models` need."""
        models = list(models)
        paths = {p for m in models for p in self.files_of(m)}
        return WeightManifest(
            {p: f for p, f in self.files.items() if p in paths},
            {m: self.files_of(m) for m in models},
            self.source,
            self.created_at,
        )

    def merged_with(self, newer: WeightManifest) -> WeightManifest:
        """This manifest updated by `newer` (its files and models win)."""
        return WeightManifest(
            {**self.files, **newer.files},
            {**self.models, **newer.models},
            newer.source or self.source,
            newer.created_at,
        )

    def without_files(self, paths: Iterable[str]) -> WeightManifest:
        gone = set(paths)
        return replace(
            self,
            files={p: f for p, f in self.files.items() if p not in gone},
            models={m: ps for m, ps in self.models.items() if not gone & set(ps)},
        )

    def to_json(self) -> str:
        data = {
            "format": MANIFEST_FORMAT,
            "source": self.source,
            "created_at": self.created_at,
            "files": {
                p: {k: v for k, v in asdict(f).items() if v is not None}
                for p, f in sorted(self.files.items())
            },
            "models": {m: sorted(ps) for m, ps in sorted(self.models.items())},
        }
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> WeightManifest:
        try:
            data = json.loads(text)
            if data.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format {data.get('format')!r} is not {MANIFEST_FORMAT}")
            files = {p: FileFacts(**f) for p, f in data["files"].items()}
            models = {m: list(ps) for m, ps in data.get("models", {}).items()}
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise WeightsError(f"{where}: not a valid {MANIFEST_NAME} ({error})") from error
        unlisted = sorted({p for ps in models.values() for p in ps} - set(files))
        if unlisted:
            raise WeightsError(
                f"{where}: models name files the manifest does not list: {unlisted[:5]}"
            )
        return cls(files, models, str(data.get("source", "")), float(data.get("created_at", 0)))


def manifest_uri(root: str) -> str:
    return join(root, MANIFEST_NAME)


def read_manifest(storage: Storage, root: str) -> WeightManifest | None:
    """The manifest of a local folder or s3:// prefix, or None when it has none."""
    uri = manifest_uri(root)
    try:
        text = storage.read_bytes(uri).decode("utf-8")
    except StorageNotFoundError:
        return None
    except (StorageError, UnicodeDecodeError) as error:
        raise WeightsError(f"cannot read {uri}: {error}") from error
    return WeightManifest.from_json(text, uri)


def write_manifest(storage: Storage, root: str, manifest: WeightManifest) -> None:
    """Publish the manifest whole (readers see the old one or the new one)."""
    storage.write_bytes(manifest_uri(root), manifest.to_json().encode("utf-8"))
