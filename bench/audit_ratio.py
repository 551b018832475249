"""Reads with the audit log beside the same reads without it, interleaved on one store.

Measured as one window with the audit log and then one without, the ratio moved from 0.42 to 1.34
between identical runs on a shared machine: whatever the neighbours did during one window and not the
other went into it. Here two servers run on the same store at once, one with the audit log (the run's
server) and one with ``EHR_AUDIT_ENABLED=false``; after a warm-up of each, windows alternate (on, off,
on, off, ...; at least 3 of each, an odd count so the median is a window actually measured), and each
side's figure is its median window. Drift and neighbours then fall on both sides alike, and the
spread (lowest and highest window of each side) says how far a single window could be trusted.

Between windows the load stops for :data:`SETTLE_SECONDS`: the audited server's ledger sealer signs a
partly filled block every ``EHR_LEDGER_SEAL_SECONDS`` (2 s by default), and that work belongs to the
audited window (it seals during the window too), not to the next window without the audit log.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import replace

from bench.stats import Measurement

__all__ = ["SETTLE_SECONDS", "audit_windows", "interleave", "median_window"]

#: Pause between windows: longer than the ledger sealer's default interval (2 s), see the module's docstring.
SETTLE_SECONDS = 2.5


def audit_windows(requested: int) -> int:
    """At least 3 windows a side, and an odd count (the median is then one measured window)."""
    windows = max(3, requested)
    return windows if windows % 2 else windows + 1


def median_window(windows: list[Measurement], name: str) -> Measurement:
    """The window of median rate, renamed ``name``, with every window's rate and the spread in its notes."""
    if not windows:
        raise ValueError("no window measured")
    ordered = sorted(windows, key=lambda window: window.rate)
    middle = ordered[len(ordered) // 2]
    rates = [window.rate for window in windows]
    notes = middle.notes | {
        "window_rates": rates,
        "median_rate": statistics.median(rates),
        "min_rate": min(rates),
        "max_rate": max(rates),
        "windows": len(windows),
    }
    return replace(middle, name=name, notes=notes)


def interleave(
    measure_on: Callable[[], Measurement],
    measure_off: Callable[[], Measurement],
    windows: int,
    settle: Callable[[], None] = lambda: time.sleep(SETTLE_SECONDS),
) -> tuple[list[Measurement], list[Measurement]]:
    """``windows`` windows of each side, alternating and starting with the audited one; ``settle`` between
    windows. Returns (with the audit log, without)."""
    on: list[Measurement] = []
    off: list[Measurement] = []
    for _ in range(windows):
        for side, measure in ((on, measure_on), (off, measure_off)):
            if on or off:
                settle()
            side.append(measure())
    return on, off
