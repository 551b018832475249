"""Which rest-hook endpoints the server sends to: https, or http on loopback only (never elsewhere)."""

from __future__ import annotations

import pytest

from fhir_api.subscriptions import endpoint_allowed


@pytest.mark.parametrize(
    "endpoint",
    ["https://hooks.example.org/fhir", "http://127.0.0.1:9000/hook", "http://127.8.9.1/", "http://[::1]:80/",
     "http://localhost:8080/x"],
)  # fmt: skip
def test_allowed(endpoint: str) -> None:
    assert endpoint_allowed(endpoint, allow_http=False)


@pytest.mark.parametrize(
    "endpoint",
    ["http://hooks.example.org/fhir", "http://10.1.2.3/", "ftp://127.0.0.1/", "file:///etc/passwd", "https://",
     "http://localhost.example.org/", ""],
)  # fmt: skip
def test_refused(endpoint: str) -> None:
    assert not endpoint_allowed(endpoint, allow_http=False)


def test_development_allows_plain_http_elsewhere_but_never_other_schemes() -> None:
    assert endpoint_allowed("http://hooks.example.org/fhir", allow_http=True)
    assert not endpoint_allowed("ftp://hooks.example.org/", allow_http=True)
