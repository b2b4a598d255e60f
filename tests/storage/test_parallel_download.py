"""`Storage.download_file`: a big object reaches local disk as parallel ranged GETs,
byte-identical, on the real S3 server; a local source is copied the same way."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest
from support.fault_proxy import FaultProxy

from pipeline.storage import Storage, StorageNotFoundError
from pipeline.storage.s3 import DOWNLOAD_PART

MiB = 1024 * 1024


def test_a_big_object_comes_down_in_ranged_parts_byte_identical(s3_server, s3_bucket, tmp_path):
    data = os.urandom(2 * DOWNLOAD_PART + 3 * MiB)  # three parts, the last one short
    uri = f"{s3_bucket}/weights/transformer.safetensors"
    s3_server.storage().write_bytes(uri, data)
    target = tmp_path / "staged" / "transformer.safetensors"
    target.parent.mkdir()
    with FaultProxy(s3_server.endpoint_url) as proxy:
        storage = Storage(
            dataclasses.replace(s3_server.settings(), endpoint_url=proxy.endpoint_url)
        )
        storage.download_file(uri, target)
        gets = [r for r in proxy.requests("GET") if "transformer" in r[1]]
        downloads = proxy.downloads("transformer")
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert len(gets) == 3  # one ranged GET per part, not one stream
    assert len(downloads) == 1  # ...and the proxy counts them as one download of the object
    assert os.listdir(target.parent) == ["transformer.safetensors"]  # no temp file left


def test_a_broken_part_is_retried_and_the_file_still_matches(s3_server, s3_bucket, tmp_path):
    data = os.urandom(2 * DOWNLOAD_PART)
    uri = f"{s3_bucket}/weights/vae.safetensors"
    s3_server.storage().write_bytes(uri, data)
    with FaultProxy(s3_server.endpoint_url) as proxy:
        storage = Storage(
            dataclasses.replace(s3_server.settings(max_attempts=3), endpoint_url=proxy.endpoint_url)
        )
        proxy.fail_next(1, 503, "SlowDown", method="GET")
        storage.download_file(uri, tmp_path / "vae.safetensors")
        assert "503 SlowDown" in [r[2] for r in proxy.requests("GET")]
    assert (tmp_path / "vae.safetensors").read_bytes() == data


def test_local_and_missing_sources(s3_bucket, s3_server, tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(b"weights" * 1000)
    Storage().download_file(str(source), tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    with pytest.raises(StorageNotFoundError):
        s3_server.storage().download_file(f"{s3_bucket}/absent.bin", tmp_path / "absent.bin")
    assert not (tmp_path / "absent.bin").exists()
