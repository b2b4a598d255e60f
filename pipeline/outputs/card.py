"""The dataset card: `<run>/README.md`, with Hugging Face dataset-card metadata, so that
`datasets.load_dataset(<run folder>)` reads a local copy as it is and the folder can be pushed
to the Hub unchanged.

    configs: images (default; part-*.tar) with its features; the body says how to read the
             records (part-*.parquet) and captions (captions/*.parquet)
    license: the base model's (FLUX.1 [dev] Non-Commercial License)
    body:    how the run was made: model, weights and their sha256, parameters, restyle version

The card is a function of run.json (and whether captions exist): written when a run claims its
folder, refreshed on every resume and by the caption stage.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from pipeline.config import OutputOptions
from pipeline.outputs.features import image_features
from pipeline.outputs.layout import (
    CAPTIONS_FOLDER,
    CAPTIONS_GLOB,
    CARD,
    LAYOUT_VERSION,
    MARKER_INDEX,
    RECORDS_GLOB,
    SHARDS_GLOB,
)
from pipeline.storage import Storage

BASE_MODEL = "black-forest-labs/FLUX.1-dev"
LICENSE = {
    "license": "other",
    "license_name": "flux-1-dev-non-commercial-license",
    "license_link": "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
}
MODEL_PAGES = {
    "uso": "bytedance-research/USO",
    "omniconsistency": "showlab/OmniConsistency",
}


def card_metadata(run_json: dict) -> dict[str, Any]:
    """The card's YAML. `datasets` reads every config of a folder with one builder (the first
    config's format), so the card's config is the WebDataset one; the Parquet files are read
    with the parquet builder over their glob (see the card's body)."""
    config = run_json["config"]
    outputs = OutputOptions.model_validate(config["outputs"])
    return {
        **LICENSE,
        "base_model": [BASE_MODEL, MODEL_PAGES[config["model"]]],
        "tags": ["restyle", "synthetic", "image-to-image", "style-transfer", config["model"]],
        "task_categories": ["image-to-image"],
        "configs": [
            {
                "config_name": "images",
                "default": True,
                "data_files": [{"split": "train", "path": SHARDS_GLOB}],
            }
        ],
        "dataset_info": [
            {
                "config_name": "images",
                "features": image_features(outputs.extension, outputs.include_references),
            }
        ],
    }


def card_text(run_json: dict, captions: bool) -> str:
    run_json = json.loads(
        json.dumps(run_json, default=str, sort_keys=True)
    )  # as run.json reads back
    config = run_json["config"]
    front = yaml.safe_dump(card_metadata(run_json), sort_keys=False, width=1000)
    random = bool(run_json.get("random_weights"))
    weights = run_json.get("weights", {})
    lines = [
        "---",
        front.rstrip(),
        "---",
        "",
        f"# {config['run']}",
        "",
        f"Images stylized by **{config['model']}** on FLUX.1 [dev], made with "
        f"`{run_json.get('code_version', 'restyle')}` (run fingerprint "
        f"`{run_json['fingerprint']}`).",
        "",
    ]
    if random:
        lines += [
            f"> **Random weights** (`{config['weights']}`): these pictures are noise from a "
            "model with random weights, made for tests and benchmarks, not stylizations.",
            "",
        ]
    lines += [
        "## Licence",
        "",
        "The images come from FLUX.1 [dev] and are subject to the "
        f"[FLUX.1 [dev] Non-Commercial License]({LICENSE['license_link']}); read its terms on "
        "outputs, and those of the style LoRAs and input images used, before using or "
        "publishing them.",
        "",
        "## Contents",
        "",
        "| files | format | one row per |",
        "|---|---|---|",
        f"| `{SHARDS_GLOB}` | WebDataset | result image: the image, `txt` caption, `json` "
        "provenance |",
        f"| `{RECORDS_GLOB}` | Parquet | input item, failures included: its newest result "
        "(`output_key` = `<tar>#<key>` of its image) |",
    ]
    if captions:
        lines.append(
            f"| `{CAPTIONS_GLOB}` | Parquet | result image: a caption made after the run "
            "(`restyle caption`), joined on `key` |"
        )
    lines += [
        "",
        "```python",
        "from datasets import load_dataset",
        'images = load_dataset("<this folder>", split="train")  # the card\'s config',
        'records = load_dataset("parquet", data_files="<this folder>/part-*.parquet", '
        'split="train")',
        "```",
        "",
        f"Commit markers (`*.stats.json`), their index (`{MARKER_INDEX}`, a cache for "
        "`restyle status`), `run.json` and this card are not data. A tar "
        "without its `.stats.json` marker belongs to an interrupted commit (see `restyle "
        f"status`). Output layout {LAYOUT_VERSION}; schemas: `pipeline/outputs/schema/` "
        f"in restyle. Caption sidecars live in `{CAPTIONS_FOLDER}/`.",
        "",
        "## How it was made",
        "",
        f"- model: `{config['model']}`; weights: `{config['weights']}`"
        + (" (random)" if random else ""),
        f"- run seed: `{config['seed']}` (item seed = sha256 of run seed and item id)",
        f"- sampling defaults: `{config['sampling']}`",
        f"- execution: `{config['options']}`",
        f"- outputs: `{config['outputs']}`; scoring: `{config['scoring']}`",
        f"- input manifests: {', '.join(f'`{m}`' for m in config['manifest'])}",
        "",
        "| weight file | sha256 |",
        "|---|---|",
        *(f"| `{name}` | `{sha}` |" for name, sha in sorted(weights.items())),
        "",
    ]
    return "\n".join(lines)


def has_captions(storage: Storage, run_uri: str) -> bool:
    return any(uri.endswith(".parquet") for uri in storage.list(f"{run_uri}/{CAPTIONS_FOLDER}/"))


def write_card(storage: Storage, run_uri: str, run_json: dict) -> None:
    """Write (or refresh) the run folder's README.md from its run.json."""
    text = card_text(run_json, has_captions(storage, run_uri)).encode()
    uri = f"{run_uri}/{CARD}"
    if storage.exists(uri) and storage.read_bytes(uri) == text:
        return
    storage.write_bytes(uri, text)
