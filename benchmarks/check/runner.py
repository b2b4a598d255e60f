"""Runs the plan under the deadline and keeps the report current (see `plan` for the order)."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from check import hardware
from check.anchor import anchor
from check.deadline import Deadline, DeadlineReached
from check.model_runs import time_model
from check.plan import COMPILED, EAGER, FP8, LABELS, LOW_VRAM, Job, add_ratios
from check.report import Measurement, Report
from check.shard_run import shard_end_to_end
from check.stacks import CheckSettings, Stacks
from pipeline.models.runtime import resolve_dtype

MODELS = ("uso", "omniconsistency")


class CheckRunner:
    def __init__(
        self,
        settings: CheckSettings,
        out: Path,
        header: dict,
        chosen: set[str],
        *,
        deadline_s: float,
        min_start_s: float,
        shard_items: int,
    ):
        self.settings = settings
        self.report = Report(out, header)
        self.chosen = chosen
        self.deadline = Deadline(deadline_s)
        self.min_start_s = min_start_s
        self.shard_items = shard_items
        self.stacks = Stacks(settings)
        self.peak_flops: float | None = None
        self.failed = False

    # ------------------------------------------------------------------------------ plan
    def jobs(self) -> list[Job]:
        chosen, s, peak = self.chosen, self.stacks, lambda: self.peak_flops
        jobs: list[Job] = []

        def add(section: str, what: str, run) -> None:
            if section in chosen:
                jobs.append(Job(section, what, run))

        add("attention", "attention kernels", self.attention)
        for name in MODELS:
            add(
                "eager",
                f"{name} bf16",
                lambda n=name: time_model(s, LABELS["eager"], n, EAGER, peak_flops=peak()),
            )
            add(
                "batch",
                f"{name} batch 2",
                lambda n=name: time_model(s, LABELS["batch"], n, EAGER, batch=2, peak_flops=peak()),
            )
        add("anchor", "FluxPipeline bf16", lambda: anchor(s, LABELS["anchor"], EAGER, peak()))
        for name in MODELS:
            add(
                "compile",
                f"{name} compiled",
                lambda n=name: time_model(s, LABELS["compile"], n, COMPILED, peak_flops=peak()),
            )
        add(
            "anchor", "FluxPipeline compiled", lambda: anchor(s, LABELS["anchor"], COMPILED, peak())
        )
        for name in MODELS:
            add(
                "fp8",
                f"{name} fp8 compiled",
                lambda n=name: time_model(s, LABELS["fp8"], n, FP8, peak_flops=peak()),
            )
        for name in MODELS:
            add(
                "lowvram",
                f"{name} fp8 offload",
                lambda n=name: time_model(s, LABELS["lowvram"], n, LOW_VRAM, peak_flops=peak()),
            )
        add(
            "shard",
            "shard end to end",
            lambda: shard_end_to_end(s, LABELS["shard"], self.shard_items),
        )
        return jobs

    # ------------------------------------------------------------------------------- run
    def run(self) -> int:
        report = self.report
        self.deadline.arm()
        try:
            self.measure_hardware()
            for job in self.jobs():
                if self.deadline.remaining() < self.min_start_s:
                    report.add(Measurement(LABELS[job.section], job.what, "-", "skipped: deadline"))
                    continue
                self.run_job(job)
            report.status = "failed" if self.failed else "complete"
        except DeadlineReached:
            report.status = "deadline"
        finally:
            self.deadline.disarm()
            self.stacks.release()
            add_ratios(report)
            report.write()
        print(f"gpu_check: {report.status}; results in {report.folder}", file=sys.stderr)
        print(report.markdown_path.read_text())
        return {"complete": 0, "failed": 1, "deadline": 3}[report.status]

    def run_job(self, job: Job) -> None:
        report = self.report
        report.stopped_during = job.what
        try:
            result = job.run()
        except DeadlineReached:
            report.add(Measurement(LABELS[job.section], job.what, "-", "stopped: deadline"))
            raise
        except Exception as error:
            traceback.print_exc()
            self.failed = True
            message = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
            report.add(Measurement(LABELS[job.section], job.what, "-", message))
            self.stacks.release()  # a broken stack is not reused
            return
        for measurement in result if isinstance(result, list) else [result] if result else []:
            report.measurements.append(measurement)
        report.stopped_during = None
        add_ratios(report)
        report.write()

    # ----------------------------------------------------------------- machine figures
    def measure_hardware(self) -> None:
        device, cpu = self.settings.device, self.settings.device.type == "cpu"
        info = hardware.environment(device)
        side = 1024 if cpu else 8192
        dtype = resolve_dtype("auto", device)  # what the models compute in on this device
        self.peak_flops = hardware.matmul_peak(device, side, repeats=3 if cpu else 10, dtype=dtype)
        info.update(
            matmul_side=side,
            matmul_dtype=str(dtype).removeprefix("torch."),
            matmul_peak_tflops=float(f"{self.peak_flops / 1e12:.4g}"),  # a CPU's is ~0.001
        )
        self.report.hardware = info
        self.report.write()

    def attention(self) -> None:
        preset, size = self.settings.preset, self.settings.size
        heads = 24 if size == "full" else 4
        tokens = (preset.resolution // 16) ** 2 + 512
        self.report.attention = hardware.attention_kernels(
            self.settings.device, heads, tokens, 128, repeats=3 if size != "full" else 20
        )
        self.report.write()
