"""Files the server writes are its owner's only: 0600 files in 0700 directories.

The data dir holds patients' records (the SQLite logs and views, bulk exports), the keys that decrypt and
sign them, and the audit trail: nothing there is for other local users. Two layers, because either can
be missed: :func:`private_umask` at the start of every ``ehr`` command that writes (so files created by
libraries — SQLite's ``-wal``/``-shm``, uvicorn — are private too), and an explicit mode wherever the
project creates a file or directory (a server built in process, as the tests do, never went through
the command line's umask).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "private_dir",
    "private_file",
    "private_sqlite",
    "private_tree",
    "private_umask",
    "write_private",
]

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_umask() -> int:
    """Make every file this process creates from now on owner-only; return the previous umask."""
    return os.umask(0o077)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700; an existing directory is narrowed to 0700."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _narrow(path, DIR_MODE)
    return path


def private_file(path: Path) -> None:
    """Narrow an existing file to 0600 (no-op if it does not exist)."""
    with contextlib.suppress(FileNotFoundError):
        _narrow(path, FILE_MODE)


def private_sqlite(path: Path) -> Path:
    """Before SQLite opens ``path``: create it empty as 0600 if absent (SQLite gives its ``-wal``,
    ``-shm`` and journal files the main file's mode), and narrow what is already there."""
    private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        private_file(name)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as a 0600 file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    _narrow(path, FILE_MODE)


def private_tree(root: Path) -> None:
    """Narrow everything under ``root`` (files written before this rule, by an older version or another
    tool) to 0600 files and 0700 directories. Symbolic links are not followed."""
    if not root.is_dir():
        return
    _narrow(root, DIR_MODE)
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            _narrow(Path(directory, name), DIR_MODE)
        for name in files:
            private_file(Path(directory, name))


def _narrow(path: Path, mode: int) -> None:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
        return  # not ours to change (a link to a shared file, a file provided by the operator as another user)
    if stat.S_IMODE(info.st_mode) & ~mode:
        os.chmod(path, stat.S_IMODE(info.st_mode) & mode)
