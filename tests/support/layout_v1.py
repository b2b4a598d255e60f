"""A run folder exactly as restyle wrote it before output layout 2 (for `restyle migrate` tests):
the same object names, record schema, marker fields and provenance shape as that code, with
real PNG images. Generated, so no binary fixture is committed.

    run.json                         no "layout"; references as given (relative)
    part-000000.{tar,parquet,stats.json}
    part-000000.captions.parquet     caption sidecar beside the shard
    retry-01/part-000000.{tar,parquet,stats.json,captions.parquet}
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from support.run_helpers import png_bytes

from pipeline.config import RunConfig

V1_RECORDS = pa.schema(
    [
        ("id", pa.string()),
        ("key", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("attempts", pa.int32()),
        ("seed", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("steps", pa.int32()),
        ("guidance", pa.float64()),
        ("prompt", pa.string()),
        ("caption", pa.string()),
        ("output_key", pa.string()),
        ("input_shard", pa.string()),
        ("input_row", pa.int64()),
        ("read_s", pa.float64()),
        ("model_s", pa.float64()),
        ("encode_s", pa.float64()),
        ("scores", pa.map_(pa.string(), pa.float64())),
    ]
)
WEIGHTS = {
    "flux1-dev/flux1-dev.safetensors": "a" * 64,
    "omniconsistency/lora.safetensors": "b" * 64,
}
MANIFEST = "manifests/part-0.parquet"  # relative, as given on the command line


def provenance(item_id: str, row: int, lora: str | None, scores: dict | None) -> dict:
    parameters = {
        "model": "omniconsistency",
        "prompt": "a house",
        "seed": 7 + row,
        "width": 64,
        "height": 48,
        "requested_width": 64,
        "requested_height": 48,
        "steps": 2,
        "guidance": 3.5,
        "noise": "torch.randn",
        "cond_size": 512,
        "dtype": "torch.float32",
        "fp8": False,
        "compile": False,
        "fuse_lora": False,
        "random_weights": False,
        "mu": 0.5,
        "batch_size": 1,
        "style_lora": None if lora is None else {"name": lora, "file": f"{lora}.safetensors"},
    }
    return {
        "scores": scores,
        "id": item_id,
        "run": "old",
        "fingerprint": "f00d",
        "model": "omniconsistency",
        "weights": WEIGHTS,
        "random_weights": False,
        "parameters": parameters,
        "prompt": "a house",
        "caption": "a house",
        "subject": "images/img0.png",
        "styles": [],
        "style_lora": None
        if lora is None
        else {"name": lora, "source": lora, "scale": 1.0, "sha256": "c" * 64},
        "source": {"manifest": MANIFEST, "row": row},
        "extra": {} if row else {"sku": 1},
        "code_version": "restyle 0.1.0",
    }


def tar_bytes(samples: dict[str, dict]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key, prov in samples.items():
            for ext, data in (
                ("json", json.dumps(prov, sort_keys=True, indent=1).encode()),
                ("png", png_bytes(len(key))),
                ("txt", b"a house"),
            ):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def parquet(rows: list[dict], schema: pa.Schema) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer)
    return buffer.getvalue()


def record(item_id: str, row: int, run_uri: str, tar: str | None, **fields) -> dict:
    return {
        "id": item_id,
        "key": item_id,
        "status": "ok",
        "attempts": 1,
        "seed": 7 + row,
        "prompt": "a house",
        "output_key": None if tar is None else f"{run_uri}/{tar}#{item_id}",
        "input_shard": MANIFEST,
        "input_row": row,
        **fields,
    }


def marker(retry_of: list[int], count: int, ok: int) -> bytes:
    return json.dumps(
        {
            "shard": 0,
            "input_shard": MANIFEST,
            "run": "old",
            "fingerprint": "f00d",
            "count": count,
            "ok": ok,
            "failed": count - ok,
            "skipped": 0,
            "errors": {},
            "error_messages": {},
            "wall_s": 1.0,
            "model_s": 0.5,
            "read_s": 0.1,
            "encode_s": 0.1,
            "upload_s": 0.1,
            "images_per_s": 1.0,
            "started_at": 1.0,
            "finished_at": 2.0,
            "weights": WEIGHTS,
            "code_version": "restyle 0.1.0",
            "worker": {"host": "h", "pid": 1},
            "retry_of": retry_of,
        }
    ).encode()


def captions(keys: list[str]) -> bytes:
    schema = pa.schema([("key", pa.string()), ("id", pa.string()), ("caption", pa.string())])
    table = pa.Table.from_pylist([{"key": k, "id": k, "caption": "words"} for k in keys], schema)
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({"caption_model": "tiny"}), buffer)
    return buffer.getvalue()


def write_v1_run(base: Path, run_uri: str = "out/old") -> Path:
    """A layout-1 OmniConsistency run under `base` whose references are relative to `base`:
    items a (style LoRA), b (failed, then ok in retry-01), c (no LoRA)."""
    run = base / run_uri
    (run / "retry-01").mkdir(parents=True)
    (base / "images").mkdir(exist_ok=True)
    (base / "images" / "img0.png").write_bytes(png_bytes(0))
    (base / "manifests").mkdir(exist_ok=True)
    (base / "manifests" / "part-0.parquet").write_bytes(
        parquet([{"id": "a"}], pa.schema([("id", pa.string())]))
    )
    config = RunConfig(manifest=("manifests",), output="out", run="old", model="omniconsistency")
    run_json = {
        "config": config.public_dict(),
        "fingerprint": "f00d",
        "fingerprint_fields": {},
        "weights": WEIGHTS,
        "random_weights": False,
        "input_shards": [MANIFEST],
        "storage": {},
        "code_version": "restyle 0.1.0",
        "created_at": 0.0,
    }
    (run / "run.json").write_text(json.dumps(run_json))
    (run / "part-000000.tar").write_bytes(
        tar_bytes(
            {
                "a": provenance("a", 0, "Ghibli", {"clip_t": 0.3}),
                "c": provenance("c", 2, None, None),
            }
        )
    )
    main_records = [
        record("a", 0, run_uri, "part-000000.tar", scores=[("clip_t", 0.3)]),
        record("b", 1, run_uri, None, status="io_error", error="item 'b': missing"),
        record("c", 2, run_uri, "part-000000.tar"),
    ]
    (run / "part-000000.parquet").write_bytes(parquet(main_records, V1_RECORDS))
    (run / "part-000000.stats.json").write_bytes(marker([], 3, 2))
    (run / "part-000000.captions.parquet").write_bytes(captions(["a", "c"]))
    retry = run / "retry-01"
    (retry / "part-000000.tar").write_bytes(tar_bytes({"b": provenance("b", 1, "Ghibli", None)}))
    retried = [record("b", 1, run_uri, "retry-01/part-000000.tar", attempts=2)]
    (retry / "part-000000.parquet").write_bytes(parquet(retried, V1_RECORDS))
    (retry / "part-000000.stats.json").write_bytes(marker([0], 1, 1))
    (retry / "part-000000.captions.parquet").write_bytes(captions(["b"]))
    return run
