"""Where the auxiliary models (CLIP scorer, captioner, the eval metrics' backbones) come from.

These are not part of a model's weight registry (`pipeline/weights/registry.toml` lists the
files USO and OmniConsistency need); they are whole `save_pretrained` folders named by one
spec string in a job or run config:

- "tiny": a tiny random-weight model of the right kind, built once into the weight cache
  (tests and demos; scores and captions are meaningless);
- a local folder (`hf download openai/clip-vit-large-patch14 --local-dir /models/clip-l`);
- an `s3://bucket/prefix/` holding such a folder: copied once per node into the weight cache
  under a file lock, then used from there (so every actor of a cluster can read it);
- `hf://owner/repo[@revision]` (a branch, tag or commit; default "main"): a Hugging Face Hub
  repo, downloaded once per node into the weight cache the same way, with the commit the
  revision resolved to recorded for provenance (`pipeline.weights.aux_hub`).

`KNOWN_CHECKPOINTS` names the real published checkpoints each kind was written for, for
`hf://` specs, `hf download` and the docs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from pipeline.config.hub_ref import is_hub, parse_hub_ref
from pipeline.storage import Storage, is_s3
from pipeline.wording import counted

log = logging.getLogger(__name__)

SCORER, CAPTIONER = "scorer", "captioner"
# The backbones of `restyle eval` (pipeline.metrics): one spec each.
CLIP, DINO, CSD, FID, CMMD, DREAMSIM = "clip", "dino", "csd", "fid", "cmmd", "dreamsim"
METRIC_KINDS = (CLIP, DINO, CSD, FID, CMMD, DREAMSIM)
TINY = "tiny"
# What makes a folder usable for a kind (default: a transformers config.json).
FOLDER_SIGNS: dict[str, tuple[str, ...]] = {
    CSD: ("config.json", "csd_heads.safetensors"),
    FID: ("config.json", "pt_inception-2015-12-05-*.pth"),  # either one
    DREAMSIM: ("ensemble_lora",),
}
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
    CLIP: (
        Checkpoint("openai/clip-vit-base-patch32", "CLIP ViT-B/32 (DreamBench/UNO CLIP-I, CLIP-T)"),
        Checkpoint("openai/clip-vit-large-patch14", "CLIP ViT-L/14 (torchmetrics CLIPScore)"),
    ),
    DINO: (Checkpoint("facebook/dino-vits16", "DINO ViT-S/16 (DreamBench/UNO DINO)"),),
    CSD: (
        Checkpoint(
            "learn2phoenix/CSD checkpoint.pth",
            "CSD ViT-L/14: `restyle weights convert-csd checkpoint.pth FOLDER`",
        ),
    ),
    FID: (
        Checkpoint(
            "pt_inception-2015-12-05-6726825d.pth",
            "FID Inception-v3 (torch-fidelity release file) in a folder of its own",
        ),
    ),
    CMMD: (Checkpoint("openai/clip-vit-large-patch14-336", "CLIP ViT-L/14@336 (CMMD authors)"),),
    DREAMSIM: (
        Checkpoint("ssundaram21/dreamsim release zip", "DreamSim ensemble, unzipped (cache_dir)"),
    ),
}


class AuxModelError(ValueError):
    """An auxiliary model spec that names nothing usable; the message says which and why."""


def model_folder(spec: str, kind: str, storage: Storage | None = None) -> Path:
    """A local folder holding the `kind` model named by `spec` (see the module doc)."""
    if not spec:
        raise AuxModelError(
            f"no {kind} model given: set a local folder, an s3:// folder, hf://owner/repo or "
            f"'tiny' (real checkpoints: {known_ids(kind)})"
        )
    if spec == TINY:
        return _tiny(kind)
    if is_hub(spec):
        from pipeline.weights.aux_hub import stage_hub

        try:
            ref = parse_hub_ref(spec)
        except ValueError as error:
            raise AuxModelError(f"{kind} model {error}") from None
        folder = stage_hub(ref, _cache(), kind)
        if not _usable(folder, kind):
            raise AuxModelError(
                f"{kind} model {spec}: the repo is not a {kind} model folder (no "
                f"{' or '.join(FOLDER_SIGNS.get(kind, ('config.json',)))}); {kind} models: "
                f"{known_ids(kind)}"
            )
        return folder
    if is_s3(spec):
        return _stage_s3(spec, storage or Storage())
    folder = Path(spec).expanduser()
    if not _usable(folder, kind):
        raise AuxModelError(
            f"{kind} model {spec!r}: not a {kind} model folder (no "
            f"{' or '.join(FOLDER_SIGNS.get(kind, ('config.json',)))} there); download one with "
            f"`hf download <repo> --local-dir {spec}` ({known_ids(kind)})"
        )
    return folder


def _usable(folder: Path, kind: str) -> bool:
    signs = FOLDER_SIGNS.get(kind, ("config.json",))
    if kind == CSD:
        return all((folder / s).exists() for s in signs)
    return any(any(folder.glob(s)) for s in signs)


def looks_like_model(names: list[str]) -> bool:
    """Whether a remote listing (relative file names) holds a model folder of some kind."""
    return any(
        n == "config.json" or n.startswith(("ensemble_lora/", "pt_inception")) for n in names
    )


def folder_sha256(folder: Path) -> str:
    """One sha256 for a model folder: over its files' names and sha256s (cached per file), so
    provenance names exactly which weights scored a run."""
    from pipeline.weights.hashing import file_sha256

    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative.startswith(".") or relative.endswith(".lock") or _derived(relative):
            continue
        digest.update(f"{relative}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _derived(relative: str) -> bool:
    """Files a package writes into a model folder as it loads it, which say nothing of the
    weights: Python bytecode (DreamSim imports torch.hub's hubconf.py from its folder) and
    torch.hub's `trusted_list`. Hashing them would give a folder a new sha256 after first use,
    and so rescore every shard."""
    return "__pycache__/" in relative or relative.endswith(".pyc") or relative == "trusted_list"


def known_ids(kind: str) -> str:
    return ", ".join(c.repo for c in KNOWN_CHECKPOINTS.get(kind, ()))


def _cache() -> Path:
    from pipeline.weights.resolve import weight_cache_dir

    return weight_cache_dir() / "aux"


def _tiny(kind: str) -> Path:
    from pipeline.weights import tiny_aux

    builders = {
        SCORER: tiny_aux.build_tiny_clip,
        CAPTIONER: tiny_aux.build_tiny_captioner,
        CLIP: tiny_aux.build_tiny_clip,
        FID: tiny_aux.build_tiny_clip,  # FID over the tiny CLIP's pooled image features
        CMMD: tiny_aux.build_tiny_clip,
        DINO: tiny_aux.build_tiny_dino,
        CSD: tiny_aux.build_tiny_csd,
    }
    if kind not in builders:
        raise AuxModelError(
            f"{kind} model 'tiny': there is no tiny {kind} (its package fixes the "
            f"architecture); give the real release folder ({known_ids(kind)})"
        )
    name = "clip" if builders[kind] is tiny_aux.build_tiny_clip else kind
    folder = _cache() / f"tiny-{name}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        return builders[kind](folder)


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
        if not looks_like_model(list(listing)):
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
        log.info("staged %s of %s into %s", counted(len(listing), "file"), uri, target)
    return target
