"""A small wall-clock stack sampler for the server (py-spy is not in the venv): ``--profile``.

``python -m bench.sampler --out FILE -- serve ...`` runs ``fhir_api.cli`` with a thread that, every few
milliseconds, records where every other thread is. At exit it writes FILE: per thread group, the
functions most often at the top of the stack (self), the innermost project frame, and the functions
anywhere on the stack (inclusive). Threads idling in the event loop or waiting for work are counted
apart, so the "busy" view shows what requests spend time on, including time waiting on the database (a
thread blocked in ``execute`` or ``commit`` is shown there).

``SIGUSR1`` ends a segment: the samples since the previous signal are written to ``FILE.seg<n>`` and
counting starts afresh. The benchmark signals at the start and at the end of each measured window, so
odd segments are the windows.

Sampling needs the GIL, so calls that release it (fsync, socket reads) are somewhat over-represented.
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, FrameType

__all__ = ["Profile", "Sampler", "main"]

# Leaf functions that mean "nothing to do" rather than "working or waiting on the database".
IDLE = {
    "wait",
    "_wait_for_tstate_lock",
    "select",
    "poll",
    "get",
    "run_forever",
    "run_until_complete",
    "_run_once",
    "sleep",
    "accept",
    "_worker",
    "serve",
    "run",
}
PROJECT = ("ehr_core", "projections", "fhir_api")


def _where(code: CodeType) -> str:
    path = code.co_filename
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{code.co_name}"


def _group(name: str) -> str:
    if name.startswith("AnyIO worker"):
        return "threadpool (sync handlers, run_in_threadpool)"
    if name == "MainThread":
        return "event loop (uvicorn, async handlers)"
    return name.rstrip("0123456789-_ ") or name


def _counters() -> collections.defaultdict[str, collections.Counter[str]]:
    return collections.defaultdict(collections.Counter)


@dataclass
class Profile:
    began: float = field(default_factory=time.perf_counter)
    busy: collections.Counter[str] = field(default_factory=collections.Counter)
    idle: collections.Counter[str] = field(default_factory=collections.Counter)
    self_time: collections.defaultdict[str, collections.Counter[str]] = field(default_factory=_counters)
    project: collections.defaultdict[str, collections.Counter[str]] = field(default_factory=_counters)
    inclusive: collections.defaultdict[str, collections.Counter[str]] = field(default_factory=_counters)

    def add(self, group: str, codes: list[CodeType]) -> None:
        if codes[0].co_name in IDLE:
            self.idle[group] += 1
            return
        self.busy[group] += 1
        self.self_time[group][_where(codes[0])] += 1
        project_leaf = None
        for where in dict.fromkeys(_where(code) for code in codes):
            self.inclusive[group][where] += 1
            if project_leaf is None and where.startswith(PROJECT):
                project_leaf = where
        if project_leaf is not None:
            self.project[group][project_leaf] += 1

    def report(self, interval: float, top: int = 25) -> str:
        elapsed = time.perf_counter() - self.began
        lines = [
            f"wall-clock stack samples every {interval * 1000:g} ms over {elapsed:.1f} s",
            "busy = not idling in the loop or waiting for work; % of that group's busy samples",
            "",
        ]
        for group, busy in self.busy.most_common():
            lines.append(f"== {group}: {busy} busy samples, {self.idle[group]} idle")
            for title, counter in (
                ("self (top of stack)", self.self_time[group]),
                ("innermost project frame", self.project[group]),
                ("inclusive (anywhere on the stack)", self.inclusive[group]),
            ):
                lines.append(f"  -- {title}")
                for where, count in counter.most_common(top):
                    lines.append(f"  {count / busy * 100:6.1f}%  {where}")
            lines.append("")
        return "\n".join(lines)


class Sampler:
    def __init__(self, out: Path, interval: float = 0.002) -> None:
        self.out = out
        self.interval = interval
        self.total = Profile()
        self.segment = Profile()
        self.segments_written = 0
        self._marks = 0  # incremented by the SIGUSR1 handler
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def start(self) -> None:
        signal.signal(signal.SIGUSR1, self._mark)
        self._thread.start()

    def _mark(self, signum: int, frame: object) -> None:
        self._marks += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(self.total.report(self.interval))

    def _snapshot(self, me: int) -> list[tuple[int, list[CodeType]]]:
        """Every other thread's stack as code objects, leaf first.

        Only code objects are kept: holding a frame would keep its locals alive after it returns (an
        SQLite cursor kept alive makes the next COMMIT fail with "SQL statements in progress").
        """
        stacks = []
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            codes = []
            current: FrameType | None = frame
            while current is not None:
                codes.append(current.f_code)
                current = current.f_back
            stacks.append((ident, codes))
        del frame, current
        return stacks

    def _end_segment(self) -> None:
        target = self.out.with_name(f"{self.out.name}.seg{self.segments_written}")
        target.write_text(self.segment.report(self.interval))
        self.segments_written += 1
        self.segment = Profile()

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            while self.segments_written < self._marks:
                self._end_segment()
            stacks = self._snapshot(me)
            names = {thread.ident: thread.name for thread in threading.enumerate()}
            for ident, codes in stacks:
                if codes:
                    group = _group(names.get(ident, "?"))
                    self.total.add(group, codes)
                    self.segment.add(group, codes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sampler")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=0.002)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="-- then the arguments of fhir_api.cli")
    args = parser.parse_args(argv)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    from fhir_api.cli import main as cli_main

    args.out.parent.mkdir(parents=True, exist_ok=True)
    sampler = Sampler(args.out, args.interval)
    sampler.start()
    try:
        return cli_main(rest)
    finally:
        sampler.stop()


if __name__ == "__main__":
    raise SystemExit(main())
