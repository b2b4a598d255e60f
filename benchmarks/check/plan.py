"""What the check measures, in which order, and the goals it measures against.

Sections (the issue's priority order; `--only` takes numbers or names):
  attention  SDPA kernels on FLUX's attention shape (cheap; decides the Hopper default)
  1 eager    both models, bf16, eager
  2 compile  both models, bf16, regional torch.compile (warm-up reported apart)
  3 fp8      both models, the one fp8 path (row-scaled e4m3; scaled_mm on fp8 GPUs), compiled
  4 lowvram  both models, fp8 + offload (the USO authors' low-VRAM mode): peak memory and speed
  5 batch    both models, two items of one layout per forward: per-image time
  6 anchor   diffusers' FluxPipeline on the same modules, eager and compiled, and
             OmniConsistency without a style LoRA: the ratios to plain FLUX
  7 shard    the shard processor end to end without Ray: 8 items, model-busy fraction
The matmul peak is measured first, always. Jobs that share a model stack run next to each
other (5 and the eager anchor right after 1, the compiled anchor right after 2): a stack is
built once, and the cheapest figures come early.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from check.report import Measurement, Report
from check.stacks import StackConfig

SECTIONS = {
    "attention": "attention",
    "1": "eager",
    "2": "compile",
    "3": "fp8",
    "4": "lowvram",
    "5": "batch",
    "6": "anchor",
    "7": "shard",
}
LABELS = {
    "attention": "attention",
    "eager": "1 eager",
    "compile": "2 compiled",
    "fp8": "3 fp8",
    "lowvram": "4 low VRAM",
    "batch": "5 batch 2",
    "anchor": "6 anchor",
    "shard": "7 shard",
}
EAGER = StackConfig()
COMPILED = StackConfig(compile=True)
FP8 = StackConfig(fp8=True, compile=True)
LOW_VRAM = StackConfig(fp8=True, offload=True)


@dataclass(frozen=True)
class Job:
    """One step of the plan: `section` and what to run (a callable over the check's runner)."""

    section: str
    what: str  # for the report's "stopped during"
    run: Callable[..., list[Measurement] | Measurement | None]


def parse_only(text: str | None) -> set[str]:
    """ "1,3,anchor" -> {"eager", "fp8", "anchor"}; None -> every section."""
    if not text:
        return set(SECTIONS.values())
    chosen = set()
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name = SECTIONS.get(part, part)
        if name not in SECTIONS.values():
            raise ValueError(
                f"unknown section {part!r}; choose from {', '.join(SECTIONS)} or "
                f"{', '.join(SECTIONS.values())}"
            )
        chosen.add(name)
    return chosen


# ------------------------------------------------------------------------- goals and ratios
# The goals on an H100/H200 at 1024^2, 25 steps.
SECONDS_GOALS = (
    ("OmniConsistency bf16 compiled", "omniconsistency", LABELS["compile"], "bf16 compiled", 3.2),
    ("OmniConsistency fp8 compiled", "omniconsistency", LABELS["fp8"], "fp8 compiled", 2.0),
    ("USO bf16 compiled", "uso", LABELS["compile"], "bf16 compiled", 4.0),
    ("USO fp8 compiled", "uso", LABELS["fp8"], "fp8 compiled", 2.5),
)
FLUX = "flux (diffusers FluxPipeline)"
MODEL_BUSY_GOAL = 0.97


def add_ratios(report: Report) -> None:
    """Every model figure as a ratio to plain FLUX of the same run (time, and speed per FLOP:
    achieved TFLOP/s over FluxPipeline's), and the goals table."""
    flux = {
        config: report.find(LABELS["anchor"], FLUX, config)
        for config in (EAGER.label, COMPILED.label)
    }
    for m in report.measurements:
        if m.model == FLUX or m.status != "ok" or m.s_per_image is None:
            continue
        for config, anchor in flux.items():
            if anchor is None or not anchor.s_per_image:
                continue
            key = config.replace(" ", "_")
            m.extra[f"time_vs_flux_{key}"] = round(m.s_per_image / anchor.s_per_image, 3)
            if m.tflop_per_image and anchor.tflop_per_image:
                speed = m.tflop_per_image / m.s_per_image
                m.extra[f"tflops_vs_flux_{key}"] = round(
                    speed / (anchor.tflop_per_image / anchor.s_per_image), 3
                )
    report.goals = goals(report)


def goals(report: Report) -> list[dict]:
    full_gpu = report.header.get("size") == "full" and report.hardware.get("device") != "cpu"
    rows = []
    for goal, model, section, config, target in SECONDS_GOALS:
        m = report.find(section, model, config)
        measured = None if m is None else m.s_per_image
        rows.append(
            {
                "goal": f"{goal}, s/image",
                "target": f"<= {target}",
                "measured": measured,
                "met": None if measured is None or not full_gpu else measured <= target,
            }
        )
    anchor = report.find(LABELS["anchor"], FLUX, COMPILED.label)
    for model in ("omniconsistency", "uso"):
        m = report.find(LABELS["compile"], model, COMPILED.label)
        ratio = None if m is None or anchor is None else m.extra.get("tflops_vs_flux_bf16_compiled")
        rows.append(
            {
                "goal": f"{model} bf16 compiled, speed per FLOP vs FluxPipeline compiled",
                "target": ">= 1.0",
                "measured": ratio,
                "met": None if ratio is None or not full_gpu else ratio >= 1.0,
            }
        )
    shard = next(
        (m for m in report.measurements if m.section == LABELS["shard"] and m.status == "ok"),
        None,
    )
    busy = None if shard is None else shard.extra.get("model_busy")
    rows.append(
        {
            "goal": "shard processor, model-busy fraction",
            "target": f">= {MODEL_BUSY_GOAL}",
            "measured": busy,
            "met": None if busy is None or not full_gpu else busy >= MODEL_BUSY_GOAL,
        }
    )
    return rows
