"""Where the auxiliary transformers models (CLIP scorer, captioner) come from.

These are not part of a model's weight registry (`pipeline/weights/registry.toml` lists the
files USO and OmniConsistency need); they are whole `save_pretrained` folders named by one
spec string in a job or run config:

- "tiny": a tiny random-weight model of the right kind, built once into the weight cache
  (tests and demos; scores and captions are meaningless);
- a local folder (`hf download openai/clip-vit-large-patch14 --local-dir /models/clip-l`);
- an `s3://bucket/prefix/` holding such a folder: copied once per node into the weight cache
  under a file lock, then used from there (so every actor of a cluster can read it).

Nothing is fetched from the Hugging Face Hub at run time. `KNOWN_CHECKPOINTS` names the real
published checkpoints each kind was written for, for `hf download` and the docs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from pipeline.storage import Storage, is_s3

log = logging.getLogger(__name__)

SCORER, CAPTIONER = "scorer", "captioner"
TINY = "tiny"
STAGED_MARKER = ".restyle-staged.json"
CHUNK = 8 << 20


@dataclass(frozen=True)
class Checkpoint:
    repo: str
    note: str


# The published checkpoints these kinds were written and documented for (download them with
# `hf download <repo> --local-dir <folder>`, optionally mirror the folder to S3).
KNOWN_CHECKPOINTS: dict[str, tuple[Checkpoint, ...]] = {
    SCORER: (
        Checkpoint(
            "openai/clip-vit-large-patch14",
            "CLIP ViT-L/14 (the usual CLIP-score model; 224 px, 77 text tokens)",
        ),
        Checkpoint(
            "google/siglip-so400m-patch14-384",
            "SigLIP so400m (the image encoder USO itself uses; sigmoid-trained)",
        ),
    ),
    CAPTIONER: (
        Checkpoint("Salesforce/blip-image-captioning-base", "BLIP base, short captions"),
        Checkpoint("Salesforce/blip-image-captioning-large", "BLIP large"),
        Checkpoint(
            "microsoft/Florence-2-base",
            "Florence-2 base; task prompt '<CAPTION>' or '<DETAILED_CAPTION>'",
        ),
    ),
}


class AuxModelError(ValueError):
    """An auxiliary model spec that names nothing usable; the message says which and why."""


def model_folder(spec: str, kind: str, storage: Storage | None = None) -> Path:
    """A local folder holding the `kind` model named by `spec` (see the module doc)."""
    if not spec:
        raise AuxModelError(
            f"no {kind} model given: set a local folder, an s3:// folder or "
            f"'tiny' (real checkpoints: {known_ids(kind)})"
        )
    if spec == TINY:
        return _tiny(kind)
    if is_s3(spec):
        return _stage_s3(spec, storage or Storage())
    folder = Path(spec).expanduser()
    if not (folder / "config.json").is_file():
        raise AuxModelError(
            f"{kind} model {spec!r}: not a transformers model folder (no "
            f"config.json there); download one with `hf download <repo> "
            f"--local-dir {spec}` ({known_ids(kind)})"
        )
    return folder


def known_ids(kind: str) -> str:
    return ", ".join(c.repo for c in KNOWN_CHECKPOINTS.get(kind, ()))


def _cache() -> Path:
    from pipeline.weights.resolve import weight_cache_dir

    return weight_cache_dir() / "aux"


def _tiny(kind: str) -> Path:
    from pipeline.weights.tiny_aux import build_tiny_captioner, build_tiny_clip

    folder = _cache() / f"tiny-{kind}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        return build_tiny_clip(folder) if kind == SCORER else build_tiny_captioner(folder)


def _stage_s3(uri: str, storage: Storage) -> Path:
    """Copy every object below `uri` into the node cache once (file lock, marker last)."""
    prefix = uri.rstrip("/") + "/"
    target = _cache() / "s3" / hashlib.sha256(prefix.encode()).hexdigest()[:16]
    target.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        listing = {
            u[len(prefix) :]: storage.size(u) for u in storage.list(prefix) if not u.endswith("/")
        }  # not folder-marker objects
        marker = target / STAGED_MARKER
        if marker.is_file() and json.loads(marker.read_text()) == listing:
            return target
        if "config.json" not in listing:
            raise AuxModelError(
                f"{uri}: not a transformers model folder (no config.json below it; "
                f"found {sorted(listing)[:5]})"
            )
        marker.unlink(missing_ok=True)
        for name in sorted(listing):
            path = target / name
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            with storage.open_read(prefix + name) as source, open(partial, "wb") as sink:
                shutil.copyfileobj(source, sink, CHUNK)
            partial.replace(path)
        marker.write_text(json.dumps(listing, sort_keys=True))
        log.info("staged %d files of %s into %s", len(listing), uri, target)
    return target
