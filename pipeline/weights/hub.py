"""The Hugging Face Hub as a weight source, through `huggingface_hub`.

The registry says which repo files each model needs. Sizes and sha256 come from the Hub's own
file metadata (`HfApi.get_paths_info`: LFS files carry their sha256, small files only a git blob
id), so the driver learns every digest without downloading weights; a disagreement with a value
pinned in the registry is an error. Files are downloaded with `hf_hub_download` into a scratch
folder beside the staging target (the library retries and resumes a broken stream inside one
call; a download cut short by a crash is restarted).

Token: $HF_TOKEN, else the token saved by `hf auth login`. Endpoint: $HF_ENDPOINT, else
https://huggingface.co. Every Hub failure becomes a `HubAccessError` that says what to do:
FLUX.1-dev is gated, so a missing token or an unaccepted licence is the usual first error.
"""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import AbstractContextManager
from pathlib import Path

from pipeline.errors import WeightIntegrityError, WeightsError
from pipeline.weights.hub_errors import DEFAULT_ENDPOINT, HubRequest, hub_errors
from pipeline.weights.manifest import FileFacts, WeightManifest
from pipeline.weights.registry import Registry, RegistryFile, check_models, load_registry

OFFLINE_ADVICE = (
    "stage from a local folder or an s3:// mirror instead (`restyle weights pull <model> --to "
    "s3://...` on a machine that can reach the Hub)"
)
# One INFO line per HTTP request would drown the staging lines in every actor's log.
logging.getLogger("httpx2").setLevel(logging.WARNING)


class HubSource:
    """Registry files fetched from the Hub (or a Hub-compatible endpoint)."""

    def __init__(
        self,
        registry: Registry | None = None,
        endpoint: str | None = None,
        token: str | None = None,
    ):
        self.registry = registry if registry is not None else load_registry()
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self.token = token if token is not None else (os.environ.get("HF_TOKEN") or None)
        self.description = f"hf ({self.endpoint})"
        self.cache_key = (
            "hf"
            if self.endpoint == DEFAULT_ENDPOINT
            else "hf-"
            + "".join(ch if ch.isalnum() else "-" for ch in self.endpoint.split("://")[-1])
        )

    # ------------------------------------------------------------------ metadata
    def manifest(self, models: list[str]) -> WeightManifest:
        models = check_models(models)
        entries = self.registry.files_for(models)
        facts: dict[str, FileFacts] = {}
        for repo_id in dict.fromkeys(e.repo for e in entries):
            wanted = [e for e in entries if e.repo == repo_id]
            remote = self._paths_info(repo_id, [e.path for e in wanted])
            for entry in wanted:
                facts[entry.dest] = self._facts(entry, remote.get(entry.path))
        per_model = {m: [e.dest for e in self.registry.files_for([m])] for m in models}
        return WeightManifest(facts, per_model, source=self.description)

    def _paths_info(self, repo_id: str, paths: list[str]) -> dict:
        from huggingface_hub import HfApi

        repo = self.registry.repo(repo_id)
        with self._errors(repo_id, f"list files of {repo_id}"):
            infos = HfApi(endpoint=self.endpoint, token=self.token).get_paths_info(
                repo_id, paths, revision=repo.revision, token=self.token
            )
        return {info.path: info for info in infos}

    def _facts(self, entry: RegistryFile, remote) -> FileFacts:
        repo = self.registry.repo(entry.repo)
        if remote is None or not hasattr(remote, "size"):
            raise WeightsError(
                f"{entry.repo} has no file {entry.path} at revision {repo.revision} "
                f"(needed for {entry.dest}); the registry {self.registry.source} "
                "may be out of date"
            )
        lfs = getattr(remote, "lfs", None)
        sha256 = lfs.sha256 if lfs is not None else None
        for what, pinned, found in (
            ("size", entry.size, remote.size),
            ("sha256", entry.sha256, sha256),
        ):
            if pinned is not None and found is not None and pinned != found:
                raise WeightIntegrityError(
                    f"{entry.repo}/{entry.path}: the Hub reports {what} {found}, the registry "
                    f"{self.registry.source} pins {pinned}; the file changed upstream or the "
                    "registry is wrong: check before using it"
                )
        return FileFacts(
            size=remote.size,
            sha256=sha256 or entry.sha256,
            component=entry.component,
            git_sha1=None if lfs is not None else remote.blob_id,
        )

    # ------------------------------------------------------------------ download
    def fetch(self, path: str, target: Path) -> None:
        """Download registry file `path` (its dest) to `target` via a scratch folder."""
        from huggingface_hub import hf_hub_download

        entry = self.registry.by_dest().get(path)
        if entry is None:
            raise WeightsError(
                f"{path} is not a file of the weight registry {self.registry.source}"
            )
        repo = self.registry.repo(entry.repo)
        scratch = target.with_name(target.name + ".hub")
        try:
            with self._errors(entry.repo, f"download {entry.path} from {entry.repo}"):
                downloaded = hf_hub_download(
                    entry.repo,
                    entry.path,
                    revision=repo.revision,
                    local_dir=scratch,
                    endpoint=self.endpoint,
                    token=self.token,
                )
            os.replace(downloaded, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # ------------------------------------------------------------------ errors
    def _errors(self, repo_id: str, action: str) -> AbstractContextManager[None]:
        """Hub failures as `HubAccessError`s that say what to do (`pipeline.weights.hub_errors`)."""
        repo = self.registry.repo(repo_id)
        request = HubRequest(
            repo_id,
            repo.revision,
            self.endpoint,
            self.token,
            named_in="the registry",
            offline_advice=OFFLINE_ADVICE,
            licence_url=repo.licence_url,
        )
        return hub_errors(request, action)
