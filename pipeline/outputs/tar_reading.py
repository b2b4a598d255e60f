"""Reading a committed WebDataset tar back, sample by sample (eval, report)."""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator

from pipeline.storage import Storage

IMAGE_EXTENSIONS = ("png", "jpg", "webp")


def tar_samples(
    storage: Storage, tar_uri: str, wanted: Callable[[str], bool] | None = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, extension -> bytes) of every sample of a WebDataset tar, streamed in order; with
    `wanted`, only the members whose extension it accepts are read (every sample still comes
    out, with what it has)."""
    with storage.open_read(tar_uri) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        key: str | None = None
        members: dict[str, bytes] = {}
        for member in tar:
            if not member.isfile():
                continue
            this_key, _, ext = member.name.rsplit("/", 1)[-1].partition(".")
            if key is not None and this_key != key:
                yield key, members
                members = {}
            key = this_key
            if wanted is not None and not wanted(ext):
                continue
            file = tar.extractfile(member)
            assert file is not None  # regular files always have data
            members[ext] = file.read()
        if key is not None:
            yield key, members
