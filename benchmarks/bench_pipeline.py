"""Pipeline overhead: `restyle run` end to end versus the same model in a bare loop.

    python benchmarks/bench_pipeline.py --items 200 --shards 4 --model uso [--s3]

Both sides use the same model, weights, items, sizes and seeds, and run in a Ray worker with the
same resources (so torch gets the same thread count). The bare loop decodes every image first
and then only calls `model.generate` item by item, so it is the ceiling. The
pipeline run reads the manifest, fetches and decodes images, runs the model in a Ray actor,
encodes PNGs, writes tars/parquets/markers (to a local folder or, with --s3, to a real
SeaweedFS server on loopback). Reported, from one run:
  - images/s of each, and their ratio (pipeline / bare loop),
  - the fraction of the actor's shard wall time spent inside the model (from the markers).
On a GPU node the reading/encoding threads use CPU cores while the model uses the GPU; on a
small CPU-only machine they compete with the model for the same cores, so the ratio there is a
lower bound of what a GPU node sees.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import ray
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.run_helpers import parquet_bytes, write_images

from pipeline.config import RunConfig, SamplingDefaults
from pipeline.execution.driver import Runner
from pipeline.models.base import GenerationRequest, ModelOptions
from pipeline.models.registry import load_model
from pipeline.storage import StorageSettings
from pipeline.weights.tiny import build_tiny_weights


def make_manifest(
    folder: Path, items: int, shards: int, model: str, width: int, height: int, steps: int
) -> tuple[list[Path], list[dict]]:
    images = write_images(folder / "images", 8)
    rows = []
    for i in range(items):
        row = {
            "id": f"bench-{i:05d}",
            "prompt": f"benchmark item {i % 17}",
            "width": width,
            "height": height,
            "steps": steps,
            "subject": str(images[i % 4]),
        }
        if model == "uso":
            row["styles"] = [str(images[4 + i % 4])]
        else:
            row["style_lora"] = ["Ghibli", "Van_Gogh"][(i // max(1, items // shards // 2)) % 2]
        rows.append(row)
    per_shard = -(-items // shards)
    paths = []
    for k in range(shards):
        path = folder / f"part-{k:03d}.parquet"
        path.write_bytes(parquet_bytes(rows[k * per_shard : (k + 1) * per_shard]))
        paths.append(path)
    return paths, rows


def bare_loop(model_name: str, weights: Path, rows: list[dict], seed_of) -> float:
    """images/s of the model alone on pre-decoded inputs."""
    from pipeline.processing.style_loras import StyleLoraResolver
    from pipeline.storage import Storage

    model = load_model(model_name, weights, ModelOptions(device="cpu"))
    resolver = StyleLoraResolver(Storage(StorageSettings()), weights, Path(tempfile.mkdtemp()))
    decoded = {
        p: Image.open(p).convert("RGB") for r in rows for p in [r["subject"], *r.get("styles", [])]
    }
    requests = [
        GenerationRequest(
            item_id=r["id"],
            prompt=r["prompt"],
            seed=seed_of(r["id"]),
            subject=decoded[r["subject"]],
            styles=[decoded[p] for p in r.get("styles", [])],
            style_lora=(
                resolver.resolve(r["style_lora"], None, r["id"]) if r.get("style_lora") else None
            ),
            width=r["width"],
            height=r["height"],
            steps=r["steps"],
        )
        for r in rows
    ]
    model.generate(requests[:1])  # warm-up, as the actor's first item also pays it
    t0 = time.perf_counter()
    for request in requests:
        outcome = model.generate([request])[0]
        assert outcome.ok, outcome.error
    return len(requests) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--model", default="uso", choices=["uso", "omniconsistency"])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--s3", action="store_true", help="write outputs to a SeaweedFS server")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="restyle-bench-"))
    weights = build_tiny_weights(work / "weights")
    manifests, rows = make_manifest(
        work / "manifest", args.items, args.shards, args.model, args.width, args.height, args.steps
    )
    from pipeline.config import derive_seed

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    from pipeline.execution.pool import CPU_ACTOR_CPUS

    remote_bare = ray.remote(num_cpus=CPU_ACTOR_CPUS)(bare_loop)
    bare = ray.get(
        remote_bare.remote(args.model, weights, rows, lambda item_id: derive_seed(0, item_id))
    )

    server = None
    out, settings = str(work / "out"), StorageSettings()
    if args.s3:
        from support.s3_server import SeaweedS3Server

        server = SeaweedS3Server.start(work / "s3")
        out, settings = server.new_bucket("bench") + "/out", server.settings()
    config = RunConfig(
        manifest=tuple(str(p) for p in manifests),
        output=out,
        run="bench",
        model=args.model,
        weights=str(weights),
        sampling=SamplingDefaults(width=args.width, height=args.height, steps=args.steps),
        options=ModelOptions(device="cpu"),
        actors=1,
    )
    try:
        runner = Runner(config, settings, show_progress=False)
        t0 = time.perf_counter()
        summary = runner.run()
        wall = time.perf_counter() - t0
        from pipeline.outputs.run_state import RunState
        from pipeline.outputs.status import run_status

        status = run_status(RunState(runner.storage, config.run_uri))
    finally:
        ray.shutdown()
        if server is not None:
            server.stop()
    assert summary.ok == args.items, summary
    figures = {
        "model": args.model,
        "items": args.items,
        "shards": args.shards,
        "size": f"{args.width}x{args.height}",
        "steps": args.steps,
        "output": "s3 (SeaweedFS, loopback)" if args.s3 else "local disk",
        "bare_loop_images_per_s": round(bare, 3),
        "pipeline_images_per_s_incl_startup": round(args.items / wall, 3),
        "pipeline_images_per_s_steady": round(status.images_per_s, 3),
        "pipeline_over_bare": round(status.images_per_s / bare, 3),
        "actor_time_in_model": round(status.model_fraction, 3),
        "run_wall_s_incl_ray_and_model_load": round(wall, 1),
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
