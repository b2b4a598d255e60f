"""The one-shot device check: how fast restyle is on the GPU at hand, in one short call.

    bash benchmarks/gpu_check.sh                          # H100/H200: full size, 300 s deadline
    bash benchmarks/gpu_check.sh --only 3,4,6,7           # a rerun: the sections still missing
    bash benchmarks/gpu_check.sh --device cpu --size small  # every step on a CPU (the tests)

Both models at the authors' 1024x1024, 25 steps (USO: subject + 1 style image; OmniConsistency:
condition image + one style LoRA), random full-size weights built on the device (speed does not
depend on weight values; outcomes say `random_weights`), one warm-up and `--images` timed images
per configuration. Sections and their order: `check/plan.py`. Results go to $OUT (or
./gpu-check/) as gpu_check.json and gpu_check.md, rewritten after every measurement; at the
deadline the check stops cleanly and reports what it measured.

Exit status: 0 every chosen section measured; 1 a measurement failed (the others still ran; the
error is in the report and on stderr); 2 bad arguments or missing packages (nothing measured);
3 the deadline stopped the check (the report holds what was measured).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

# What the check imports beyond the lent machine's python (torch, transformers, peft,
# accelerate, safetensors, pyarrow, typer, rich): scripts/device_wheels.sh carries them.
REQUIRED_MODULES = (
    "torch",
    "transformers",
    "peft",
    "safetensors",
    "pyarrow",
    "diffusers",
    "huggingface_hub",
    "PIL",
    "pydantic",
    "yaml",
    "webdataset",
    "braceexpand",
    "sentencepiece",
    "google.protobuf",
)
MIN_VERSIONS = {"transformers": (5, 17), "torch": (2, 11), "diffusers": (0, 42)}
MODELS = ("uso", "omniconsistency")


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--size", default="full", choices=("full", "small", "tiny"))
    parser.add_argument("--only", help="sections, e.g. 1,2,anchor (default: all; see plan.py)")
    parser.add_argument("--deadline-s", type=float, default=300.0, help="wall-clock budget")
    parser.add_argument("--out", type=Path, help="results folder (default $OUT or ./gpu-check)")
    parser.add_argument(
        "--images", type=int, help="timed images per configuration (default 2; 1 on a CPU)"
    )
    parser.add_argument("--shard-items", type=int, default=8, help="items in section 7's shard")
    parser.add_argument(
        "--compile-backend",
        choices=("inductor", "aot_eager", "eager"),
        help="torch.compile backend (default inductor on CUDA, aot_eager on a CPU, where "
        "inductor's C++ build alone would take minutes; dynamo traces the same graphs)",
    )
    parser.add_argument(
        "--min-start-s",
        type=float,
        help="do not start a measurement with less time left (default 20 on CUDA, 1 on a CPU)",
    )
    return parser.parse_args(argv)


def preflight() -> list[str]:
    """Problems that stop the check before it measures anything (one line each)."""
    import importlib.metadata

    problems = []
    for module in REQUIRED_MODULES:
        try:
            importlib.import_module(module)
        except Exception as error:  # ImportError, or a broken install raising anything
            problems.append(f"cannot import {module} ({type(error).__name__}: {error})")
    for package, minimum in MIN_VERSIONS.items():
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue  # reported above
        numbers = tuple(int(p) for p in version.split("+")[0].split(".")[:2] if p.isdigit())
        if numbers < minimum:
            problems.append(f"{package} {version} is older than {'.'.join(map(str, minimum))}")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    problems = preflight()
    if problems:
        for problem in problems:
            print(f"gpu_check: {problem}", file=sys.stderr)
        print(
            "gpu_check: run scripts/device_wheels.sh on a machine with internet access and "
            "carry .whl/ along (gpu_check.sh installs it)",
            file=sys.stderr,
        )
        return 2
    import torch
    from check.plan import parse_only
    from check.runner import CheckRunner
    from check.stacks import PRESETS, CheckSettings

    try:
        chosen = parse_only(args.only)
    except ValueError as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --device cpu --size small", file=sys.stderr)
        return 2
    out = args.out or Path(os.environ.get("OUT") or "gpu-check")
    preset = PRESETS[args.size]
    cpu = device.type == "cpu"
    settings = CheckSettings(
        device=device,
        size=args.size,
        preset=preset,
        work=Path(tempfile.mkdtemp(prefix="gpu-check-")),
        compile_backend=args.compile_backend or ("aot_eager" if cpu else "inductor"),
        timed_images=args.images or (1 if cpu else 2),
    )
    header = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
        "size": args.size,
        "resolution": preset.resolution,
        "steps": preset.steps,
        "timed_images": settings.timed_images,
        "deadline_s": args.deadline_s,
        "sections": sorted(chosen),
        "compile_backend": settings.compile_backend,
        "weights": "random (speed does not depend on weight values)",
    }
    runner = CheckRunner(
        settings,
        out,
        header,
        chosen,
        deadline_s=args.deadline_s,
        min_start_s=args.min_start_s if args.min_start_s is not None else (1.0 if cpu else 20.0),
        shard_items=args.shard_items,
    )
    try:
        return runner.run()
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
