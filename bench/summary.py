"""The one table: every figure, its baselines from the same run, the ratio, the issue's target and a verdict.

Pure (no I/O): lines in, text out, so the rendering and the verdicts are unit-tested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Baseline", "Line", "Target", "render", "verdict"]


@dataclass(frozen=True)
class Target:
    """What the issue promises for one figure; every bound given must hold for the target to be met."""

    at_least: float | None = None
    at_most: float | None = None
    p99_at_most_ms: float | None = None
    #: The figure ÷ its first baseline must not pass this (e.g. memory "flat": RSS at 2.6x the input ÷ RSS at 1x).
    ratio_at_most: float | None = None
    #: The figure ÷ its first baseline must reach this (e.g. reads with the audit log ÷ reads without it).
    ratio_at_least: float | None = None
    #: What ``value`` is when it is not plain, e.g. "median".
    value_name: str = ""
    #: Said after the bounds, e.g. "(at 1M)".
    note: str = ""

    def text(self, unit: str) -> str:
        parts = []
        name = f"{self.value_name} " if self.value_name else ""
        if self.at_least is not None:
            parts.append(f"{name}>= {_short(self.at_least)} {unit}")
        if self.at_most is not None:
            parts.append(f"{name}<= {_short(self.at_most)} {unit}")
        if self.p99_at_most_ms is not None:
            parts.append(f"p99 <= {_short(self.p99_at_most_ms)} ms")
        if self.ratio_at_most is not None:
            parts.append(f"ratio <= {self.ratio_at_most:g}")
        if self.ratio_at_least is not None:
            parts.append(f"ratio >= {self.ratio_at_least:g}")
        return ", ".join(parts) + (f" {self.note}" if self.note else "")


@dataclass(frozen=True)
class Baseline:
    name: str
    value: float
    p99_ms: float = math.nan


@dataclass(frozen=True)
class Line:
    """One figure. ``value`` is in ``unit``; rates and latencies alike are set beside baselines in that unit."""

    figure: str
    value: float
    unit: str
    concurrency: int | None = None
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    errors: int = 0
    #: CPU used by other processes during the window, % of one core (noise indicator); NaN when unknown.
    other_cpu: float = math.nan
    baselines: tuple[Baseline, ...] = field(default_factory=tuple)
    target: Target | None = None

    def ratio(self, baseline: Baseline) -> float:
        if not baseline.value or math.isnan(baseline.value) or math.isnan(self.value):
            return math.nan
        return self.value / baseline.value


def verdict(line: Line) -> str:
    """``yes`` when every bound of the target holds, ``NO`` when one fails or a request failed, ``?`` when a
    needed figure is missing, ``-`` without a target: a failed measurement is never reported as met."""
    target = line.target
    if target is None:
        return "-"
    if line.errors:
        return "NO"
    ratio = line.ratio(line.baselines[0]) if line.baselines else math.nan
    checks: list[tuple[float, bool]] = []  # (the figure checked, whether it holds)
    if target.at_least is not None:
        checks.append((line.value, line.value >= target.at_least))
    if target.at_most is not None:
        checks.append((line.value, line.value <= target.at_most))
    if target.p99_at_most_ms is not None:
        checks.append((line.p99_ms, line.p99_ms <= target.p99_at_most_ms))
    if target.ratio_at_most is not None:
        checks.append((ratio, ratio <= target.ratio_at_most))
    if target.ratio_at_least is not None:
        checks.append((ratio, ratio >= target.ratio_at_least))
    if any(math.isnan(value) for value, _ in checks):
        return "?"
    return "yes" if all(holds for _, holds in checks) else "NO"


def _short(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 or value == int(value) else f"{value:g}"


def _num(value: float) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 0.1 or value == 0 else f"{value:.2g}"


HEADER = (
    "figure",
    "c",
    "value",
    "unit",
    "p50 ms",
    "p99 ms",
    "err",
    "oth%",
    "baseline (same run)",
    "value",
    "p99 ms",
    "ratio",
    "target",
    "met",
)
_RIGHT = {1, 2, 4, 5, 6, 7, 9, 10, 11}


def render(lines: list[Line]) -> str:
    """Aligned text, one row per (figure, baseline); a figure with several baselines takes several rows."""
    rows: list[tuple[str, ...]] = []
    for line in lines:
        left = (
            line.figure,
            "" if line.concurrency is None else str(line.concurrency),
            _num(line.value),
            line.unit,
            _num(line.p50_ms),
            _num(line.p99_ms),
            str(line.errors),
            _num(line.other_cpu),
        )
        target = (line.target.text(line.unit) if line.target else "-", verdict(line))
        baselines = line.baselines or (None,)
        for index, baseline in enumerate(baselines):
            if baseline is None:
                middle: tuple[str, ...] = ("(none)", "", "", "")
            else:
                middle = (baseline.name, _num(baseline.value), _num(baseline.p99_ms), _num(line.ratio(baseline)))
            if index == 0:
                rows.append(left + middle + target)
            else:
                rows.append(("",) * len(left) + middle + ("", ""))
    widths = [
        max(len(HEADER[i]), *(len(row[i]) for row in rows)) if rows else len(HEADER[i]) for i in range(len(HEADER))
    ]

    def fmt(cells: tuple[str, ...]) -> str:
        text = "  ".join(
            cell.rjust(widths[i]) if i in _RIGHT else cell.ljust(widths[i]) for i, cell in enumerate(cells)
        )
        return text.rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([fmt(HEADER), rule, *(fmt(row) for row in rows)])
