"""Processes as Linux's ``/proc`` shows them: a command's children, and whether one still runs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

__all__ = ["children", "command_line", "end_of", "listens_on", "running"]


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # ended meanwhile
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits for its new parent


def command_line(pid: int) -> list[str]:
    """The arguments ``pid`` was started with ([] once it has ended)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def end_of(pids: list[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` seconds for ``pids`` to end; SIGKILL those still running then, and return them.

    A server's projection worker finishes its current batch after the server ends: a test that drops the
    server's schema must wait for it, or the drop and the batch wait on each other (the batch holds one table
    and waits, in the worker, for a read of another that the drop already holds: a cycle PostgreSQL cannot see).
    """
    deadline = time.monotonic() + timeout
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in pids if running(pid)]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    return left


def listens_on(pid: int, port: int) -> bool:
    """Whether ``pid`` holds the socket listening on TCP ``port``.

    A port chosen free may be taken by another test's server before this one binds it: that one then answers
    the readiness check while this one fails to bind and exits. Checking who holds the listening socket tells
    the two apart.
    """
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:  # 0A: LISTEN
                listening.add(f"socket:[{fields[9]}]")
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(descriptor) in listening:
                return True
        except OSError:
            continue
    return False
