"""Resident memory of a process and its descendants, sampled from ``/proc`` by a background thread.

A server started with ``--workers N`` or an import with its projector process is a tree of processes:
the tree's RSS (the sum of ``VmRSS``) is what the machine must hold. Shared pages (a forked parent's
code) are counted once per process, so the sum errs high, never low.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["RssSampler", "descendants", "tree_rss_mb"]


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def descendants(pids: Iterable[int]) -> list[int]:
    """``pids`` and all their descendants, each once."""
    tree = _children()
    found: list[int] = []
    pending = list(pids)
    while pending:
        current = pending.pop()
        if current not in found:
            found.append(current)
            pending.extend(tree.get(current, []))
    return found


def tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` and every descendant, in MiB (0 once the process is gone)."""
    return sum(_rss_kb(each) for each in descendants([pid])) / 1024


@dataclass
class RssSampler:
    """Samples :func:`tree_rss_mb` every ``interval`` seconds between :meth:`start` and :meth:`stop`."""

    pid: int
    interval: float = 0.2
    samples: list[float] = field(default_factory=list)
    #: The largest single process's RSS at each sample (with several server processes, the per-process figure).
    largest: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            each = [_rss_kb(pid) / 1024 for pid in descendants([self.pid])]
            if sum(each):
                self.samples.append(sum(each))
                self.largest.append(max(each))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def peak_mb(self) -> float:
        return max(self.samples, default=float("nan"))

    @property
    def last_mb(self) -> float:
        return self.samples[-1] if self.samples else float("nan")
