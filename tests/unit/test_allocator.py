"""The server caps glibc's malloc arenas (memory growth under sustained traffic)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from fhir_api.allocator import DEFAULT_ARENAS

_CHILD = """
import os
from fhir_api.allocator import limit_malloc_arenas
print(limit_malloc_arenas(), os.environ.get("MALLOC_ARENA_MAX"))
"""


def _run(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_the_cap_is_set_and_passed_on_to_worker_processes() -> None:
    assert _run({"PATH": "/usr/bin:/bin"}) == f"True {DEFAULT_ARENAS}"


def test_the_operators_choice_stands() -> None:
    assert _run({"PATH": "/usr/bin:/bin", "MALLOC_ARENA_MAX": "8"}) == "False 8"
