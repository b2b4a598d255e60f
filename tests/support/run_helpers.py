"""Small builders for pipeline tests: sample images, Parquet/WebDataset manifests, run configs,
and a command stopped by SIGTERM at its first commit."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.config import RunConfig, SamplingDefaults
from pipeline.models.base import ModelOptions

SMALL = dict(width=64, height=48, steps=2)  # tiny models at a tiny size: ~1 s per item on CPU


def png_bytes(seed: int, size: tuple[int, int] = (40, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        path.write_bytes(png_bytes(i))
        paths.append(path)
    return paths


def parquet_bytes(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def uso_rows(prefix: str, count: int, subject: str, style: str) -> list[dict]:
    """USO subject+style rows referring to images by (relative) URI."""
    return [
        {
            "id": f"{prefix}-{i}",
            "prompt": f"item {i}",
            "subject": subject,
            "styles": [style],
            "width": SMALL["width"],
            "height": SMALL["height"],
            "steps": SMALL["steps"],
        }
        for i in range(count)
    ]


def webdataset_tar(samples: list[dict]) -> bytes:
    """A WebDataset manifest shard: per sample a .json with the fields and image members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for sample in samples:
            key = sample["id"]
            members = {f"{key}.json": json.dumps(sample["fields"]).encode()}
            for name, data in sample.get("images", {}).items():
                members[f"{key}.{name}"] = data
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def run_config(
    manifest: list[str] | str,
    out: str,
    weights: Path,
    run: str = "test",
    model: str = "uso",
    seed: int = 0,
    actors: int = 1,
    **overrides,
) -> RunConfig:
    manifest = [manifest] if isinstance(manifest, str) else manifest
    return RunConfig(
        manifest=tuple(manifest),
        output=out,
        run=run,
        model=model,
        weights=str(weights),
        seed=seed,
        sampling=SamplingDefaults(**SMALL),
        options=ModelOptions(device="cpu"),
        actors=actors,
        **overrides,
    )


def cli_run_args(manifest: Path | str, out: Path | str, weights: Path | str) -> list[str]:
    """`restyle run` arguments (after the program) for one tiny actor at the SMALL size."""
    return [
        "run",
        str(manifest),
        "--out",
        str(out),
        "--weights",
        str(weights),
        "--actors",
        "1",
        "--width",
        str(SMALL["width"]),
        "--height",
        str(SMALL["height"]),
        "--steps",
        str(SMALL["steps"]),
        "--no-progress",
    ]


def sigterm_at_first_commit(command: list[str], run: Path) -> tuple[int, str, str]:
    """Run the restyle `command` on a local Ray of its own, SIGTERM it once a first shard of
    the run folder `run` committed (its marker); (exit code, stdout, stderr) once it ended."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 300
    while not list(run.glob("*.stats.json")):
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()[1]
        time.sleep(0.1)
    driver.send_signal(signal.SIGTERM)
    stdout, stderr = driver.communicate(timeout=300)
    return driver.returncode, stdout, stderr
