"""ListObjectsV2 pages read straight from their XML, for listings of 10^5 objects and more.

Profiled at 10^4 shards (3 objects each), botocore's parse of the listing pages was 12.2 s of
a 17.7 s `restyle status` under cProfile: it turns every <Contents> into a dict through its
generic shape walker and parses every LastModified with dateutil (8.8 s). restyle wants only
each object's key and ETag (benchmarks/README.md: status and resume ~3x less CPU per shard).
So while `PageReader.reading()` is active on a thread, the
ListObjectsV2 calls made there still go through boto3 (signing, botocore's retries,
`S3Backend.call`'s budget and error translation are unchanged), but the body of a successful
response is parsed here with xml.etree and botocore is handed an empty body in its place.
The page is then found in the call's result under `PAGE`.

Keys are URL-decoded exactly as botocore does for the listings it requests with
`EncodingType=url` (`unquote_plus`), so a key with spaces, `&`, `+` or non-ASCII letters comes
out as boto3's paginator gives it (tested against SeaweedFS). A body this parser cannot read is
left to botocore, which parses it (or raises its own error) as before.
"""

from __future__ import annotations

import contextlib
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

PAGE = "RestyleListPage"  # where the page is in the call's result
EVENT = "before-parse.s3.ListObjectsV2"


@dataclass(frozen=True)
class ListPage:
    """What restyle uses of one ListObjectsV2 page."""

    entries: list[tuple[str, str]]  # (key, ETag as listed, quotes included)
    truncated: bool
    token: str | None  # NextContinuationToken


def parse_page(body: bytes) -> ListPage:
    """One ListObjectsV2 result; `ValueError` (or `ET.ParseError`) when it is not one."""
    root = ET.fromstring(body)
    if _local(root.tag) != "ListBucketResult":
        raise ValueError(f"not a ListBucketResult: <{root.tag}>")
    raw: list[tuple[str, str]] = []
    truncated, token, encoded = False, None, False
    for child in root:
        tag = _local(child.tag)
        if tag == "Contents":
            key = etag = ""
            for field in child:
                name = _local(field.tag)
                if name == "Key":
                    key = field.text or ""
                elif name == "ETag":
                    etag = field.text or ""
            raw.append((key, etag))
        elif tag == "IsTruncated":
            truncated = (child.text or "").strip().lower() == "true"
        elif tag == "NextContinuationToken":
            token = child.text or ""
        elif tag == "EncodingType":
            encoded = (child.text or "") == "url"
    entries = [(unquote_plus(key), etag) for key, etag in raw] if encoded else raw
    return ListPage(entries, truncated, token)


def _local(tag: str) -> str:
    """An element's name without its XML namespace."""
    return tag.rpartition("}")[2]


class PageReader:
    """The botocore event handler that parses ListObjectsV2 pages, for calls made on a thread
    inside `reading()` (any other call of the client is parsed by botocore as usual)."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        self._local.active = True
        try:
            yield
        finally:
            self._local.active = False

    def __call__(
        self, response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any
    ) -> None:
        if not getattr(self._local, "active", False) or response_dict.get("status_code") != 200:
            return
        body = response_dict.get("body")
        if not isinstance(body, bytes):
            return
        try:
            page = parse_page(body)
        except (ET.ParseError, ValueError):  # let botocore parse it, or say what is wrong
            return
        customized_response_dict[PAGE] = page
        response_dict["body"] = b""
