"""`restyle eval` throughput relative to the run it scores, measured in one process.

    python benchmarks/bench_eval.py --items 120 --shards 4 [--size 64] [--paper-packages]

A tiny USO run (real tiny models, CPU, one actor) makes `--items` triplet-style results; then
`restyle eval` scores that run with tiny backbones of every kind that has one (CLIP, DINO, CSD,
FID, CMMD: per-item metrics and set features) on the same actor machinery, one actor. Reported:
the run's steady images/s (from its markers), eval's images/s (items scored over the eval's
wall time, which includes starting its actor and loading the backbones), and their ratio:
how much eval adds to producing a run. At real sizes the model costs ~2.5 s/image on an H100
while the backbones cost milliseconds, so the ratio grows by orders of magnitude; this tiny
CPU figure is a lower bound. `--paper-packages` then scores the same run with the two metrics
whose reference is a package (DreamSim's ViT-B/16 ensemble, torch-fidelity's Inception-v3) at
their full sizes, random weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import make_manifest

from pipeline.config import EvalSettings, MetricModels, RunConfig, SamplingDefaults
from pipeline.config.run_config import OutputOptions
from pipeline.execution.driver import Runner
from pipeline.jobs.eval import eval_run
from pipeline.models.base import ModelOptions
from pipeline.outputs.run_state import RunState
from pipeline.outputs.status import run_status
from pipeline.storage import StorageSettings
from pipeline.weights.tiny import build_tiny_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=120)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--paper-packages",
        action="store_true",
        help="then score again with DreamSim and the Inception FID at full size (random "
        "weights, pipeline/weights/random_paper_metrics.py; needs restyle[paper-metrics])",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="restyle-bench-eval-"))
    weights = build_tiny_weights(work / "weights")
    manifests, _ = make_manifest(
        work / "manifest", args.items, args.shards, "uso", args.size, args.size, args.steps
    )
    config = RunConfig(
        manifest=tuple(str(p) for p in manifests),
        output=str(work / "out"),
        run="bench",
        model="uso",
        weights=str(weights),
        sampling=SamplingDefaults(width=args.size, height=args.size, steps=args.steps),
        options=ModelOptions(device="cpu"),
        outputs=OutputOptions(include_references=True),
        actors=1,
    )
    settings = EvalSettings(
        models=MetricModels.all_tiny(), reference=str(work / "manifest" / "images")
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = Runner(config, StorageSettings(), show_progress=False).run()
        status = run_status(RunState(Runner(config, StorageSettings()).storage, config.run_uri))
        t0 = time.perf_counter()
        scored = eval_run(config.run_uri, settings, StorageSettings(), actors=1, device="cpu")
        eval_wall = time.perf_counter() - t0
        if args.paper_packages:
            packages = paper_package_settings(work, settings.reference)
            t0 = time.perf_counter()
            scored_packages = eval_run(
                config.run_uri, packages, StorageSettings(), actors=1, device="cpu"
            )
            packages_wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    assert summary.ok == args.items and scored.items_scored == args.items, (summary, scored)
    figures = {
        "items": args.items,
        "shards": args.shards,
        "size": f"{args.size}x{args.size}",
        "steps": args.steps,
        "metrics": list(settings.chosen),
        "run_images_per_s_steady": round(status.images_per_s, 3),
        "eval_images_per_s_incl_startup": round(args.items / eval_wall, 3),
        "eval_over_run": round(args.items / eval_wall / status.images_per_s, 2),
        "eval_wall_s": round(eval_wall, 1),
        "fid": round(scored.sets.get("fid", float("nan")), 4),
        "cmmd": round(scored.sets.get("cmmd", float("nan")), 4),
    }
    if args.paper_packages:
        assert scored_packages.items_scored == args.items, scored_packages
        figures["paper_packages"] = {
            "metrics": list(packages.chosen),
            "eval_images_per_s_incl_startup": round(args.items / packages_wall, 3),
            "eval_over_run": round(args.items / packages_wall / status.images_per_s, 2),
            "eval_wall_s": round(packages_wall, 1),
            "fid": round(scored_packages.sets.get("fid", float("nan")), 4),
        }
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


def paper_package_settings(work: Path, reference: str) -> EvalSettings:
    """DreamSim (content and style) and the Inception FID, from full-size random releases."""
    from pipeline.weights.random_paper_metrics import (
        build_random_dreamsim,
        build_random_inception,
    )

    return EvalSettings(
        metrics=["dreamsim", "dreamsim_style", "fid"],
        models=MetricModels(
            dreamsim=str(build_random_dreamsim(work / "dreamsim")),
            fid=str(build_random_inception(work / "inception")),
        ),
        reference=reference,
    )


if __name__ == "__main__":
    main()
