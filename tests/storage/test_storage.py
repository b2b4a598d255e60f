"""Storage against local folders and a real SeaweedFS S3 server: the same contract on both."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import multiprocessing
import os
import pickle
import random
import socket
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.fault_proxy import FaultProxy
from support.s3_server import SeaweedS3Server

from pipeline.storage import (
    Storage,
    StorageAuthError,
    StorageError,
    StorageNotFoundError,
    StorageSettings,
    join,
    parent,
    resolve,
)

MiB = 1024 * 1024


def payload(n: int, seed: int = 1) -> bytes:
    """Deterministic, incompressible bytes."""
    return random.Random(seed).randbytes(n)


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Storage, str]:
    """(storage, root URI): a tmp folder, or a fresh bucket on the real S3 server."""
    if request.param == "local":
        return Storage(StorageSettings()), str(tmp_path / "root")
    server: SeaweedS3Server = request.getfixturevalue("s3_server")
    return server.storage(), server.new_bucket("root") + "/data"


# ---------------------------------------------------------------------- both backends
def test_objects_round_trip(root: tuple[Storage, str]) -> None:
    storage, base = root
    uri = join(base, "a", "b.bin")
    data = payload(70_000)
    storage.write_bytes(uri, data)
    assert storage.read_bytes(uri) == data
    assert storage.exists(uri) and storage.size(uri) == len(data)
    with storage.open_read(uri) as stream:
        assert stream.read(10) == data[:10]
        assert stream.read() == data[10:]

    storage.write_bytes(uri, b"replaced")  # a second write replaces the object whole
    assert storage.read_bytes(uri) == b"replaced"

    storage.delete(uri)
    assert not storage.exists(uri)
    storage.delete(uri)  # deleting what is gone is not an error
    with pytest.raises(StorageNotFoundError, match=r"b.bin"):
        storage.read_bytes(uri)
    with pytest.raises(StorageNotFoundError):
        storage.size(uri)


def test_list_is_sorted_recursive_and_folder_scoped(root: tuple[Storage, str]) -> None:
    storage, base = root
    for name in [
        "run/part-000001.tar",
        "run/part-000000.tar",
        "run/retry-1/part-000000.tar",
        "run-old/part-000000.tar",
    ]:
        storage.write_bytes(join(base, name), b"x")
    expected = [
        join(base, n)
        for n in ["run/part-000000.tar", "run/part-000001.tar", "run/retry-1/part-000000.tar"]
    ]
    assert storage.list(join(base, "run")) == expected
    assert storage.list(join(base, "run") + "/") == expected
    assert storage.list(join(base, "nothing-here")) == []


def test_glob_wildcards_and_brace_ranges(root: tuple[Storage, str]) -> None:
    storage, base = root
    names = [f"shards/part-{i:06d}.tar" for i in range(12)] + [
        "shards/part-000003.parquet",
        "shards/nested/part-000000.tar",
        "other/x.tar",
    ]
    for name in names:
        storage.write_bytes(join(base, name), b"x")

    def g(pattern: str) -> list[str]:
        return [u[len(base) + 1 :] for u in storage.glob(join(base, pattern))]

    assert g("shards/part-{000002..000004}.tar") == [
        "shards/part-000002.tar",
        "shards/part-000003.tar",
        "shards/part-000004.tar",
    ]
    assert g("shards/part-{000010..000020}.tar") == [
        "shards/part-000010.tar",
        "shards/part-000011.tar",
    ]
    assert g("shards/*.tar") == [f"shards/part-{i:06d}.tar" for i in range(12)]  # not nested/
    assert g("shards/part-00000?.parquet") == ["shards/part-000003.parquet"]
    assert g("shards/part-00001[01].tar") == ["shards/part-000010.tar", "shards/part-000011.tar"]
    assert g("{shards,other}/*0.tar") == ["shards/part-000000.tar", "shards/part-000010.tar"]
    assert g("{other,shards}/[!p]*.tar") == ["other/x.tar"]
    assert g("**/part-000000.tar") == ["shards/nested/part-000000.tar", "shards/part-000000.tar"]
    assert g("other/x.tar") == ["other/x.tar"]
    assert g("missing-*.tar") == []


def test_upload_file_publishes_whole_file(root: tuple[Storage, str], tmp_path: Path) -> None:
    storage, base = root
    source = tmp_path / "big.bin"
    source.write_bytes(payload(3 * MiB))
    storage.upload_file(join(base, "up", "big.bin"), source)
    assert storage.read_bytes(join(base, "up", "big.bin")) == source.read_bytes()
    with pytest.raises(StorageNotFoundError, match="does not exist"):
        storage.upload_file(join(base, "up", "x.bin"), tmp_path / "absent.bin")


# ---------------------------------------------------------------------- local only
def test_local_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    storage = Storage(StorageSettings())
    target = tmp_path / "deep" / "folder" / "out.json"
    storage.write_bytes(str(target), b"{}")
    storage.write_bytes(str(target), b'{"a": 1}')
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]
    assert storage.read_bytes(f"file://{target}") == b'{"a": 1}'
    assert storage.read_bytes(target) == b'{"a": 1}'  # paths work as well as strings


def test_uri_helpers() -> None:
    assert join("s3://b/run/", "/part-1.tar") == "s3://b/run/part-1.tar"
    assert parent("s3://b/a/m.parquet") == "s3://b/a" and parent("s3://b/m.parquet") == "s3://b"
    assert resolve("../img/x.jpg", "s3://b/man/m.parquet") == "s3://b/img/x.jpg"
    assert resolve("s3://o/x.jpg", "/data/m.parquet") == "s3://o/x.jpg"
    assert resolve("img/x.jpg", "/data/m.parquet") == "/data/img/x.jpg"
    assert resolve("/abs/x.jpg", "s3://b/m.parquet") == "/abs/x.jpg"
    assert resolve("../x.jpg", "file:///data/m/m.parquet") == "file:///data/x.jpg"
    assert resolve("x.jpg", "m.parquet") == "x.jpg"
    with pytest.raises(ValueError, match="climbs above the bucket"):
        resolve("../../x.jpg", "s3://b/man/m.parquet")
    with pytest.raises(ValueError, match="unsupported URI scheme 'http'"):
        Storage(StorageSettings()).read_bytes("http://example.com/x.jpg")


# ---------------------------------------------------------------------- settings & secrets
def test_settings_never_show_credentials() -> None:
    settings = StorageSettings(endpoint_url="http://127.0.0.1:9").with_credentials(
        "AKIDSHOULDNOTSHOW", "SECRET-should-not-show", "TOKEN-should-not-show"
    )
    shown = [
        repr(settings),
        str(settings),
        json.dumps(settings.public_dict()),
        json.dumps(settings.to_dict()),
        json.dumps(dataclasses.asdict(settings), default=str),
        repr(Storage(settings)),
    ]
    for text in shown:
        for secret in ("AKIDSHOULDNOTSHOW", "SECRET-should-not-show", "TOKEN-should-not-show"):
            assert secret not in text
    assert settings.public_dict()["credentials"] == "explicit keys"
    assert pickle.loads(pickle.dumps(settings)) == settings  # travels to Ray actors intact


def test_settings_from_environment() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://generic:1",
        "AWS_ENDPOINT_URL_S3": "http://s3only:2",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_REGION": "eu-central-1",
        "AWS_ACCESS_KEY_ID": "AK",
        "AWS_SECRET_ACCESS_KEY": "SK",
        "AWS_PROFILE": "p",
    }
    settings = StorageSettings.from_env(env, max_attempts=7, region=None)
    assert settings.endpoint_url == "http://s3only:2"  # the S3-specific variable wins
    assert settings.region == "eu-central-1" and settings.profile == "p"
    assert settings.max_attempts == 7
    assert settings.credentials is not None and settings.credentials.secret_access_key == "SK"
    assert StorageSettings.from_env({}).credentials_source == "default AWS chain"
    with pytest.raises(
        ValueError, match="AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"
    ):
        StorageSettings.from_env({"AWS_ACCESS_KEY_ID": "AK"})
    with pytest.raises(TypeError, match="unknown storage setting"):
        StorageSettings.from_env({}, endpoint="http://x:1")
    with pytest.raises(ValueError, match="must not carry credentials"):
        StorageSettings(endpoint_url="http://user:pw@host:9000")
    with pytest.raises(ValueError, match="http\\(s\\)://host"):
        StorageSettings(endpoint_url="localhost:9000")


# ---------------------------------------------------------------------- S3 only
def test_a_small_whole_write_is_one_put_whatever_the_multipart_threshold(s3_server, s3_bucket):
    """A writer killed mid-way through a multipart upload leaves it open (and billed); an
    object under S3's smallest part gains nothing in parts, so it never goes in parts."""
    with FaultProxy(s3_server.endpoint_url) as proxy:
        settings = s3_server.settings(multipart_threshold_bytes=1)
        storage = Storage(dataclasses.replace(settings, endpoint_url=proxy.endpoint_url))
        storage.write_bytes(f"{s3_bucket}/_drivers/drivers/d.json", b'{"pid": 1}' * 100)
        assert [(m, "uploads" in p) for m, p, _ in proxy.requests() if "/d.json" in p] == [
            ("PUT", False)
        ]
        storage.write_bytes(f"{s3_bucket}/big.bin", payload(6 * MiB, seed=5))
        posts = [p for m, p, _ in proxy.requests("POST") if "big.bin" in p]
    assert len(posts) == 2  # above it, the threshold holds: create and complete an upload


def test_s3_multipart_upload_and_write(
    s3_server: SeaweedS3Server, s3_bucket: str, tmp_path: Path
) -> None:
    storage = s3_server.storage(multipart_threshold_bytes=5 * MiB, multipart_chunk_bytes=5 * MiB)
    source = tmp_path / "shard.tar"
    source.write_bytes(payload(12 * MiB, seed=3))
    storage.upload_file(f"{s3_bucket}/out/shard.tar", source)
    storage.write_bytes(f"{s3_bucket}/out/blob.bin", payload(11 * MiB, seed=4))
    assert storage.read_bytes(f"{s3_bucket}/out/shard.tar") == source.read_bytes()
    assert storage.read_bytes(f"{s3_bucket}/out/blob.bin") == payload(11 * MiB, seed=4)
    raw = s3_server.client()
    bucket = s3_bucket[len("s3://") :]
    for key, parts in (("out/shard.tar", 3), ("out/blob.bin", 3)):  # multipart ETag "md5-N"
        assert raw.head_object(Bucket=bucket, Key=key)["ETag"].strip('"').endswith(f"-{parts}")


def test_wrong_secret_is_a_clear_auth_error_without_the_secret(
    s3_server: SeaweedS3Server, s3_bucket: str
) -> None:
    good = s3_server.storage()
    good.write_bytes(f"{s3_bucket}/k.txt", b"x")
    wrong_secret = "wrong-secret-" + "z" * 20
    bad = Storage(
        StorageSettings(endpoint_url=s3_server.endpoint_url, max_attempts=3).with_credentials(
            s3_server.access_key, wrong_secret
        )
    )
    with pytest.raises(StorageAuthError) as info:
        bad.read_bytes(f"{s3_bucket}/k.txt")
    message = str(info.value)
    assert "SignatureDoesNotMatch" in message and f"{s3_bucket}/k.txt" in message
    assert "AWS_SECRET_ACCESS_KEY" in message  # says what to check
    assert wrong_secret not in message and s3_server.secret_key not in message
    assert not info.value.transient
    for call in (
        lambda: bad.exists(f"{s3_bucket}/k.txt"),
        lambda: bad.list(s3_bucket),
        lambda: bad.write_bytes(f"{s3_bucket}/new.txt", b"x"),
        lambda: bad.glob(f"{s3_bucket}/*.txt"),
    ):
        with pytest.raises(StorageAuthError):  # exists() must not answer False
            call()

    unknown = Storage(
        StorageSettings(endpoint_url=s3_server.endpoint_url).with_credentials(
            "NOSUCHKEYID", "whatever-secret"
        )
    )
    with pytest.raises(StorageAuthError, match="InvalidAccessKeyId") as info:
        unknown.read_bytes(f"{s3_bucket}/k.txt")
    assert "whatever-secret" not in str(info.value)


def test_missing_object_and_bucket_errors(s3_server: SeaweedS3Server, s3_bucket: str) -> None:
    storage = s3_server.storage()
    with pytest.raises(StorageNotFoundError, match="no such object") as info:
        storage.read_bytes(f"{s3_bucket}/absent.jpg")
    assert f"{s3_bucket}/absent.jpg" in str(info.value) and not info.value.transient
    with pytest.raises(StorageNotFoundError, match="bucket 'no-such-bucket-x1' does not exist"):
        storage.read_bytes("s3://no-such-bucket-x1/a.jpg")
    assert not storage.exists(f"{s3_bucket}/absent.jpg")
    assert not storage.exists("s3://no-such-bucket-x1/a.jpg")


def test_profile_credentials(
    s3_server: SeaweedS3Server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[restyle-test]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    storage = Storage(StorageSettings(endpoint_url=s3_server.endpoint_url, profile="restyle-test"))
    storage.write_bytes(f"{s3_bucket}/via-profile.txt", b"p")
    fs, path = storage.arrow_location(f"{s3_bucket}/via-profile.txt")
    with fs.open_input_stream(path) as stream:  # pyarrow gets the same credentials
        assert stream.read() == b"p"
    missing = Storage(StorageSettings(endpoint_url=s3_server.endpoint_url, profile="nope"))
    with pytest.raises(StorageError, match="AWS profile 'nope' not found"):
        missing.read_bytes(f"{s3_bucket}/via-profile.txt")


def test_pyarrow_filesystem_reads_and_writes_parquet(
    s3_server: SeaweedS3Server, s3_bucket: str
) -> None:
    storage = s3_server.storage()
    table = pa.table({"id": ["a", "b", "c"], "steps": [1, 2, 3]})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    storage.write_bytes(f"{s3_bucket}/m/part-0.parquet", sink.getvalue())

    fs = storage.pyarrow_filesystem()
    assert pq.read_table(f"{s3_bucket[5:]}/m/part-0.parquet", filesystem=fs).equals(table)
    fs, path = storage.arrow_location(f"{s3_bucket}/m/part-1.parquet")
    pq.write_table(table, path, filesystem=fs)
    assert pq.read_table(io.BytesIO(storage.read_bytes(f"{s3_bucket}/m/part-1.parquet"))).equals(
        table
    )


def test_storage_pickles_into_another_process(s3_server: SeaweedS3Server, s3_bucket: str) -> None:
    """What a Ray actor does: unpickle the Storage, build its own client, read and write."""
    storage = s3_server.storage()
    storage.write_bytes(f"{s3_bucket}/p.txt", b"from parent")
    storage.read_bytes(f"{s3_bucket}/p.txt")  # the parent's client exists and must not travel
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(storage.read_bytes, f"{s3_bucket}/p.txt").result() == b"from parent"
        pool.submit(storage.write_bytes, f"{s3_bucket}/c.txt", b"from child").result()
    assert storage.read_bytes(f"{s3_bucket}/c.txt") == b"from child"


# ---------------------------------------------------------------------- retries, for real
def _refusing_endpoint() -> str:
    """An http endpoint on loopback where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_unreachable_endpoint_is_retried_then_fails_clearly() -> None:
    settings = StorageSettings(
        endpoint_url=_refusing_endpoint(), max_attempts=3, connect_timeout_s=2, retry_budget_s=0
    ).with_credentials("AK", "SECRET-XYZ")
    with pytest.raises(StorageError) as info:
        Storage(settings).read_bytes("s3://bucket/a/b.jpg")
    error = info.value
    assert error.transient and error.attempts == 3 and error.operation == "read"
    assert "could not connect to the endpoint" in str(error)
    assert "gave up after 3 attempts" in str(error) and "SECRET-XYZ" not in str(error)


def test_slowdown_is_retried_until_the_server_recovers(
    s3_server: SeaweedS3Server, s3_bucket: str
) -> None:
    s3_server.storage().write_bytes(f"{s3_bucket}/obj.bin", payload(1000))
    with FaultProxy(s3_server.endpoint_url) as proxy:
        settings = dataclasses.replace(
            s3_server.settings(max_attempts=3), endpoint_url=proxy.endpoint_url
        )
        storage = Storage(settings)
        proxy.fail_next(2, 503, "SlowDown", method="GET")
        assert storage.read_bytes(f"{s3_bucket}/obj.bin") == payload(1000)
        assert [r[2] for r in proxy.requests("GET")] == [
            "503 SlowDown",
            "503 SlowDown",
            "forwarded",
        ]

        proxy.fail_next(1, 500, "InternalError", method="PUT")
        storage.write_bytes(f"{s3_bucket}/new.bin", b"n")
        assert [r[2] for r in proxy.requests("PUT")] == ["500 InternalError", "forwarded"]


def test_persistent_5xx_gives_up_after_max_attempts(
    s3_server: SeaweedS3Server, s3_bucket: str
) -> None:
    with FaultProxy(s3_server.endpoint_url) as proxy:
        storage = Storage(  # no retry budget: botocore's burst of max_attempts only
            dataclasses.replace(
                s3_server.settings(max_attempts=3, retry_budget_s=0),
                endpoint_url=proxy.endpoint_url,
            )
        )
        proxy.fail_next(10, 503, "SlowDown")
        with pytest.raises(StorageError) as info:
            storage.write_bytes(f"{s3_bucket}/x.bin", b"x")
        assert info.value.transient and info.value.attempts == 3
        assert "SlowDown" in str(info.value) and "gave up after 3 attempts" in str(info.value)
        assert len(proxy.requests()) == 3


def test_auth_errors_are_not_retried(s3_server: SeaweedS3Server, s3_bucket: str) -> None:
    with FaultProxy(s3_server.endpoint_url) as proxy:
        storage = Storage(
            StorageSettings(endpoint_url=proxy.endpoint_url, max_attempts=5).with_credentials(
                s3_server.access_key, "not-the-secret"
            )
        )
        with pytest.raises(StorageAuthError):
            storage.read_bytes(f"{s3_bucket}/x.bin")
        assert len(proxy.requests()) == 1


def test_broken_download_resumes_where_it_stopped(
    s3_server: SeaweedS3Server, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = payload(3 * MiB, seed=9)
    s3_server.storage().write_bytes(f"{s3_bucket}/big.bin", data)
    with FaultProxy(s3_server.endpoint_url) as proxy:
        settings = dataclasses.replace(
            s3_server.settings(max_attempts=3, retry_base_delay_s=0.05, retry_budget_s=0),
            endpoint_url=proxy.endpoint_url,
        )
        storage = Storage(settings)
        proxy.cut_next(2, after_bytes=MiB)
        with caplog.at_level(logging.WARNING, logger="pipeline.storage"):
            assert storage.read_bytes(f"{s3_bucket}/big.bin") == data
        gets = proxy.requests("GET")
        assert [g[2] for g in gets] == [f"cut after {MiB} bytes"] * 2 + ["forwarded"]
        assert "stream broke" in caplog.text and s3_server.secret_key not in caplog.text

        proxy.cut_next(3, after_bytes=0)  # no progress on any attempt: a clear final error
        with (
            pytest.raises(StorageError) as info,
            storage.open_read(f"{s3_bucket}/big.bin") as stream,
        ):
            stream.read()
        assert info.value.transient and info.value.attempts == 3


def test_glob_on_s3_lists_each_folder_once(s3_server: SeaweedS3Server, s3_bucket: str) -> None:
    storage = s3_server.storage()
    for i in range(3):
        storage.write_bytes(f"{s3_bucket}/m/part-{i:06d}.tar", b"x")
    with FaultProxy(s3_server.endpoint_url) as proxy:
        via_proxy = Storage(
            dataclasses.replace(s3_server.settings(), endpoint_url=proxy.endpoint_url)
        )
        found = via_proxy.glob(f"{s3_bucket}/m/part-{{000000..000999}}.tar")
        assert found == [f"{s3_bucket}/m/part-{i:06d}.tar" for i in range(3)]
        assert len(proxy.requests()) == 1  # one listing, not a thousand HEADs


def test_no_stray_environment_credentials_leak_into_error_text(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-value")
    monkeypatch.setenv("AWS_ENDPOINT_URL", _refusing_endpoint())
    # keys from the environment; no retry budget: the endpoint refuses every connection
    storage = Storage(StorageSettings.from_env(max_attempts=1, retry_budget_s=0))
    with caplog.at_level(logging.DEBUG, logger="pipeline"), pytest.raises(StorageError) as info:
        storage.exists("s3://bucket/key")
    assert "env-secret-value" not in str(info.value) and "env-secret-value" not in caplog.text
    assert storage.settings.public_dict()["credentials"] == "explicit keys"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in repr(storage)


def test_published_files_are_readable_as_the_umask_allows(tmp_path):
    """A temp file is private (0600); the published file gets what open() would give it."""
    import os
    import stat

    storage = Storage(StorageSettings())
    mask = os.umask(0o022)
    os.umask(mask)
    storage.write_bytes(str(tmp_path / "a" / "written.json"), b"{}")
    source = tmp_path / "source.tar"
    source.write_bytes(b"tar")
    storage.upload_file(str(tmp_path / "a" / "uploaded.tar"), source)
    for name in ("written.json", "uploaded.tar"):
        mode = stat.S_IMODE((tmp_path / "a" / name).stat().st_mode)
        assert mode == 0o666 & ~mask, (name, oct(mode))
