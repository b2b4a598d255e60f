"""JSON Schemas of the job specs and of `restyle run --config` files, generated from their
models and published under jobs/schema/.

    python -m pipeline.jobs.schemas --write jobs/schema    # after changing a spec model
    python -m pipeline.jobs.schemas --check jobs/schema    # exit 1 when a committed one is stale

Editors (the YAML language server: VS Code, neovim, JetBrains) validate and complete a spec
from the first line of the file:

    # yaml-language-server: $schema=schema/nightly.schema.json

The schemas describe the keys, types, choices and ranges; rules that tie keys together (a
style LoRA only for OmniConsistency, a caption template for caption: template, ...) are
checked by `restyle nightly|triplets` when the spec is read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.config import ConfigModel, RunFile
from pipeline.jobs.specs import JobKind, JobSpec

RUN_FILE = "run"  # `restyle run --config run.yaml`: a job spec's run settings (`RunFile`)

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def spec_models() -> dict[str, type[JobSpec]]:
    from pipeline.jobs.nightly import NightlySpec
    from pipeline.jobs.triplets import TripletSpec

    return {JobKind.NIGHTLY.value: NightlySpec, JobKind.TRIPLETS.value: TripletSpec}


def schema_models() -> dict[str, type[ConfigModel]]:
    """Every published schema: the job specs', and the run file's of `restyle run --config`."""
    return {**spec_models(), RUN_FILE: RunFile}


def schema_file(kind: str) -> str:
    return f"{kind}.schema.json"


def spec_schema(kind: str) -> dict[str, Any]:
    model = schema_models()[kind]
    schema = model.model_json_schema(mode="validation")
    title = "restyle run --config file" if kind == RUN_FILE else f"restyle {kind} job spec"
    return {
        "$schema": DIALECT,
        "title": title,
        **{key: value for key, value in schema.items() if key != "title"},
    }


def schema_text(kind: str) -> str:
    return json.dumps(spec_schema(kind), indent=2, ensure_ascii=False) + "\n"


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in schema_models():
        path = folder / schema_file(kind)
        path.write_text(schema_text(kind))
        written.append(path)
    return written


def stale_schemas(folder: Path) -> list[Path]:
    """The schema files under `folder` that differ from what the models generate, or are
    missing."""
    stale = []
    for kind in schema_models():
        path = folder / schema_file(kind)
        if not path.is_file() or path.read_text() != schema_text(kind):
            stale.append(path)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write or check the job spec JSON Schemas.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", type=Path, metavar="FOLDER", help="write them into FOLDER")
    action.add_argument("--check", type=Path, metavar="FOLDER", help="exit 1 if FOLDER's are stale")
    args = parser.parse_args(argv)
    if args.write:
        for path in write_schemas(args.write):
            print(f"wrote {path}")
        return 0
    stale = stale_schemas(args.check)
    for path in stale:
        print(
            f"stale: {path} (run python -m pipeline.jobs.schemas --write {args.check})",
            file=sys.stderr,
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
