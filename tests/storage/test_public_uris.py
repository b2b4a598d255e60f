"""What outputs record of a URI: absolute local paths, other URIs as given, never credentials."""

from __future__ import annotations

import os

from pipeline.storage.uris import public_uri, without_credentials


def test_local_paths_become_absolute_and_lose_file_scheme(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert public_uri("out/run/part-000000.tar") == str(tmp_path / "out/run/part-000000.tar")
    assert public_uri("file:///data/x.png") == "/data/x.png"
    assert public_uri("~/x.png") == os.path.expanduser("~/x.png")


def test_credentials_never_survive():
    assert public_uri("s3://bucket/a/b.tar") == "s3://bucket/a/b.tar"
    assert public_uri("s3://AKIA:secret@bucket/a.tar") == "s3://bucket/a.tar"
    assert without_credentials("https://user:pw@host:8080/x.png") == "https://host:8080/x.png"
    assert without_credentials("https://host/a@b.png") == "https://host/a@b.png"
