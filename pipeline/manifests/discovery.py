"""Which manifest files a spec names: files, folders, globs and brace ranges, local or S3.

The result is sorted by URI and numbered, so the same spec always gives the same shard
indices (the output shard numbers). Folders are listed recursively and keep only manifest
files, skipping names that start with "." or "_" (temp files, Spark's _SUCCESS/_metadata).
"""

from __future__ import annotations

import posixpath

from pipeline.config.input_limits import InputLimits
from pipeline.manifests.items import (
    PARQUET,
    WEBDATASET,
    ManifestError,
    ManifestShard,
    OutsideLocalRootsError,
)
from pipeline.storage import Storage
from pipeline.storage.uris import canonical_uri, check_supported, has_wildcards, is_s3

EXTENSIONS = {
    ".parquet": PARQUET,
    ".pq": PARQUET,
    ".tar": WEBDATASET,
    ".tar.gz": WEBDATASET,
    ".tgz": WEBDATASET,
}


def manifest_format(uri: str) -> str | None:
    """ "parquet", "webdataset", or None for other files."""
    name = posixpath.basename(uri).lower()
    for extension, fmt in EXTENSIONS.items():
        if name.endswith(extension):
            return fmt
    return None


def _hidden(uri: str) -> bool:
    return posixpath.basename(uri).startswith((".", "_"))


def _is_pattern(spec: str) -> bool:
    return has_wildcards(spec) or ("{" in spec and "}" in spec)


def _files_of(spec: str, storage: Storage) -> list[str]:
    try:
        check_supported(spec)
    except ValueError as error:
        raise ManifestError(spec, str(error)) from None
    if _is_pattern(spec):
        matches = storage.glob(spec)
        files = [m for m in matches if manifest_format(m) and not _hidden(m)]
        if not files:
            shown = ", ".join(matches[:5]) + (" ..." if len(matches) > 5 else "")
            raise ManifestError(
                spec,
                "no manifest file (.parquet, .tar) matches this pattern"
                + (f"; it matched only: {shown}" if matches else ""),
            )
        return files
    # A spec ending in "/" names a folder, even where the store answers for the folder key
    # itself (SeaweedFS, or an S3 console "folder" marker object).
    if not spec.endswith("/") and storage.exists(spec):
        if manifest_format(spec) is None:
            raise ManifestError(
                spec,
                "not a manifest file: expected .parquet/.pq (Parquet) or "
                ".tar/.tar.gz/.tgz (WebDataset)",
            )
        return [spec]
    listed = storage.list(spec)
    files = [u for u in listed if manifest_format(u) and not _hidden(u)]
    if not files:
        raise ManifestError(
            spec,
            "no such manifest file or folder"
            if not listed
            else "this folder holds no manifest file (.parquet, .tar)",
        )
    return files


def check_local_roots(uri: str, limits: InputLimits | None) -> None:
    """Refuse a local manifest path outside `limits.local_roots` (symlinks followed), so a
    manifest from an untrusted source cannot name local files the run may not read."""
    if limits is None or not limits.local_roots or is_s3(uri) or limits.allows_local(uri):
        return
    raise OutsideLocalRootsError(
        uri,
        f"lies outside the allowed local roots (limits.local_roots: "
        f"{', '.join(limits.local_roots)})",
    )


def _in_run_folder(uri: str, storage: Storage) -> bool:
    """True for a file of a run folder: records and marker-named files at its top, caption and
    score sidecars one folder down (`outputs.layout`; a run folder holds run.json)."""
    parent = posixpath.dirname(uri.rstrip("/"))
    for folder in (parent, posixpath.dirname(parent)):
        if folder and storage.exists(f"{folder}/run.json"):
            return True
    return False


def list_shards(
    spec: str | list[str] | tuple[str, ...],
    storage: Storage,
    exclude: str | None = None,
    limits: InputLimits | None = None,
) -> list[ManifestShard]:
    """Every manifest file named by `spec` (one spec or several), sorted, numbered from 0.

    With `exclude` (the run's own folder), files under it and files of any other run folder
    (one holding a run.json) are never input: outputs written inside a manifest folder must not
    come back as new shards on the next run. With `limits.local_roots` set, a local spec or
    file outside those folders is refused (`OutsideLocalRootsError`) before it is read."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise ManifestError("<manifest>", "no manifest given")
    for s in specs:
        if not _is_pattern(str(s)):
            check_local_roots(str(s), limits)  # before the folder is even listed
    uris = sorted({uri for s in specs for uri in _files_of(str(s), storage)})
    for uri in uris:
        check_local_roots(uri, limits)  # a file of an allowed folder may link elsewhere
    if exclude is not None:
        folder = canonical_uri(exclude).rstrip("/") + "/"
        kept = [
            uri
            for uri in uris
            if not canonical_uri(uri).startswith(folder) and not _in_run_folder(uri, storage)
        ]
        if uris and not kept:
            raise ManifestError(
                ", ".join(map(str, specs)),
                f"every manifest file it names is an output of a run ({exclude} or another "
                "folder holding a run.json)",
            )
        uris = kept
    return [ManifestShard(index, uri, manifest_format(uri) or "") for index, uri in enumerate(uris)]
