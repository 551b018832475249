"""The e2e servers' readiness check tells this test's server from another that took its port first."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.support.processes import listens_on


def test_the_listening_socket_is_found_in_its_process_only() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert listens_on(os.getpid(), port)
        with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as other:
            try:
                assert not listens_on(other.pid, port)  # alive, but not the one listening
            finally:
                other.kill()
    assert not listens_on(os.getpid(), port)  # closed
