"""`hf://owner/repo[@revision]`: an auxiliary model named by its Hugging Face Hub repo.

Parsed here, in the configuration layer, so a malformed one is refused with one line before
anything starts (and without importing huggingface_hub); `pipeline.weights.aux_hub` stages it.
The revision is a branch, a tag or a commit sha; it defaults to "main". The repo id follows the
Hub's own rules (`huggingface_hub.utils.validate_repo_id`): letters, digits, "-", "_" and ".",
no "--" or "..", not starting or ending with "-" or ".", at most 96 characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HUB_PREFIX = "hf://"
DEFAULT_REVISION = "main"
MAX_REPO_ID = 96
_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_REVISION = re.compile(r"[A-Za-z0-9_.\-/]+")
_COMMIT = re.compile(r"[0-9a-f]{40}")
FORM = "hf://owner/repo or hf://owner/repo@revision"


@dataclass(frozen=True)
class HubRef:
    repo: str
    revision: str = DEFAULT_REVISION

    @property
    def spec(self) -> str:
        return f"{HUB_PREFIX}{self.repo}@{self.revision}"

    @property
    def pinned(self) -> bool:
        """The revision is a full commit sha: what it names can never change."""
        return bool(_COMMIT.fullmatch(self.revision))


def is_hub(spec: str) -> bool:
    return spec.startswith(HUB_PREFIX)


def parse_hub_ref(spec: str) -> HubRef:
    """The repo and revision of `spec`; ValueError (one line, naming the spec) if malformed."""
    if not is_hub(spec):
        raise ValueError(f"{spec!r} is not a Hub model ({FORM})")
    repo, at, revision = spec[len(HUB_PREFIX) :].partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(_PART.fullmatch(p) for p in parts):
        raise ValueError(
            f"{spec!r}: {repo!r} is not a Hub repo id ({FORM}; letters, digits, '-', '_', '.')"
        )
    if "--" in repo or ".." in repo or len(repo) > MAX_REPO_ID:
        raise ValueError(
            f"{spec!r}: {repo!r} is not a Hub repo id (no '--' or '..', at most "
            f"{MAX_REPO_ID} characters)"
        )
    if at and (not _REVISION.fullmatch(revision) or ".." in revision or revision.startswith("/")):
        raise ValueError(
            f"{spec!r}: {revision!r} is not a revision (a branch, tag or commit sha after '@')"
        )
    return HubRef(repo, revision if at else DEFAULT_REVISION)
