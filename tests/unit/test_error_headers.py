"""Errors carry their response headers, mapped once in fhir_api/errors.py (handlers raise, never build)."""

from __future__ import annotations

import orjson
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ehr_core.errors import Deleted, NotFound
from fhir_api.errors import ApiError, headers_of, install_error_handlers


def test_a_deleted_version_answers_with_its_etag_and_when_it_went() -> None:
    gone = Deleted("Patient/p was deleted (version 2)", version=2, last_updated="2024-05-01T10:00:00+00:00")
    assert headers_of(gone) == {"ETag": 'W/"2"', "Last-Modified": "Wed, 01 May 2024 10:00:00 GMT"}
    assert headers_of(Deleted("Group/g was deleted")) is None  # nothing known of the retraction: no header
    assert headers_of(NotFound("Patient/q is not known")) is None


def test_an_http_error_carries_the_headers_it_was_given() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/busy")
    def busy() -> None:
        raise ApiError("unavailable", "try later", "transient", headers={"Retry-After": "5"})

    @app.get("/gone")
    def gone() -> None:
        raise Deleted("Patient/p was deleted (version 3)", version=3, last_updated="2024-05-01T10:00:00Z")

    client = TestClient(app)
    busy_answer = client.get("/busy")
    assert busy_answer.status_code == 503 and busy_answer.headers["retry-after"] == "5"
    gone_answer = client.get("/gone")
    assert gone_answer.status_code == 410
    assert gone_answer.headers["etag"] == 'W/"3"'
    assert gone_answer.headers["last-modified"] == "Wed, 01 May 2024 10:00:00 GMT"
    issue = orjson.loads(gone_answer.content)["issue"][0]
    assert issue["code"] == "deleted" and "version 3" in issue["diagnostics"]
