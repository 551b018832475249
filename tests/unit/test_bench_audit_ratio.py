"""The audit ratio's interleaved windows: their order, their count, the median and spread (no timing asserted)."""

from __future__ import annotations

from bench import targets
from bench.audit_ratio import audit_windows, interleave, median_window
from bench.lines import AUDIT_OFF, AUDIT_ON, http_lines
from bench.stats import Measurement
from bench.summary import verdict


def _window(name: str, operations: int) -> Measurement:
    return Measurement(name, "postgres", 32, operations, 1.0, latencies=[0.002] * operations)


def test_windows_alternate_with_and_without_the_audit_log_with_a_pause_between_each() -> None:
    events: list[str] = []

    def side(name: str) -> Measurement:
        events.append(name)
        return _window(name, 100)

    on, off = interleave(lambda: side("on"), lambda: side("off"), 3, lambda: events.append("settle"))
    assert events == ["on", "settle", "off", "settle", "on", "settle", "off", "settle", "on", "settle", "off"]
    assert (len(on), len(off)) == (3, 3)


def test_at_least_three_windows_a_side_and_an_odd_count() -> None:
    assert [audit_windows(n) for n in (1, 2, 3, 4, 5)] == [3, 3, 3, 5, 5]


def test_each_side_is_its_median_window_with_every_window_and_the_spread_noted() -> None:
    median = median_window([_window("w", 90), _window("w", 300), _window("w", 120)], "http read, audit log on")
    assert (median.name, median.operations) == ("http read, audit log on", 120)
    assert median.notes["window_rates"] == [90, 300, 120]
    assert (median.notes["min_rate"], median.notes["max_rate"], median.notes["windows"]) == (90, 300, 3)


def test_the_ratio_sets_the_interleaved_median_beside_the_other_side_not_the_run_s_read_figure() -> None:
    on = median_window([_window("w", 70), _window("w", 75), _window("w", 72)], f"http {AUDIT_ON}")
    off = median_window([_window("w", 80), _window("w", 100), _window("w", 90)], f"http {AUDIT_OFF}")
    figures = [_window("http read", 200), on, off]  # the run's read figure would give 200/90
    audited = next(line for line in http_lines("postgres", figures, []) if "read with the audit log" in line.figure)
    assert audited.value == 72 and audited.baselines[0].value == 90
    assert audited.figure == (
        "postgres read with the audit log (raw client, median of 3 interleaved windows, on 70-75, off 80-100 /s)"
    )
    assert audited.ratio(audited.baselines[0]) == 0.8 and audited.target == targets.AUDITED_READS
    assert verdict(audited) == "yes"
