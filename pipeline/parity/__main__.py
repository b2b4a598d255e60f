"""Entry point: `python -m pipeline.parity <case-dir> [<case-dir> ...]`; exit 0 only if all pass."""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.parity.compare import ParityReport


def detect_model(case_dir: Path) -> str:
    """Tell the model from the weight set beside the case (the case's parent `weights/`)."""
    weights = case_dir.parent / "weights"
    if (weights / "dit_lora.safetensors").exists() or (weights / "projector.safetensors").exists():
        return "uso"
    if (weights / "omniconsistency_lora.safetensors").exists():
        return "omniconsistency"
    raise SystemExit(
        f"{case_dir}: cannot tell the model: {weights} has neither USO "
        "(dit_lora.safetensors, projector.safetensors) nor OmniConsistency "
        "(omniconsistency_lora.safetensors) weights"
    )


def run_case(case_dir: Path) -> ParityReport:
    """Run one case folder through the matching model's parity runner."""
    if not (case_dir / "case.json").exists():
        raise SystemExit(f"{case_dir}: not a parity case (no case.json)")
    model = detect_model(case_dir)
    if model == "uso":
        from pipeline.parity.uso import run_case as run
    else:
        from pipeline.parity.omniconsistency import run_case as run
    return run(case_dir)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    all_passed = True
    for arg in argv:
        report = run_case(Path(arg))
        print(report.format())
        all_passed &= report.passed
    return 0 if all_passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
