"""What the access-policy tests share: a Consent as a custodian writes it, and a secured server per backend."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.auth import mint_development_token
from fhir_api.services import Services
from tests.support.schemas import drop_schema

__all__ = [
    "INSTITUTION_SYSTEM",
    "REFERRAL",
    "consent",
    "referral",
    "referral_task",
    "secured_client",
    "secured_server",
    "staff_headers",
]

INSTITUTION_SYSTEM = "urn:ehr-core:institution"


def consent(patient: str, reader: str, period: dict[str, str] | None = None, status: str = "active") -> dict[str, Any]:
    """A privacy Consent of ``Patient/patient`` permitting ``reader`` (an institution) to read the record."""
    actor = {"role": {"text": "reader"}, "reference": {"identifier": {"system": INSTITUTION_SYSTEM, "value": reader}}}
    provision: dict[str, Any] = {"type": "permit", "actor": [actor]}
    if period is not None:
        provision["period"] = period
    return {
        "resourceType": "Consent",
        "status": status,
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "policyRule": {"text": "LGPDPPSO"},
        "provision": provision,
    }


@contextmanager
def secured_client(settings: Settings, data_dir: Path) -> Iterator[tuple[TestClient, Settings]]:
    """A server with authentication on over the backend of ``settings`` (a test's ``settings`` fixture), its
    files in ``data_dir``."""
    configured = settings.model_copy(update={"auth": "required", "data_dir": data_dir})
    services = Services.open(configured)
    try:
        with TestClient(create_app(services=services)) as client:
            yield client, configured
    finally:
        services.close()


@contextmanager
def secured_server(
    request: pytest.FixtureRequest, backend: str, data_dir: Path
) -> Iterator[tuple[TestClient, Services, Settings]]:
    """A server with authentication on over ``backend`` (``sqlite`` or ``postgres``: a schema of its own,
    dropped afterwards), for module-scoped worlds that build their data once."""
    schema = None
    if backend == "sqlite":
        settings = Settings(data_dir=data_dir, auth="required")
    else:
        url: str = request.getfixturevalue("postgres_url")
        schema = f"t_{uuid.uuid4().hex[:12]}"
        settings = Settings(
            database_url=url, postgres_schema=schema, postgres_pool_size=2, data_dir=data_dir, auth="required"
        )
    services = Services.open(settings)
    try:
        with TestClient(create_app(services=services)) as client:
            yield client, services, settings
    finally:
        services.close()
        if schema is not None:
            drop_schema(settings.postgres_conninfo(), schema)


def staff_headers(settings: Settings, institution: str, scope: str = "user/*.cruds") -> dict[str, str]:
    """A physician's bearer token at ``institution``, from the development issuer of ``settings``."""
    claims = {"institution": institution, "user": "dr.x", "role": "physician", "scope": scope}
    return {"Authorization": f"Bearer {mint_development_token(settings, claims)}"}


REFERRAL = {"system": "http://snomed.info/sct", "code": "3457005", "display": "Patient referral"}


def referral(patient: str, referrer_unit: str, receiver: str, reason: str = "E11.9") -> dict[str, Any]:
    """A referral ServiceRequest of ``Patient/patient`` from the unit ``referrer_unit`` (CLUES) to ``receiver``."""
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "category": [{"coding": [REFERRAL]}],
        "priority": "urgent",
        "code": {"text": "Valoración por medicina interna"},
        "subject": {"reference": f"Patient/{patient}"},
        "requester": {"identifier": {"system": "urn:oid:2.16.840.1.113883.4.631", "value": referrer_unit}},
        "performer": [{"identifier": {"system": INSTITUTION_SYSTEM, "value": receiver}}],
        "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": reason}]}],
    }


def referral_task(patient: str, request: str, receiver: str, status: str = "requested") -> dict[str, Any]:
    """The Task tracking the referral ServiceRequest ``request``, owned by the receiving institution."""
    return {
        "resourceType": "Task",
        "status": status,
        "intent": "order",
        "focus": {"reference": f"ServiceRequest/{request}"},
        "for": {"reference": f"Patient/{patient}"},
        "owner": {"identifier": {"system": INSTITUTION_SYSTEM, "value": receiver}},
    }
