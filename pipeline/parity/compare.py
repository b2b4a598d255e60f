"""Tensor comparison and the printed report shared by every model's parity runner."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Check:
    """One expected tensor compared with ours."""

    name: str
    max_abs_diff: float
    atol: float
    rtol: float = 0.0
    passed: bool = False
    note: str = ""


@dataclass
class ParityReport:
    """All checks of one case; `passed` only if every check passed and none is missing."""

    case: str
    model: str
    checks: list[Check] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # expected tensors we could not produce

    @property
    def passed(self) -> bool:
        return not self.missing and all(c.passed for c in self.checks)

    def compare(
        self,
        name: str,
        ours: torch.Tensor,
        expected: torch.Tensor,
        atol: float,
        rtol: float = 0.0,
        note: str = "",
    ) -> Check:
        """Compare in float64; a shape mismatch is a failed check, never an exception."""
        ours_f = ours.detach().to("cpu", torch.float64)
        exp_f = expected.detach().to("cpu", torch.float64)
        if ours_f.shape != exp_f.shape:
            check = Check(
                name,
                float("inf"),
                atol,
                rtol,
                False,
                f"shape {tuple(ours_f.shape)} != expected {tuple(exp_f.shape)}",
            )
        else:
            diff = (ours_f - exp_f).abs()
            max_diff = float(diff.max()) if diff.numel() else 0.0
            ok = bool(torch.all(diff <= atol + rtol * exp_f.abs()))
            check = Check(name, max_diff, atol, rtol, ok, note)
        self.checks.append(check)
        return check

    def format(self) -> str:
        lines = [f"parity case {self.case} (model {self.model})"]
        for c in self.checks:
            status = "ok  " if c.passed else "FAIL"
            tol = f"atol {c.atol:g}" + (f" rtol {c.rtol:g}" if c.rtol else "")
            extra = f"  ({c.note})" if c.note else ""
            lines.append(f"  {status} {c.name:<28} max|diff| {c.max_abs_diff:.3e}  {tol}{extra}")
        for name in self.missing:
            lines.append(f"  FAIL {name:<28} not produced")
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)
