"""The check's results: one JSON file and one markdown table, rewritten after every measurement.

A lent machine can be taken back at any moment, so nothing waits for the end: each finished
measurement is on disk (atomically replaced files) before the next one starts. The JSON has the
same keys on a CPU run as on a GPU run; the markdown is the table to paste into
benchmarks/README.md.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_JSON = "gpu_check.json"
RESULTS_MARKDOWN = "gpu_check.md"


@dataclass
class Measurement:
    """One timed configuration of one model (or of the plain-FLUX anchor)."""

    section: str  # "1 eager", "2 compiled", ... (see plan.SECTIONS)
    model: str  # "uso", "omniconsistency", "flux (diffusers FluxPipeline)"
    config: str  # "bf16", "bf16 compiled", "fp8 compiled", ...
    status: str = "ok"  # ok | failed: ... | skipped: ...
    s_per_image: float | None = None
    all_s: list[float] = field(default_factory=list)
    warmup_s: float | None = None
    images_per_hour: float | None = None
    tflop_per_image: float | None = None
    fraction_of_peak: float | None = None  # of the matmul peak measured in this run (bf16 on a GPU)
    peak_memory_gib: float | None = None
    stages_s: dict[str, float] = field(default_factory=dict)  # text/prepare/denoise/decode
    extra: dict[str, Any] = field(default_factory=dict)  # ratios, busy fraction, backends...

    def finish(self, seconds: list[float], flops: float | None, peak_flops: float | None):
        """Fill the derived figures from the timed images' seconds (median)."""
        median = statistics.median(seconds)
        self.all_s = [round(s, 4) for s in seconds]
        self.s_per_image = round(median, 4)
        self.images_per_hour = round(3600 / median, 1)
        if flops is not None:
            self.tflop_per_image = round(flops / 1e12, 3)
            if peak_flops:
                self.fraction_of_peak = round(flops / median / peak_flops, 4)
        return self


class Report:
    """Everything the check learned so far, written to `folder` after each change."""

    def __init__(self, folder: Path, header: dict[str, Any]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.header = dict(header)
        self.started = time.time()
        self.status = "running"
        self.stopped_during: str | None = None
        self.hardware: dict[str, Any] = {}
        self.attention: list[dict[str, Any]] = []
        self.measurements: list[Measurement] = []
        self.goals: list[dict[str, Any]] = []

    @property
    def json_path(self) -> Path:
        return self.folder / RESULTS_JSON

    @property
    def markdown_path(self) -> Path:
        return self.folder / RESULTS_MARKDOWN

    def add(self, measurement: Measurement) -> Measurement:
        self.measurements.append(measurement)
        self.write()
        return measurement

    def find(self, section: str, model: str, config: str) -> Measurement | None:
        for m in self.measurements:
            if (m.section, m.model, m.config) == (section, model, config) and m.status == "ok":
                return m
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": {
                **self.header,
                "status": self.status,
                "stopped_during": self.stopped_during,
                "elapsed_s": round(time.time() - self.started, 1),
            },
            "hardware": self.hardware,
            "attention": self.attention,
            "measurements": [asdict(m) for m in self.measurements],
            "goals": self.goals,
        }

    def write(self) -> None:
        """The JSON and its table from one snapshot (two would differ in `elapsed_s`)."""
        data = self.to_dict()
        _replace(self.json_path, json.dumps(data, indent=1, sort_keys=False) + "\n")
        _replace(self.markdown_path, markdown(data))


def _replace(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def markdown(data: dict[str, Any]) -> str:
    """The results as markdown: the header, the measurements table, attention, goals."""
    check, hardware = data["check"], data["hardware"]
    lines = [
        f"## Device check {check.get('date', '')}: {hardware.get('device_name', '?')}",
        "",
        f"status **{check['status']}**"
        + (f" (stopped during {check['stopped_during']})" if check.get("stopped_during") else "")
        + f", {check['elapsed_s']} s of a {check.get('deadline_s')} s deadline; size "
        f"{check.get('size')}, {check.get('resolution')}x{check.get('resolution')}, "
        f"{check.get('steps')} step(s), random weights; torch {hardware.get('torch')}, "
        f"transformers {hardware.get('transformers')}, diffusers {hardware.get('diffusers')}; "
        f"measured {hardware.get('matmul_dtype', 'bfloat16')} matmul peak "
        f"{_cell(hardware.get('matmul_peak_tflops'))} TFLOP/s ({hardware.get('matmul_side')}^3).",
        "",
        "| section | model | config | s/image | images/h | warm-up s | TFLOP/image | "
        "of peak | peak GiB | text / prepare / denoise / decode s | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in data["measurements"]:
        stages = m["stages_s"]
        split = " / ".join(
            _cell(stages.get(k)) for k in ("text_s", "prepare_s", "denoise_s", "decode_s")
        )
        notes = m["status"] if m["status"] != "ok" else _notes(m["extra"])
        fraction = m["fraction_of_peak"]
        lines.append(
            f"| {m['section']} | {m['model']} | {m['config']} | {_cell(m['s_per_image'])} | "
            f"{_cell(m['images_per_hour'])} | {_cell(m['warmup_s'])} | "
            f"{_cell(m['tflop_per_image'])} | "
            f"{'-' if fraction is None else f'{100 * fraction:.1f}%'} | "
            f"{_cell(m['peak_memory_gib'])} | {split if stages else '-'} | {notes} |"
        )
    if data["attention"]:
        lines += ["", "| attention (SDPA) kernel | ms per call | TFLOP/s | exact vs math |"]
        lines += ["|---|---|---|---|"]
        for row in data["attention"]:
            lines.append(
                f"| {row['backend']} | {_cell(row.get('ms'))} | {_cell(row.get('tflops'))} | "
                f"{row.get('max_abs_diff', row.get('status', '-'))} |"
            )
    if data["goals"]:
        lines += ["", "| goal | target | measured | met |", "|---|---|---|---|"]
        for goal in data["goals"]:
            lines.append(
                f"| {goal['goal']} | {goal['target']} | {_cell(goal['measured'])} | "
                f"{'-' if goal['met'] is None else ('yes' if goal['met'] else 'no')} |"
            )
    return "\n".join(lines) + "\n"


def _notes(extra: dict[str, Any]) -> str:
    return "; ".join(f"{key} {_cell(value)}" for key, value in extra.items())
