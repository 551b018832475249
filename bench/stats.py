"""One measured figure: how many operations in how long, their latencies, and the CPU they cost."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.memory import descendants

__all__ = ["CpuClock", "Measurement", "Noise", "Pids", "other_percent", "percentile"]

#: The server's processes: one pid, several (a projection worker beside it), or none. Each is counted with
#: its descendants (uvicorn's worker processes).
Pids = int | Sequence[int] | None


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 < fraction <= 1)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Measurement:
    """Operations counted after warm-up only; ``latencies`` in seconds, one per operation."""

    name: str
    backend: str
    concurrency: int
    operations: int
    seconds: float
    errors: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)
    #: CPU seconds spent during the measured window: server process, this process, whole host.
    cpu: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.operations / self.seconds if self.seconds > 0 else math.nan

    def latency_ms(self, fraction: float) -> float:
        return percentile(sorted(self.latencies), fraction) * 1000.0

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000.0 if self.latencies else math.nan

    @property
    def p99_ms(self) -> float:
        return self.latency_ms(0.99)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("latencies")
        data.update(
            rate_per_s=self.rate,
            p50_ms=self.p50_ms,
            p90_ms=self.latency_ms(0.90),
            p99_ms=self.p99_ms,
            max_ms=max(self.latencies) * 1000.0 if self.latencies else math.nan,
        )
        return data


def _process_cpu(pid: int) -> float:
    """utime + stime of ``pid`` (and its reaped children), in seconds, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _postgres_cpu() -> dict[int, float]:
    """utime + stime of every running ``postgres`` process (the local server's backends), by pid, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        name, _, rest = text.partition(" (")[2].rpartition(")")
        if name == "postgres":
            used[int(entry.name)] = sum(int(value) for value in rest.split()[11:13]) / tick
    return used


def _host_busy() -> float:
    """Busy CPU seconds of the whole host (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(value) for value in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuClock:
    """CPU used between :meth:`start` and :meth:`stop`, in seconds.

    ``server`` (a process id, optional), ``client`` (this process), ``db`` (local ``postgres`` processes),
    ``host`` (all cores, busy), and ``other`` = host minus the rest: load from anything else on the machine.
    """

    def __init__(self, server_pid: Pids = None, with_db: bool = True) -> None:
        self.server_pids = [server_pid] if isinstance(server_pid, int) else list(server_pid or [])
        self.with_db = with_db  # False on SQLite: any postgres CPU then is someone else's
        self._start: dict[str, float] = {}
        self._db_start: dict[int, float] = {}

    def _now(self) -> dict[str, float]:
        # A child that exits within the window moves into its parent's cutime: still counted.
        now = {"client": time.process_time(), "host": _host_busy()}
        if self.server_pids:
            tree = descendants(self.server_pids)
            now["server"] = sum(_process_cpu(pid) for pid in tree)
        return now

    def start(self) -> None:
        self._start = self._now()
        self._db_start = _postgres_cpu() if self.with_db else {}

    def stop(self) -> dict[str, float]:
        end = self._now()
        used = {key: end[key] - self._start[key] for key in end}
        # Per process: backends that exited during the window are lost (a lower bound), never negative.
        db_end = _postgres_cpu() if self.with_db else {}
        used["db"] = sum(cpu - self._db_start.get(pid, 0.0) for pid, cpu in db_end.items())
        ours = used["client"] + used["db"] + used.get("server", 0.0)
        used["other"] = max(0.0, used["host"] - ours)
        return used


def other_percent(cpu: dict[str, float], seconds: float) -> float:
    """Other processes' CPU during a window, in % of one core; NaN for windows under a second, which
    /proc's 10 ms ticks cannot tell about."""
    if seconds < 1.0 or "other" not in cpu:
        return math.nan
    return cpu["other"] / seconds * 100


@dataclass
class Noise:
    """Other processes' CPU during a block (see :func:`Noise.watch`), in % of one core."""

    percent: float = math.nan

    @classmethod
    @contextmanager
    def watch(cls, pid: int | None = None) -> Iterator[Noise]:
        """This process, ``pid`` (with its reaped children) and PostgreSQL are ours; the rest is noise."""
        noise = cls()
        clock = CpuClock(pid, with_db=True)
        clock.start()
        began = time.perf_counter()
        try:
            yield noise
        finally:
            noise.percent = other_percent(clock.stop(), time.perf_counter() - began)
