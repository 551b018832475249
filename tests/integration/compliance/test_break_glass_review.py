"""The break-the-glass review list against the signed audit log: a removed row is found by ``ehr verify``."""

from __future__ import annotations

from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.auth import mint_development_token
from fhir_api.services import Services
from tests.integration.compliance.conftest import Cli

FHIR = {"Content-Type": "application/fhir+json"}
GLASS = {"X-EHR-Break-Glass": "paciente inconsciente en urgencias"}


def _auth(settings: Settings, institution: str, user: str) -> dict[str, str]:
    claims = {"institution": institution, "user": user, "scope": "user/*.cruds"}
    return {"Authorization": f"Bearer {mint_development_token(settings, claims)}"}


def test_deleted_break_glass_review_row_fails_verify(settings: Settings, ehr: Cli) -> None:
    secured = settings.model_copy(update={"auth": "required"})
    services = Services.open(secured)
    try:
        with TestClient(create_app(services=services)) as client:
            imss, issste = _auth(secured, "IMSS", "dr.imss"), _auth(secured, "ISSSTE", "dr.issste")
            patient = {"resourceType": "Patient", "name": [{"family": "Robles"}]}
            pid = client.post("/fhir/Patient", json=patient, headers=FHIR | imss).json()["id"]
            for _ in range(2):
                read = client.get(f"/fhir/Patient/{pid}", headers=issste | GLASS)
                assert read.headers.get("x-ehr-break-glass") == "granted"
            assert services.compliance is not None
            services.compliance.audit_writer.flush()
    finally:
        services.close()
    assert ehr("verify", "--log", "audit", "--quiet") == 0
    views = Services.open(secured, follow=False)
    try:
        with views.views.write() as tx:
            tx.execute("DELETE FROM break_glass_log WHERE recorded = (SELECT MAX(recorded) FROM break_glass_log)")
    finally:
        views.close()
    assert ehr("verify", "--log", "audit", "--quiet") == 1
    # The clinical log is intact; the default checks the audit log too, so the store as a whole is not.
    assert ehr("verify", "--log", "clinical", "--quiet") == 0
    assert ehr("verify", "--quiet") == 1
