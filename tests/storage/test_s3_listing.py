"""S3 listings parsed from the page XML (`pipeline.storage.s3_listing`) give exactly what boto3's
own paginator gives, on a real SeaweedFS server, over several pages and awkward keys."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.fault_proxy import FaultProxy
from support.s3_server import SeaweedS3Server

from pipeline.outputs import run_state
from pipeline.outputs.run_state import RunState
from pipeline.storage import Storage
from pipeline.storage.s3_listing import PAGE, PageReader, parse_page
from pipeline.storage.uris import split_s3

# Keys S3 must URL-encode in a listing, or that XML must escape.
AWKWARD = [
    "with space.json",
    "a&b.json",
    "plus+sign.json",
    "percent%20literal.json",
    "caf\u00e9 \u2013 \u65e5\u672c.json",
    "quote\"and'apostrophe.json",
    "less<greater>.json",
    "tilde~star*.json",
    "emoji-\U0001f600.json",
]


def paginator_entries(server: SeaweedS3Server, prefix: str, delimiter: str | None):
    """(URI, ETag) as boto3's paginator lists them, sorted as `Storage.list_versioned`."""
    bucket, key = split_s3(prefix)
    kwargs = {"Bucket": bucket, "Prefix": key + "/"}
    if delimiter:
        kwargs["Delimiter"] = delimiter
    pages = server.client().get_paginator("list_objects_v2").paginate(**kwargs)
    return sorted(
        (f"s3://{bucket}/{entry['Key']}", entry["ETag"])
        for page in pages
        for entry in page.get("Contents", [])
    )


@pytest.fixture(scope="module")
def many_objects(s3_server: SeaweedS3Server) -> str:
    """A run-like folder of 2,113 objects (3 listing pages): 700 shards' tar, records and
    marker, awkward names spread over the pages, and objects in sub-folders."""
    root = s3_server.new_bucket("listing") + "/run"
    storage = s3_server.storage()
    names = [
        f"part-{k:06d}{end}" for k in range(700) for end in (".tar", ".parquet", ".stats.json")
    ]
    names += [
        f"part-{k:06d}-{name}" for k, name in zip((0, 333, 334, 699), AWKWARD[:4], strict=True)
    ]
    names += AWKWARD[4:]
    names += [f"sub/{name}" for name in AWKWARD[:3]] + ["sub/deeper/x.json"]

    def put(name: str) -> None:
        storage.write_bytes(f"{root}/{name}", name.encode())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, names))
    return root


@pytest.mark.parametrize("recursive", [True, False])
def test_listing_matches_boto3_paginator_over_pages_and_awkward_keys(
    s3_server: SeaweedS3Server, many_objects: str, recursive: bool
) -> None:
    listed = s3_server.storage().list_versioned(many_objects, recursive=recursive)
    expected = paginator_entries(s3_server, many_objects, None if recursive else "/")
    assert listed == expected
    assert len(listed) == (2_113 if recursive else 2_109)
    keys = {uri.removeprefix(many_objects + "/") for uri, _ in listed}
    assert set(AWKWARD[4:]) <= keys
    assert ("sub/a&b.json" in keys) is recursive
    assert all(etag.startswith('"') and etag.endswith('"') for _, etag in listed)


def test_listing_pages_are_parsed_by_restyle_not_botocore(
    s3_server: SeaweedS3Server, many_objects: str
) -> None:
    """The pages of `iter_entries` come from the XML parser (botocore is handed an empty body),
    while a plain ListObjectsV2 call on the same client is parsed by botocore as before."""
    storage = s3_server.storage()
    backend = storage._s3
    bucket, key = split_s3(many_objects)
    client = backend.client()
    with backend._pages.reading():
        page = client.list_objects_v2(Bucket=bucket, Prefix=key + "/")
    assert "Contents" not in page and len(page[PAGE].entries) == 1000 and page[PAGE].truncated
    plain = client.list_objects_v2(Bucket=bucket, Prefix=key + "/")
    assert PAGE not in plain and len(plain["Contents"]) == 1000
    assert [(c["Key"], c["ETag"]) for c in plain["Contents"]] == page[PAGE].entries


@pytest.mark.parametrize("recursive", [True, False])
def test_a_listing_cut_in_ranges_lists_the_same_objects(
    s3_server: SeaweedS3Server, many_objects: str, recursive: bool
) -> None:
    """Cuts anywhere (before every key, on a key, inside a shard's names, between awkward
    keys, past every key, repeated, unsorted) change how the folder is listed, not what."""
    storage = s3_server.storage()
    cuts = ["part-000100", "!", "part-000333.tar", "part-000333.parquet", "part-000334-"]
    cuts += ["part-000500", "part-000100", "with", "\u00ff", "~~~", "sub/", "sub/a&b.json"]
    whole = storage.list_versioned(many_objects, recursive=recursive)
    assert storage.list_versioned(many_objects, recursive=recursive, cuts=cuts) == whole


def test_run_listing_cut_by_shards_is_the_one_listing(
    s3_server: SeaweedS3Server, many_objects: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run folder listed in ranges of 100 shards (7 ranges, listed concurrently) holds the
    same markers, versions, tars and records as one listing."""
    storage = s3_server.storage()
    whole = RunState(storage, many_objects).listing()
    monkeypatch.setattr(run_state, "SHARDS_PER_RANGE", 100)
    with FaultProxy(s3_server.endpoint_url) as proxy:
        settings = dataclasses.replace(s3_server.settings(), endpoint_url=proxy.endpoint_url)
        ranged = RunState(Storage(settings), many_objects).listing(shards=700)
        listings = [path for _, path, _ in proxy.requests("GET") if "list-type=2" in path]
    assert ranged == whole and len(whole.markers) == len(whole.records) == 700
    assert len(listings) == 7 and sum("start-after" in path for path in listings) == 6


def test_listing_resumes_its_pages_through_server_errors(
    s3_server: SeaweedS3Server, many_objects: str
) -> None:
    """Every page is still one retried call: 503s on the listing cost retries, not entries."""
    with FaultProxy(s3_server.endpoint_url) as proxy:
        settings = s3_server.settings(max_attempts=3)
        storage = Storage(dataclasses.replace(settings, endpoint_url=proxy.endpoint_url))
        pages = storage._s3.iter_entries(*split_s3(many_objects + "/"))
        first = [next(pages) for _ in range(1000)]  # the first page
        proxy.fail_next(2, 503, "SlowDown", method="GET")
        listed = sorted(
            (f"s3://{split_s3(many_objects)[0]}/{key}", etag) for key, etag in [*first, *pages]
        )
        outcomes = [r[2] for r in proxy.requests("GET")]
    assert listed == paginator_entries(s3_server, many_objects, None)
    assert outcomes == ["forwarded", "503 SlowDown", "503 SlowDown", "forwarded", "forwarded"]


def test_page_without_namespace_or_encoding_and_one_that_is_not_a_listing() -> None:
    page = parse_page(
        b"<ListBucketResult><IsTruncated>false</IsTruncated>"
        b"<Contents><Key>a b+c.json</Key><ETag>&quot;e1&quot;</ETag><Size>3</Size></Contents>"
        b"<Contents><Key></Key><ETag>&quot;e2&quot;</ETag></Contents></ListBucketResult>"
    )
    assert page.entries == [("a b+c.json", '"e1"'), ("", '"e2"')]
    assert not page.truncated and page.token is None
    with pytest.raises(ValueError, match="not a ListBucketResult"):
        parse_page(b"<Error><Code>SlowDown</Code></Error>")

    reader = PageReader()
    for body in (b"<ListBucketResult><unclosed>", b"<Error/>"):
        response, custom = {"status_code": 200, "body": body}, {}
        with reader.reading():
            reader(response_dict=response, customized_response_dict=custom)
        assert response["body"] == body and custom == {}  # left to botocore
    response, custom = {"status_code": 200, "body": b"<ListBucketResult/>"}, {}
    reader(response_dict=response, customized_response_dict=custom)  # not inside reading()
    assert response["body"] == b"<ListBucketResult/>" and custom == {}
