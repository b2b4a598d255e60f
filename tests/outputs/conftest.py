"""Run folders as a trainer meets them: made once per session by the real pipeline at tiny size.

<root>/out/omni   OmniConsistency, two manifest shards, rows with and without a style LoRA
                  and with an extra column; one subject is missing at first (io_error),
                  then put in place and retried; then captioned by `restyle caption`
<root>/out/uso    USO with quality scores; one text-only row (no subject, no style)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from support.run_folders import caption_in_process, run_in_process
from support.run_helpers import SMALL, parquet_bytes, png_bytes, run_config, write_images

from pipeline.config import ScoringOptions
from pipeline.weights.tiny_aux import build_tiny_captioner, build_tiny_clip


@dataclass(frozen=True)
class RunFolders:
    root: Path
    omni: Path
    uso: Path


def omni_rows(images: Path) -> tuple[list[dict], list[dict]]:
    styles = ["Ghibli", None, "Van_Gogh", None]
    first = [
        {
            "id": f"o{i}",
            "prompt": "a small house",
            "subject": str(images / "img0.png"),
            "style_lora": style,
            "sku": 100 + i,
            **SMALL,
        }
        for i, style in enumerate(styles)
    ]
    second = [
        {
            "id": f"o{4 + i}",
            "prompt": "a tree",
            "subject": str(images / ("later.png" if i == 1 else "img1.png")),
            "style_lora": style,
            "sku": None,
            **SMALL,
        }
        for i, style in enumerate([None, "Ghibli", None])
    ]
    return first, second


@pytest.fixture(scope="session")
def run_folders(tiny_weights, tmp_path_factory) -> RunFolders:
    root = tmp_path_factory.mktemp("run-folders")
    images = root / "images"
    write_images(images, 2)
    manifests = root / "manifests"
    (manifests / "omni").mkdir(parents=True)
    first, second = omni_rows(images)
    (manifests / "omni" / "part-0.parquet").write_bytes(parquet_bytes(first))
    (manifests / "omni" / "part-1.parquet").write_bytes(parquet_bytes(second))
    uso = [
        {
            "id": f"u{i}",
            "prompt": f"item {i}",
            "subject": "../images/img0.png",
            "styles": ["../images/img1.png"],
            **SMALL,
        }
        for i in range(3)
    ]
    uso.append({"id": "u3", "prompt": "just words", "subject": None, "styles": None, **SMALL})
    (manifests / "uso.parquet").write_bytes(parquet_bytes(uso))
    out = root / "out"

    omni = run_config(
        str(manifests / "omni"), str(out), tiny_weights, run="omni", model="omniconsistency"
    )
    run_in_process(omni)
    (images / "later.png").write_bytes(png_bytes(9))  # the operator fixes the missing image
    run_in_process(omni, retry=True)
    caption_in_process(str(out / "omni"), str(build_tiny_captioner(root / "blip")))

    scoring = ScoringOptions(metrics=("clip_t", "style"), model=str(build_tiny_clip(root / "clip")))
    run_in_process(
        run_config(
            str(manifests / "uso.parquet"), str(out), tiny_weights, run="uso", scoring=scoring
        )
    )
    return RunFolders(root, out / "omni", out / "uso")
