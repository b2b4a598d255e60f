"""Read restyle triplet shards for training, with plain `webdataset`, filtered on quality scores.

    python jobs/examples/read_triplets.py 'out/uso-triplets-v1/uso/part-{000000..000009}.tar' \
        --min-clip-t 0.2 --min-style 0.5

Each sample of a triplet shard holds `<key>.style.<ext>`, `<key>.subject.<ext>`,
`<key>.result.<ext>`, `<key>.txt` (caption) and `<key>.json` (provenance; its "scores" hold
each metric as {"computed": bool, "value": number}). Shards are local paths, globs, brace patterns, `pipe:` commands (e.g.
`pipe:aws s3 cp s3://bucket/triplets/part-000000.tar -`), or s3:// URIs, which this example
opens through restyle's storage settings (the usual AWS_* variables).
"""

from __future__ import annotations

import argparse
import glob
import json

import numpy as np
import torch
import webdataset as wds
from braceexpand import braceexpand

IMAGE_EXTS = ("png", "jpg", "webp")


def _first(sample: dict, role: str):
    for ext in IMAGE_EXTS:
        if f"{role}.{ext}" in sample:
            return sample[f"{role}.{ext}"]
    raise KeyError(f"sample {sample['__key__']!r} has no {role} image")


def passes(sample: dict, minimums: dict[str, float]) -> bool:
    """True when every required score was computed and is at least its minimum."""
    scores = json.loads(sample["json"])["scores"]
    return all(
        scores[name]["computed"] and scores[name]["value"] >= low for name, low in minimums.items()
    )


def to_tensor(image) -> torch.Tensor:
    """PIL RGB -> CHW float in [-1, 1], the usual diffusion-training range."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def triplets(urls: list[str], minimums: dict[str, float]) -> wds.WebDataset:
    """(style, subject, result, caption, provenance) per sample that passes the filters."""
    if any(u.startswith("s3://") for u in urls):
        register_s3()
    return (
        wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        .select(lambda sample: passes(sample, minimums))
        .decode("pil")  # images -> PIL, .txt -> str, .json -> dict
        .map(
            lambda s: (
                _first(s, "style"),
                _first(s, "subject"),
                _first(s, "result"),
                s["txt"],
                s["json"],
            )
        )
    )


def register_s3() -> None:
    """Let webdataset open s3:// URLs with restyle's storage client (endpoint, credentials)."""
    from pipeline.storage import Storage

    storage = Storage()
    wds.gopen_schemes["s3"] = lambda url, mode="rb", bufsize=8192, **kw: storage.open_read(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", nargs="+", help="shard paths, brace patterns or s3:// URIs")
    parser.add_argument("--min-clip-t", type=float, help="keep results with clip_t >= this")
    parser.add_argument("--min-style", type=float, help="keep results with style >= this")
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    minimums = {
        k: v for k, v in (("clip_t", args.min_clip_t), ("style", args.min_style)) if v is not None
    }
    urls = [
        u
        for arg in args.shards
        for pattern in braceexpand(arg)
        for u in (sorted(glob.glob(pattern)) if "*" in pattern else [pattern])
    ]

    kept = 0
    for style, subject, result, caption, provenance in triplets(urls, minimums):
        if kept < args.batch:  # what a training step would see
            print(
                f"{provenance['id']}: {caption!r} style {tuple(to_tensor(style).shape)} "
                f"subject {tuple(to_tensor(subject).shape)} result {tuple(to_tensor(result).shape)} "
                f"scores { {k: v['value'] for k, v in provenance['scores'].items() if v['computed']} }"
            )
        kept += 1
    print(f"{kept} triplets passed the filters {minimums or '(none)'}")


if __name__ == "__main__":
    main()
