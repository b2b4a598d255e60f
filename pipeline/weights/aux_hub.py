"""Auxiliary model folders from the Hugging Face Hub: `hf://owner/repo[@revision]`.

Staged once per node into the weight cache, like an `s3://` folder: one folder per (endpoint,
repo, revision), under a file lock, filled by `huggingface_hub.snapshot_download` and marked
complete last (`HUB_MARKER`, which records the commit the revision resolved to). Every later
caller on the node (another actor, the next run) asks the Hub only which commit the revision
names now, and reuses the folder when it is the staged one; a revision that is a commit sha is
reused without asking. A branch that moved is staged again (files removed upstream are
deleted), so the folder is always exactly the repo at one commit, whose sha goes into the
eval's provenance beside the folder's sha256 (`hub_commit`).

Token: $HF_TOKEN, else the token saved by `hf auth login`. Endpoint: $HF_ENDPOINT, else
https://huggingface.co. Failures are `HubAccessError`s worded as the weights' Hub source words
them (`pipeline.weights.hub_errors`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from filelock import FileLock

from pipeline.config.hub_ref import HubRef
from pipeline.weights.hub_errors import HubRequest, hub_errors, request_from_env
from pipeline.wording import counted

log = logging.getLogger(__name__)

HUB_MARKER = ".restyle-hub.json"
HF_METADATA = ".cache"  # snapshot_download's bookkeeping inside local_dir (.cache/huggingface)


def stage_hub(ref: HubRef, cache: Path, kind: str) -> Path:
    """The local folder holding `ref`'s files, downloaded into `cache` once per node."""
    from huggingface_hub import HfApi, snapshot_download

    from pipeline.weights.aux_models import AuxModelError, known_ids, looks_like_model

    request = _request(ref, kind)
    target = cache / "hf" / _folder_name(request)
    target.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        staged = _read_marker(target)
        if ref.pinned and staged.get("commit") == ref.revision:
            return target
        with hub_errors(request, f"resolve {ref.spec}"):
            info = HfApi(endpoint=request.endpoint, token=request.token).model_info(
                ref.repo, revision=ref.revision
            )
        commit = str(info.sha)
        names = sorted(s.rfilename for s in info.siblings or ())
        if staged.get("commit") == commit and staged.get("files") == names:
            return target
        if not looks_like_model(names):
            raise AuxModelError(
                f"{ref.spec}: not a model folder (no config.json in the repo at {commit[:12]}; "
                f"found {names[:5]}); {kind} models: {known_ids(kind)}"
            )
        (target / HUB_MARKER).unlink(missing_ok=True)
        with hub_errors(request, f"download {ref.spec} ({commit[:12]})"):
            snapshot_download(
                ref.repo,
                revision=commit,  # exactly the files of the commit just resolved
                local_dir=target,
                endpoint=request.endpoint,
                token=request.token,
            )
        _keep_only(target, set(names), ref.spec)
        (target / HUB_MARKER).write_text(
            json.dumps(
                {
                    "endpoint": request.endpoint,
                    "repo": ref.repo,
                    "revision": ref.revision,
                    "commit": commit,
                    "files": names,
                },
                indent=1,
            )
        )
        files = counted(len(names), "file")
        log.info("staged %s (commit %s, %s) into %s", ref.spec, commit, files, target)
    return target


def hub_commit(folder: Path) -> str | None:
    """The commit a folder staged from the Hub holds (None for any other folder)."""
    return _read_marker(Path(folder)).get("commit")


def _request(ref: HubRef, kind: str) -> HubRequest:
    return request_from_env(
        ref.repo,
        ref.revision,
        named_in=f"the {kind} model spec {ref.spec}",
        offline_advice=(
            f"give a local folder or an s3:// mirror instead (`hf download {ref.repo} "
            f"--revision {ref.revision} --local-dir DIR` on a machine that can reach the Hub)"
        ),
    )


def _folder_name(request: HubRequest) -> str:
    """One folder per (endpoint, repo, revision): readable, and unique by its hash."""
    key = f"{request.endpoint}\n{request.repo_id}\n{request.revision}"
    readable = f"{request.repo_id.replace('/', '--')}@{request.revision}"
    readable = "".join(ch if ch.isalnum() or ch in "-_.@" else "-" for ch in readable)
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _read_marker(folder: Path) -> dict:
    try:
        return json.loads((folder / HUB_MARKER).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _keep_only(target: Path, names: set[str], spec: str) -> None:
    """Delete files of an earlier commit the repo no longer has; check every file is there
    (snapshot_download hands back an existing folder as it is when the Hub drops out)."""
    from pipeline.errors import WeightsError

    for path in sorted(p for p in target.rglob("*") if p.is_file()):
        relative = path.relative_to(target).as_posix()
        if relative not in names and not relative.startswith((HF_METADATA + "/", HUB_MARKER)):
            path.unlink()
    missing = sorted(n for n in names if not (target / n).is_file())
    if missing:
        raise WeightsError(
            f"{spec}: the download left out {missing[:5]} ({counted(len(missing), 'file')}); run again"
        )
