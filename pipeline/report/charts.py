"""Inline SVG charts (no JavaScript library, no network): histograms and a throughput line."""

from __future__ import annotations

from html import escape

import numpy as np

from pipeline.wording import counted

WIDTH, HEIGHT, PAD = 320, 140, 28


def histogram(name: str, values: list[float], bins: int = 20) -> str:
    """An SVG histogram of one metric, with its range and median on the axis."""
    if not values:
        return ""
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins)
    top = max(int(counts.max()), 1)
    bar_w = (WIDTH - 2 * PAD) / bins
    bars = "".join(
        f'<rect x="{PAD + i * bar_w:.1f}" y="{HEIGHT - PAD - (HEIGHT - 2 * PAD) * c / top:.1f}" '
        f'width="{bar_w - 1:.1f}" height="{(HEIGHT - 2 * PAD) * c / top:.1f}" class="bar">'
        f"<title>{edges[i]:.3f} to {edges[i + 1]:.3f}: {c}</title></rect>"
        for i, c in enumerate(counts)
    )
    median = float(np.median(values))
    return (
        f'<figure class="chart"><svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="histogram of {escape(name)}">{bars}'
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" class="axis"/>'
        f'<text x="{PAD}" y="{HEIGHT - 8}">{edges[0]:.3f}</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" text-anchor="end">{edges[-1]:.3f}</text>'
        f'<text x="{PAD}" y="14">max {top}</text></svg>'
        f"<figcaption>{escape(name)}: median {median:.4f}, n={len(values)}</figcaption></figure>"
    )


def throughput(points: list[tuple[float, int]]) -> str:
    """Cumulative ok images against seconds since the run started (one point per commit)."""
    if len(points) < 2:
        return ""
    t_max = max(t for t, _ in points) or 1.0
    n_max = max(n for _, n in points) or 1
    coords = " ".join(
        f"{PAD + (WIDTH - 2 * PAD) * t / t_max:.1f},{HEIGHT - PAD - (HEIGHT - 2 * PAD) * n / n_max:.1f}"
        for t, n in points
    )
    rate = n_max / t_max
    return (
        f'<figure class="chart"><svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="images over time"><polyline points="{coords}" class="line"/>'
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" class="axis"/>'
        f'<text x="{PAD}" y="{HEIGHT - 8}">0 s</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" text-anchor="end">{t_max:.0f} s</text>'
        f'<text x="{PAD}" y="14">{counted(n_max, "image")}</text></svg>'
        f"<figcaption>images committed over time: {rate:.3f} images/s overall</figcaption></figure>"
    )
