"""The weight registry: which published files each model needs and where they go.

The data lives in `registry.toml` beside this module (package data, so an installed restyle
reads the same single copy; `weights/registry.toml` in the repository links to it). Each file
entry maps a Hugging Face Hub file (repo + path) onto its place in a weights root (`dest`, the
layout of `pipeline.models.weight_layout`), with its size and sha256 where publicly known.

    registry = load_registry()
    for entry in registry.files_for(["uso"]):
        print(entry.dest, entry.repo, entry.path, entry.size, entry.sha256)
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from pipeline.errors import WeightsError

REGISTRY_FORMAT = 1
MODELS = ("uso", "omniconsistency")
# Every component a model can name; `style_loras` are recorded per item (the worker records the
# style LoRA each item used), so they are not part of a run's base-weight provenance.
COMPONENTS = (
    "flux_transformer",
    "flux_vae",
    "t5",
    "clip",
    "siglip",
    "uso_dit_lora",
    "uso_projector",
    "omniconsistency_lora",
    "style_loras",
)
PER_ITEM_COMPONENTS = frozenset({"style_loras"})
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FILE_KEYS = {"component", "repo", "path", "dest", "size", "sha256", "each"}


@dataclass(frozen=True)
class HubRepo:
    """A Hub repository files come from; `gated` ones need a token with the licence accepted."""

    id: str
    revision: str = "main"
    gated: bool = False
    licence_url: str | None = None


@dataclass(frozen=True)
class RegistryFile:
    """One published file: where it is on the Hub and where it goes in a weights root."""

    component: str
    repo: str
    path: str  # inside the Hub repo
    dest: str  # inside a weights root, posix
    size: int | None = None  # bytes, when publicly known
    sha256: str | None = None  # when publicly known


@dataclass(frozen=True)
class Registry:
    repos: Mapping[str, HubRepo]
    files: tuple[RegistryFile, ...]
    models: Mapping[str, tuple[str, ...]]  # model -> components
    source: str  # where it was read from, for messages

    def components_for(self, models: Iterable[str]) -> list[str]:
        out: list[str] = []
        for model in check_models(models):
            out += [c for c in self.models[model] if c not in out]
        return out

    def files_for(self, models: Iterable[str]) -> list[RegistryFile]:
        """The files `models` need, each once, in registry order."""
        wanted = set(self.components_for(models))
        return [f for f in self.files if f.component in wanted]

    def by_dest(self) -> dict[str, RegistryFile]:
        return {f.dest: f for f in self.files}

    def repo(self, repo_id: str) -> HubRepo:
        return self.repos.get(repo_id) or HubRepo(repo_id)


def check_models(models: Iterable[str]) -> list[str]:
    """The model names, validated ("all" expands to every model)."""
    out: list[str] = []
    for model in models:
        names = MODELS if model == "all" else (model,)
        for name in names:
            if name not in MODELS:
                raise WeightsError(
                    f"unknown model {name!r}; choose from {', '.join(MODELS)} or all"
                )
            if name not in out:
                out.append(name)
    if not out:
        raise WeightsError(f"no model given; choose from {', '.join(MODELS)} or all")
    return out


def default_registry_path() -> Path:
    """$RESTYLE_WEIGHTS_REGISTRY (a registry of your own: pinned revisions, a private fork),
    else the registry shipped with restyle."""
    override = os.environ.get("RESTYLE_WEIGHTS_REGISTRY")
    if override:
        return Path(override)
    return Path(str(resources.files("pipeline.weights").joinpath("registry.toml")))


def load_registry(path: Path | None = None) -> Registry:
    """Read and validate a registry file (default: `default_registry_path()`)."""
    path = Path(path) if path is not None else default_registry_path()
    try:
        version = path.stat().st_mtime_ns  # re-read an edited registry
    except OSError:
        version = -1
    return _load(path, version)


@lru_cache(maxsize=8)
def _load(path: Path, version: int) -> Registry:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise WeightsError(f"weight registry {path}: cannot read it ({error})") from error
    return parse_registry(data, str(path))


def parse_registry(data: Mapping[str, Any], source: str) -> Registry:
    """Build a `Registry` from parsed TOML; any inconsistency names `source` and the entry."""

    def fail(message: str) -> WeightsError:
        return WeightsError(f"weight registry {source}: {message}")

    if data.get("format") != REGISTRY_FORMAT:
        raise fail(f"format must be {REGISTRY_FORMAT}, got {data.get('format')!r}")
    repos = {
        repo_id: HubRepo(
            repo_id,
            str(spec.get("revision", "main")),
            bool(spec.get("gated", False)),
            spec.get("licence_url"),
        )
        for repo_id, spec in (data.get("repos") or {}).items()
    }
    files: list[RegistryFile] = []
    for index, entry in enumerate(data.get("files") or []):
        files += _expand_entry(entry, f"files[{index}]", fail)
    seen: set[str] = set()
    for f in files:
        if f.dest in seen:
            raise fail(f"dest {f.dest!r} is listed twice")
        seen.add(f.dest)
    models: dict[str, tuple[str, ...]] = {}
    for model, spec in (data.get("models") or {}).items():
        components = tuple(spec.get("components") or ())
        unknown = [c for c in components if c not in COMPONENTS]
        if unknown:
            raise fail(f"model {model!r} names unknown components {unknown}")
        empty = [c for c in components if not any(f.component == c for f in files)]
        if empty:
            raise fail(f"model {model!r} needs components with no files: {empty}")
        models[model] = components
    missing = [m for m in MODELS if m not in models]
    if missing:
        raise fail(f"no entry for models {missing}")
    return Registry(repos, tuple(files), models, source)


def _expand_entry(entry: Mapping[str, Any], where: str, fail) -> list[RegistryFile]:
    unknown = sorted(set(entry) - _FILE_KEYS)
    if unknown:
        raise fail(f"{where}: unknown keys {unknown}")
    for key in ("component", "repo", "path", "dest"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise fail(f"{where}: {key!r} must be a non-empty string")
    if entry["component"] not in COMPONENTS:
        raise fail(
            f"{where}: unknown component {entry['component']!r}; known: {', '.join(COMPONENTS)}"
        )
    size, sha256 = entry.get("size"), entry.get("sha256")
    if size is not None and (not isinstance(size, int) or size <= 0):
        raise fail(f"{where}: size must be a positive number of bytes, got {size!r}")
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256.match(sha256)):
        raise fail(f"{where}: sha256 must be 64 lowercase hex digits, got {sha256!r}")
    names = entry.get("each")
    if names is None:
        templated = [k for k in ("path", "dest") if "{name}" in entry[k]]
        if templated:
            raise fail(f"{where}: {templated} use {{name}} but the entry has no 'each' list")
        names_and_fields = [(entry["path"], entry["dest"])]
    else:
        if size is not None or sha256 is not None:
            raise fail(
                f"{where}: an 'each' entry stands for several files; give size/sha256 "
                "in separate entries"
            )
        if not names or not all(isinstance(n, str) and n for n in names):
            raise fail(f"{where}: 'each' must be a non-empty list of names")
        names_and_fields = [
            (entry["path"].replace("{name}", n), entry["dest"].replace("{name}", n)) for n in names
        ]
    out = []
    for path, dest in names_and_fields:
        if dest.startswith("/") or ".." in dest.split("/"):
            raise fail(f"{where}: dest {dest!r} must stay inside the weights root")
        out.append(RegistryFile(entry["component"], entry["repo"], path, dest, size, sha256))
    return out
