"""End-to-end fixtures: a real server process (tests/support/server.py), and the pinned npm clients.

``node_clients``: the npm packages of tests/e2e/clients/package.json at the versions its lockfile pins,
installed once per lockfile (``npm ci``) under ``build/e2e-clients/`` (ignored by git), with the client
scripts beside ``node_modules``. Without Node.js or npm, or if the registry cannot be reached, the cases
needing them are skipped, except under ``CI=true``, where they fail (as tests/conftest.py does for PostgreSQL).
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.support.server import REPO, fhir_server

__all__ = ["fhir_server", "node_clients"]

CLIENTS = Path(__file__).resolve().parent / "clients"
#: Seconds for ``npm ci`` (a few hundred packages).
NPM_TIMEOUT = 600
#: The oldest Node.js with a global ``fetch``, which both JS clients use.
NODE_MAJOR = 18


def _unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(message + " (required under CI=true)", pytrace=False)
    pytest.skip(message)


def _node_version(node: str) -> int:
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=60, check=True).stdout
    return int(version.strip().lstrip("v").split(".", 1)[0])


@pytest.fixture(scope="session")
def node_clients() -> Path:
    """A directory holding the pinned npm packages and the client scripts (``npm ci`` once per lockfile)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("Node.js and npm are needed to run the JS FHIR clients")
    assert node is not None and npm is not None
    if _node_version(node) < NODE_MAJOR:
        _unavailable(f"the JS FHIR clients need Node.js {NODE_MAJOR} or later")
    lock = (CLIENTS / "package-lock.json").read_bytes()
    package = (CLIENTS / "package.json").read_bytes()
    home = REPO / "build" / "e2e-clients" / hashlib.sha256(package + lock).hexdigest()[:16]
    home.mkdir(parents=True, exist_ok=True)
    # Parallel workers share the directory: one installs, the others wait for it.
    with (home / ".lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        installed = home / ".installed"
        if not installed.exists():
            (home / "package.json").write_bytes(package)
            (home / "package-lock.json").write_bytes(lock)
            command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
            done = subprocess.run(command, cwd=home, capture_output=True, text=True, timeout=NPM_TIMEOUT)
            if done.returncode != 0:
                _unavailable(f"npm ci failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
            installed.touch()
        for script in [*CLIENTS.glob("*.mjs"), *CLIENTS.glob("*.cjs")]:  # beside node_modules, where imports resolve
            shutil.copyfile(script, home / script.name)
    return home
