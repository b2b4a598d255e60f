"""GPU-hour estimates for `restyle plan`, from a seconds-per-image table (TOML)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

DEFAULT_SIZE, DEFAULT_STEPS = 1024, 25


@dataclass(frozen=True)
class SecondsPerImage:
    seconds: float
    pixels: int
    steps: int

    def estimate(self, width: int, height: int, steps: int) -> float:
        """Seconds for one image, scaled linearly in pixels x steps from the anchor."""
        return self.seconds * (width * height / self.pixels) * (steps / self.steps)


def load_table(path: Path | None = None) -> dict[str, SecondsPerImage]:
    if path is None:
        text = resources.files("pipeline.data").joinpath("seconds_per_image.toml").read_text()
    else:
        text = Path(path).read_text()
    return {
        model: SecondsPerImage(float(v["seconds"]), int(v["pixels"]), int(v["steps"]))
        for model, v in tomllib.loads(text).items()
    }


def gpu_hours(
    model: str,
    items: int,
    width: int | None,
    height: int | None,
    steps: int | None,
    table: dict[str, SecondsPerImage],
) -> float:
    if model not in table:
        raise KeyError(f"no seconds-per-image entry for model {model!r} in the table")
    per_image = table[model].estimate(
        width or DEFAULT_SIZE, height or DEFAULT_SIZE, steps or DEFAULT_STEPS
    )
    return items * per_image / 3600.0
