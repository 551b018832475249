"""Small FHIR REST steps shared by the API tests."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

__all__ = ["FHIR_JSON", "put"]

FHIR_JSON = {"content-type": "application/fhir+json"}


def put(client: TestClient, resource: dict[str, Any]) -> None:
    """Create or update ``resource`` at its own id (R4 §3.1.0.4 update as create); 200 or 201 expected."""
    response = client.put(
        f"/fhir/{resource['resourceType']}/{resource['id']}", content=json.dumps(resource), headers=FHIR_JSON
    )
    assert response.status_code in (200, 201), response.text
