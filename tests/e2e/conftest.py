"""End-to-end fixtures: a real server process (tests/support/server.py)."""

from tests.support.server import fhir_server

__all__ = ["fhir_server"]
