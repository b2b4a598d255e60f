"""WebDataset manifests: tar shards streamed member by member through `Storage.open_read`.

A sample is the run of adjacent members sharing a key (WebDataset's rule: the key is the path
up to the first dot of the file name, `webdataset.tariterators.base_plus_ext`). Per sample:

    <key>.json              the row's fields (same names as the Parquet columns), optional
    <key>.txt               the prompt, when the json has none
    <key>.subject.<ext>     the subject image, inline
    <key>.style<N>.<ext>    style images, inline, ordered by N (style0, style1, ...;
                            a bare <key>.style.<ext> counts as style0)

The id is the json's "id", else the key. Image URIs in the json resolve against the tar's
folder. Any other member (`<key>.png`, `<key>.png.json`, ...) is an error of its sample, never a
sample silently generated without it. A member larger than `limits.max_member_bytes` (its
header's size, after decompression) is that sample's error and is skipped, not read. Nothing is
shelled out: the tar is read as a stream.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from typing import Any

from pipeline.config.input_limits import DEFAULT_LIMITS
from pipeline.manifests.items import ManifestError, RowError
from pipeline.storage import Storage

STYLE_MEMBER = re.compile(r"^style(\d*)\.[^.]+$")
SUBJECT_MEMBER = re.compile(r"^subject\.[^.]+$")
_KEY_AND_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's `base_plus_ext` rule


def base_plus_ext(path: str) -> tuple[str | None, str | None]:
    """(key, extensions) of a member name, split at the first dot of its file name, exactly as
    `webdataset.tariterators.base_plus_ext` does (importing webdataset would import torch)."""
    match = _KEY_AND_EXT.match(path)
    if not match:
        return None, None
    return match.group(1), match.group(2)


KNOWN_MEMBERS = "json, txt, subject.<ext>, style<N>.<ext>"


def known_member(suffix: str) -> bool:
    """True for the member names the schema defines (after `<key>.`)."""
    return suffix in ("json", "txt") or bool(
        SUBJECT_MEMBER.match(suffix) or STYLE_MEMBER.match(suffix)
    )


def _sample_row(
    key: str, members: dict[str, bytes], uri: str, row: int
) -> tuple[dict[str, Any], dict[str, str], list[RowError]]:
    """(raw row dict, field -> member label for messages, problems found in the members)."""
    problems: list[RowError] = []
    raw: dict[str, Any] = {}
    if "json" in members:
        try:
            parsed = json.loads(members["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            problems.append(
                RowError(uri, row, f"{key}.json", f"not valid UTF-8 JSON: {error}", key)
            )
            parsed = {}
        if not isinstance(parsed, dict):
            problems.append(
                RowError(
                    uri,
                    row,
                    f"{key}.json",
                    f"must hold a JSON object, got {type(parsed).__name__}",
                    key,
                )
            )
            parsed = {}
        raw.update(parsed)
    raw.setdefault("id", key)
    item_id = raw["id"] if isinstance(raw["id"], str) else key
    if raw.get("prompt") is None and "txt" in members:
        try:
            raw["prompt"] = members["txt"].decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as error:
            problems.append(RowError(uri, row, f"{key}.txt", f"not valid UTF-8: {error}", item_id))

    labels: dict[str, str] = {}
    styles: dict[int, tuple[str, bytes]] = {}
    for suffix, data in members.items():
        if SUBJECT_MEMBER.match(suffix):
            if "subject_bytes" in raw:
                problems.append(
                    RowError(
                        uri, row, f"{key}.{suffix}", "more than one subject image member", item_id
                    )
                )
            raw["subject_bytes"] = data
            labels["subject_bytes"] = f"{key}.{suffix}"
        elif match := STYLE_MEMBER.match(suffix):
            index = int(match.group(1) or 0)
            if index in styles:
                problems.append(
                    RowError(
                        uri,
                        row,
                        f"{key}.{suffix}",
                        f"style index {index} also given by {key}.{styles[index][0]}",
                        item_id,
                    )
                )
            styles[index] = (suffix, data)
    if styles:
        order = sorted(styles)
        raw["style_bytes"] = [styles[i][1] for i in order]
        labels["style_bytes"] = f"{key}.style*"
        for position, index in enumerate(order):
            labels[f"style_bytes[{position}]"] = f"{key}.{styles[index][0]}"
    if "subject" in raw and "subject_bytes" in raw:
        labels["subject"] = f"subject ({key}.json and {labels['subject_bytes']})"
    if raw.get("styles") and styles:
        labels["styles"] = f"styles ({key}.json and {key}.style*)"
    return raw, labels, problems


def open_tar(stream: Any, uri: str) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=stream, mode="r|*")  # a stream: no seeking, any compression
    except tarfile.TarError as error:
        raise ManifestError(uri, f"not a readable tar archive: {error}") from error


def sample_member_infos(archive: tarfile.TarFile) -> Iterator[tuple[str, str, tarfile.TarInfo]]:
    """(sample key, member suffix, info) of every file that belongs to a sample."""
    for info in archive:
        if info.isfile():
            key, suffix = base_plus_ext(info.name)
            if key is not None and suffix is not None:  # no extension, or a dot-file: no sample
                yield key, suffix, info


def read_webdataset_rows(
    uri: str, storage: Storage, max_member_bytes: int = DEFAULT_LIMITS.max_member_bytes
) -> Iterator[tuple[int, dict[str, Any], dict[str, str], list[RowError]]]:
    """(sample index, raw row, labels, member problems) for every sample of one tar shard."""
    with storage.open_read(uri) as stream, open_tar(stream, uri) as archive:
        row: int = 0
        key: str | None = None
        members: dict[str, bytes] = {}
        duplicates: list[str] = []
        refused: list[tuple[str, str]] = []  # (member suffix, why it was not read)
        try:
            for member_key, suffix, info in sample_member_infos(archive):
                if member_key != key:  # the previous sample is complete: hand it out first
                    if key is not None:
                        yield _finish(key, members, duplicates, refused, uri, row)
                        row += 1
                    key, members, duplicates, refused = member_key, {}, [], []
                if not known_member(suffix):
                    refused.append((suffix, f"unknown member (the schema knows {KNOWN_MEMBERS})"))
                    continue
                if info.size > max_member_bytes:
                    refused.append(
                        (
                            suffix,
                            f"{info.size} bytes, larger than the {max_member_bytes}-byte "
                            "budget (limits.max_member_bytes)",
                        )
                    )
                    continue
                file = archive.extractfile(info)
                assert file is not None  # regular files always have data
                with file:
                    data = file.read()
                if suffix in members:
                    duplicates.append(suffix)
                members[suffix] = data
        except (tarfile.TarError, EOFError) as error:
            raise ManifestError(
                uri, f"corrupt or truncated tar after sample {row}: {error}"
            ) from error
        if key is not None:
            yield _finish(key, members, duplicates, refused, uri, row)


def _finish(
    key: str,
    members: dict[str, bytes],
    duplicates: list[str],
    refused: list[tuple[str, str]],
    uri: str,
    row: int,
) -> tuple[int, dict[str, Any], dict[str, str], list[RowError]]:
    raw, labels, problems = _sample_row(key, members, uri, row)
    item_id = raw["id"] if isinstance(raw.get("id"), str) else key
    for suffix in duplicates:
        problems.append(
            RowError(uri, row, f"{key}.{suffix}", "member appears twice in the sample", item_id)
        )
    for suffix, why in refused:
        problems.append(RowError(uri, row, f"{key}.{suffix}", why, item_id))
    return row, raw, labels, problems


def count_samples(uri: str, storage: Storage) -> int:
    """Samples in one tar shard: one streaming pass over member headers (data is skipped)."""
    count, key = 0, None
    with storage.open_read(uri) as stream, open_tar(stream, uri) as archive:
        try:
            for member_key, _, _ in sample_member_infos(archive):
                if member_key != key:
                    count, key = count + 1, member_key
        except (tarfile.TarError, EOFError) as error:
            raise ManifestError(
                uri, f"corrupt or truncated tar after sample {count}: {error}"
            ) from error
    return count
