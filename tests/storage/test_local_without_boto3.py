"""A run that reads and writes only local paths never needs boto3: the lent GPU machines of the
device check have none, and a local catalog should not pay for importing it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from support.paths import REPO


def test_local_storage_and_the_shard_path_import_and_work_without_boto3(tmp_path: Path):
    script = textwrap.dedent(
        f"""
        import sys
        for name in ("boto3", "botocore", "s3transfer", "ray"):
            sys.modules[name] = None  # any import of them now raises ImportError
        import pipeline.outputs.commit, pipeline.processing.shard, pipeline.manifests
        from pipeline.storage import Storage, StorageSettings
        storage = Storage(StorageSettings())
        uri = {str(tmp_path / "a" / "b.txt")!r}
        storage.write_bytes(uri, b"local")
        assert storage.read_bytes(uri) == b"local" and storage.exists(uri)
        assert storage.list({str(tmp_path / "a")!r}) == [uri]
        try:
            storage.exists("s3://bucket/key")
        except ImportError as error:
            print("s3 needs boto3:", error)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "s3 needs boto3" in done.stdout  # only an s3:// URI reaches for it
