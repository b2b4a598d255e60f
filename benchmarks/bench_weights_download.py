"""Weights reaching a new node: parallel ranged download versus one stream per file.

    python benchmarks/bench_weights_download.py --mib 512 --repeats 2

One random file of `--mib` MiB is uploaded to a real SeaweedFS server on loopback (as a weights
mirror would hold a transformer file), then downloaded, in one process, by:
- one stream: `Storage.open_read` copied to disk, what `S3MirrorSource.fetch` did before;
- ranged: `Storage.download_file` (boto3's transfer manager, `DOWNLOAD_PART` ranges,
  `max_concurrency` in flight), what staging does now; once per `--concurrency` value.
Each download is checked byte-identical (sha256) before its MB/s counts; the best of
`--repeats` is reported, and the ratio ranged / one stream.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

MiB = 1024 * 1024


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def one_stream(storage, uri: str, target: Path) -> None:
    with storage.open_read(uri) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, 16 * MiB)


def ranged(storage, uri: str, target: Path) -> None:
    storage.download_file(uri, target)


def timed(fn, storage, uri: str, target: Path, expected: str, size: int, repeats: int) -> float:
    """Best MB/s of `repeats` downloads, each verified byte-identical."""
    best = 0.0
    for _ in range(repeats):
        target.unlink(missing_ok=True)
        t0 = time.perf_counter()
        fn(storage, uri, target)
        seconds = time.perf_counter() - t0
        if sha256_of(target) != expected:
            raise SystemExit(f"{fn.__name__}: the download is not byte-identical")
        best = max(best, size / 1e6 / seconds)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from support.s3_server import SeaweedS3Server

    from pipeline.storage import Storage

    with tempfile.TemporaryDirectory(prefix="bench-weights-") as tmp:
        work = Path(tmp)
        server = SeaweedS3Server.start(work / "s3")
        try:
            source = work / "transformer.safetensors"
            with open(source, "wb") as out:
                for _ in range(args.mib):
                    out.write(os.urandom(MiB))
            expected, size = sha256_of(source), source.stat().st_size
            uri = server.new_bucket("weights") + "/mirror/transformer.safetensors"
            server.storage().upload_file(uri, source)
            target = work / "staged.safetensors"
            figures: dict = {"mib": args.mib, "one_stream_mb_s": 0.0, "ranged": {}}
            figures["one_stream_mb_s"] = timed(
                one_stream, server.storage(), uri, target, expected, size, args.repeats
            )
            print(f"one stream: {figures['one_stream_mb_s']:.0f} MB/s", flush=True)
            for concurrency in args.concurrency:
                storage = Storage(
                    dataclasses.replace(server.settings(), max_concurrency=concurrency)
                )
                mb_s = timed(ranged, storage, uri, target, expected, size, args.repeats)
                ratio = mb_s / figures["one_stream_mb_s"]
                figures["ranged"][concurrency] = {"mb_s": mb_s, "ratio": ratio}
                print(
                    f"ranged, {concurrency} in flight: {mb_s:.0f} MB/s ({ratio:.2f}x)", flush=True
                )
        finally:
            server.stop()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
