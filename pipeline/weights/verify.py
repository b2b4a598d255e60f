"""`restyle weights verify <dir>`: is a weights root complete, intact and the right architecture?

For the models it holds (or those asked for), every expected file is checked for
- presence: the files the loaders would read (`inventory`), every file the folder's own
  `restyle-weights.json` or `tiny_build.json` lists, and, for real (non-tiny) weights, every
  file the registry lists for the model (so a missing shipped style LoRA is reported);
- size against each reference that knows it (manifest, tiny build marker, registry);
- header: names and shapes against the architecture (`header_checks`), LoRA ranks read from
  the file; transformers/diffusers folders against their own config.json;
- sha256 against each reference that knows it (hashes are cached per node; `check_hashes=False`
  skips them).
The result is one row per file (plus one per model folder) with every problem spelled out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import StartError, WeightsError
from pipeline.storage import Storage, StorageSettings
from pipeline.weights.hashing import file_sha256
from pipeline.weights.header_checks import (
    FOLDER_COMPONENTS,
    ArchitecturePreset,
    check_model_folder,
    check_single_file,
    preset_for,
)
from pipeline.weights.inventory import component_of, model_files
from pipeline.weights.manifest import MANIFEST_NAME, FileFacts, read_manifest
from pipeline.weights.registry import MODELS, Registry, check_models, load_registry
from pipeline.weights.tiny import MARKER as TINY_MARKER
from pipeline.wording import counted

# Files checked against an architecture table (the rest: header must parse).
SINGLE_FILES = {
    "flux1-dev/flux1-dev.safetensors",
    "flux1-dev/ae.safetensors",
    "uso/dit_lora.safetensors",
    "uso/projector.safetensors",
    "omniconsistency/OmniConsistency.safetensors",
}
MODEL_MARKERS = {"uso": "uso", "omniconsistency": "omniconsistency"}  # folder that says "holds it"


@dataclass
class FileCheck:
    path: str  # inside the root; folders end with "/"
    component: str
    size: int | None = None
    header: str = "-"  # ok | FAIL | - (nothing to check)
    sha256: str = "-"  # ok | FAIL | unknown (no reference) | skipped | -
    digest: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    root: Path
    models: list[str]
    preset: str
    rows: list[FileCheck]

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    def problems(self) -> list[str]:
        return [f"{row.path}: {problem}" for row in self.rows for problem in row.problems]


def held_models(root: Path) -> list[str]:
    """The models whose own files `root` has (all of them when it has none)."""
    found = [m for m in MODELS if (root / MODEL_MARKERS[m]).exists()]
    return found or list(MODELS)


def _references(
    root: Path, preset: str, registry: Registry
) -> list[tuple[str, dict[str, FileFacts]]]:
    refs: list[tuple[str, dict[str, FileFacts]]] = []
    manifest = read_manifest(Storage(StorageSettings()), str(root))
    if manifest is not None:
        refs.append((MANIFEST_NAME, manifest.files))
    if preset == "tiny":
        try:
            marker = json.loads((root / TINY_MARKER).read_text())
            refs.append(
                (
                    TINY_MARKER,
                    {
                        p: FileFacts(f.get("size"), f.get("sha256"))
                        for p, f in marker.get("files", {}).items()
                    },
                )
            )
        except (OSError, ValueError, AttributeError) as error:
            raise WeightsError(f"{root / TINY_MARKER}: unreadable ({error})") from error
    elif preset == "release":  # the registry describes the real files only
        refs.append(
            ("registry", {f.dest: FileFacts(f.size, f.sha256, f.component) for f in registry.files})
        )
    return refs


def verify_root(
    root: Path,
    models: list[str] | None = None,
    *,
    check_hashes: bool = True,
    registry: Registry | None = None,
) -> VerifyReport:
    root = Path(root)
    if not root.is_dir():
        raise WeightsError(
            f"{root} is not a folder (verify checks a local weights root; stage "
            "a mirror first with `restyle weights pull <model> --from s3://...`)"
        )
    registry = registry if registry is not None else load_registry()
    models = check_models(models) if models else held_models(root)
    rows: list[FileCheck] = []
    preset, config_problem = preset_for(root, TINY_MARKER)
    if config_problem:
        rows.append(
            FileCheck(
                "flux1-dev/flux_config.json",
                "flux_transformer",
                header="FAIL",
                problems=[config_problem],
            )
        )
    refs = _references(root, preset.name, registry)
    expected = _expected_paths(root, models, preset.name, refs, registry, rows)
    for path, component in sorted(expected.items()):
        rows.append(_check_file(root, path, component, preset, refs, check_hashes))
    for folder, component in _model_folders(expected):
        problems = check_model_folder(root / folder, component)
        rows.append(
            FileCheck(
                folder + "/", component, header="FAIL" if problems else "ok", problems=problems
            )
        )
    return VerifyReport(root, models, preset.name, rows)


def _expected_paths(
    root: Path, models: list[str], preset: str, refs, registry: Registry, rows: list[FileCheck]
) -> dict[str, str]:
    wanted = set(registry.components_for(models))
    expected: dict[str, str] = {}
    for model in models:
        try:
            expected.update(model_files(root, model))
        except WeightsError as error:
            rows.append(FileCheck(f"({model} layout)", model, problems=[str(error)]))
    for label, files in refs:
        if label == "registry":
            files = {f.dest: FileFacts(component=f.component) for f in registry.files_for(models)}
        for path, facts in files.items():
            component = facts.component or component_of(path)
            if component in wanted:
                expected.setdefault(path, component)
    return expected


def _check_file(
    root: Path, path: str, component: str, preset: ArchitecturePreset, refs, check_hashes: bool
) -> FileCheck:
    row = FileCheck(path, component)
    file = root / path
    known = [(label, files[path]) for label, files in refs if path in files]
    if not file.is_file():
        listed = ", ".join(label for label, _ in known) or "the loaders"
        row.problems.append(f"missing (expected by {listed})")
        return row
    row.size = file.stat().st_size
    for label, facts in known:
        if facts.size is not None and facts.size != row.size:
            row.problems.append(
                f"{row.size} bytes, {label} says {facts.size} (truncated or a different file)"
            )
    if path.endswith(".safetensors"):
        header = check_single_file(file, component if path in SINGLE_FILES else "", preset, root)
        row.header = "FAIL" if header else "ok"
        row.problems += header
    if check_hashes:
        row.digest = file_sha256(file)
        references = [(label, facts.sha256) for label, facts in known if facts.sha256]
        bad = [
            f"sha256 {row.digest[:12]}..., {label} says {sha[:12]}..."
            for label, sha in references
            if sha != row.digest
        ]
        row.sha256 = "FAIL" if bad else ("ok" if references else "unknown")
        row.problems += bad
    else:
        row.sha256 = "skipped"
    return row


def _model_folders(expected: dict[str, str]) -> list[tuple[str, str]]:
    """(folder, component) of each transformers/diffusers model folder among the files."""
    folders = {}
    for path, component in expected.items():
        folder, _, name = path.rpartition("/")
        if name == "config.json" and folder and component in FOLDER_COMPONENTS:
            folders[folder] = component
    return sorted(folders.items())


def check_before_run(root: Path, model: str) -> None:
    """The checks of `restyle weights verify` (hashes aside: the run just hashed every file
    for its fingerprint), made on the driver before any actor loads: a truncated, zero-byte,
    renamed-tensor or pickle-only folder fails the run before its first item, in one line
    naming the file (`StartError`)."""
    problems = verify_root(root, [model], check_hashes=False).problems()
    if problems:
        more = f"; {counted(len(problems) - 1, 'more problem')}" if len(problems) > 1 else ""
        raise StartError(
            f"cannot start: weights {root}: {problems[0]}{more} "
            f"(`restyle weights verify {root}` lists every file)"
        )
