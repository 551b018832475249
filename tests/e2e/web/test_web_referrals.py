"""Referral and counter-referral in the web view, auth on, headless Chromium against a real server process: an
IMSS-Bienestar clinician refers a patient to an ISSSTE unit from the unified record; the ISSSTE clinician, refused
the record (the access-denied page offers consent, referral or break-the-glass, in Spanish and in English), finds
the referral in the unit's inbox, accepts it, opens the record without breaking the glass, records the encounter
and the counter-referral note; the IMSS-Bienestar clinician sees the answer. Then the consent panel: record a
consent with a deny provision, see who may read and why, revoke it. Every step is checked in the audit log
(AuditEvent) and the change trail (Provenance), read through the API with each side's token."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e.web.conftest import UNIT_NAMES, UNITS, Console, Demo, mint_token, shoot

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.xdist_group("web-view-referrals")]

REFERRER = ("IMSS-BIENESTAR", "dr.rural.referencia")
RECEIVER = ("ISSSTE", "dra.hospital.recepcion")
NOTE = "Contrarreferencia: ecocardiograma sin alteraciones; continuar control en su unidad."


def _sign_in(page: Any, demo: Demo, token: str) -> None:
    page.goto(f"{demo.base_url}/web/login")
    page.get_by_test_id("token").fill(token)
    page.get_by_test_id("token-submit").click()
    page.wait_for_load_state()


def _entries(http: httpx.Client, demo: Demo, token: str, kind: str, **params: str) -> list[dict[str, Any]]:
    answer = http.get(
        f"{demo.base_url}/fhir/{kind}", params=params | {"_count": "200"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200, answer.text
    return [e["resource"] for e in answer.json().get("entry", [])]


def _user(event: dict[str, Any]) -> str:
    return str(event["agent"][0]["who"]["identifier"]["value"])


def _changes(http: httpx.Client, demo: Demo, token: str, target: str) -> list[tuple[str, str]]:
    """(activity, user) of every Provenance of ``target`` (a change of the record: who wrote which version)."""
    return sorted(
        (p["activity"]["coding"][0]["code"], p["agent"][0]["who"]["identifier"]["value"])
        for p in _entries(http, demo, token, "Provenance", target=target)
    )


def test_referral_accepted_answered_and_consent(page: Any, console: Console, web_server_auth: Demo) -> None:
    demo = web_server_auth
    page.on("dialog", lambda dialog: dialog.accept())  # "revoke this consent?"
    referrer = mint_token(demo.data_dir, REFERRER[0], REFERRER[1])
    receiver = mint_token(demo.data_dir, RECEIVER[0], RECEIVER[1])
    bearer = {"Authorization": f"Bearer {referrer}", "Content-Type": "application/fhir+json"}
    with httpx.Client(timeout=30) as http:
        # A patient of the rural IMSS-Bienestar unit, with a glucose measurement, registered there only.
        patient = {"resourceType": "Patient", "name": [{"family": "Quintanilla", "given": ["Eufrosina"]}],
                   "gender": "female", "birthDate": "1961-03-14"}  # fmt: skip
        answer = http.post(f"{demo.base_url}/fhir/Patient", json=patient, headers=bearer)
        assert answer.status_code == 201, answer.text
        pid = answer.json()["id"]
        glucose = {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{pid}"},
                   "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}], "text": "Glucosa"},
                   "effectiveDateTime": "2025-05-02T09:00:00-06:00",
                   "valueQuantity": {"value": 212, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                                     "code": "mg/dL"}}  # fmt: skip
        answer = http.post(f"{demo.base_url}/fhir/Observation", json=glucose, headers=bearer)
        assert answer.status_code == 201, answer.text

        # 1. IMSS-Bienestar refers the patient to the ISSSTE hospital from the unified record.
        _sign_in(page, demo, referrer)
        page.goto(f"{demo.base_url}/web/patients/{pid}")
        form = page.get_by_test_id("referral-form")
        assert UNITS[REFERRER[0]] in form.inner_text()  # from the signed-in unit
        form.get_by_test_id("referral-unit").select_option(UNITS[RECEIVER[0]])
        form.get_by_test_id("referral-service").fill("Valoración por cardiología")
        form.get_by_test_id("referral-reason").fill("Dolor torácico de esfuerzo en paciente diabética")
        form.get_by_test_id("referral-priority").select_option("urgent")
        shoot(page, "20-referral-form")
        form.get_by_role("button", name="Enviar referencia").click()
        page.wait_for_load_state()
        assert "Referencia enviada" in page.get_by_test_id("done").inner_text()
        row = page.locator("[data-testid=patient-referrals] tbody tr")
        assert row.count() == 1
        assert "solicitada" in row.inner_text() and UNIT_NAMES[UNITS[RECEIVER[0]]] in row.inner_text()
        task = row.get_attribute("data-task")
        assert task

        # 2. ISSSTE may not open the record yet: the page offers the ways in, in the reader's language only.
        _sign_in(page, demo, receiver)
        page.goto(f"{demo.base_url}/web/patients/{pid}")
        assert page.locator("h1").inner_text() == "Acceso restringido"
        choices = page.get_by_test_id("access-choices")
        for choice, words in (("consent", "consentimiento"), ("referral", "Referencia"), ("break-glass", "cristal")):
            assert words in choices.get_by_test_id(f"choice-{choice}").inner_text()
        spanish = page.inner_text("main")
        assert "403" in spanish and "may not" not in spanish and "institution" not in spanish, spanish
        shoot(page, "21-access-denied-es")
        page.goto(f"{demo.base_url}/web/patients/{pid}?lang=en")
        assert page.locator("h1").inner_text() == "Restricted access"
        english = page.get_by_test_id("access-choices").inner_text()
        assert "consent" in english and "referral" in english and "Break the glass" in english
        assert "Pedir" not in english
        shoot(page, "22-access-denied-en")
        page.goto(f"{demo.base_url}/web/referrals?lang=es")

        # 3. ISSSTE finds it in its unit's inbox and accepts it.
        received = page.locator(f"[data-testid=received] tr[data-task='{task}']")
        assert received.count() == 1
        assert "Dolor torácico" in received.inner_text() and UNITS[REFERRER[0]] in received.inner_text()
        shoot(page, "23-inbox-received")
        received.get_by_test_id("accept").click()
        page.wait_for_load_state()
        assert "Referencia aceptada" in page.get_by_test_id("done").inner_text()
        accepted = page.locator(f"[data-testid=accepted] tr[data-task='{task}']")
        assert "aceptada" in accepted.inner_text()
        assert page.locator(f"[data-testid=received] tr[data-task='{task}']").count() == 0

        # 4. The unified record opens without breaking the glass; the grant says why and since when.
        accepted.get_by_test_id("referral-patient").click()
        page.wait_for_load_state()
        assert page.get_by_test_id("patient-name").inner_text() == "Eufrosina Quintanilla"
        assert page.get_by_test_id("break-glass-active").count() == 0
        assert page.get_by_test_id("problem").count() == 0
        assert page.locator("[data-testid=chart] svg circle").count() >= 1  # the glucose IMSS-Bienestar measured
        grant = page.locator(f"[data-testid=grants] tr[data-basis=referral][data-active=true]:has-text('Task/{task}')")
        assert grant.count() == 1 and "ISSSTE" in grant.inner_text()
        shoot(page, "24-record-under-referral", full_page=True)

        # 5. ISSSTE records the encounter and the counter-referral, completing the referral.
        page.goto(f"{demo.base_url}/web/referrals")
        accepted = page.locator(f"[data-testid=accepted] tr[data-task='{task}']")
        accepted.get_by_test_id("counter-referral-note").fill(NOTE)
        accepted.get_by_test_id("complete").click()
        page.wait_for_load_state()
        assert "contrarreferencia registradas" in page.get_by_test_id("done").inner_text()
        closed = page.locator(f"[data-testid=closed] tr[data-task='{task}']")
        assert "concluida" in closed.inner_text()

        # 6. IMSS-Bienestar sees the answer: in the sent referrals of its unit and on the record.
        _sign_in(page, demo, referrer)
        page.goto(f"{demo.base_url}/web/referrals")
        sent = page.locator(f"[data-testid=sent] tr[data-task='{task}']")
        assert "concluida" in sent.inner_text()
        assert NOTE in sent.get_by_test_id("counter-referral").inner_text()
        shoot(page, "25-inbox-sent-answered")
        page.goto(f"{demo.base_url}/web/patients/{pid}")
        assert NOTE in page.locator(f"[data-testid=patient-referrals] tr[data-task='{task}']").inner_text()

        # 7. The consent panel: share with IMSS only, keeping mental health back; then revoke it.
        consent_form = page.get_by_test_id("consent-form")
        consent_form.locator("input[name=share][value=named]").check()
        consent_form.locator("input[name=institution][value=IMSS]").check()
        consent_form.locator("input[name=deny][value=PSY]").check()
        consent_form.get_by_role("button", name="Registrar consentimiento").click()
        page.wait_for_load_state()
        assert "Consentimiento registrado" in page.get_by_test_id("done").inner_text()
        consent = page.locator("[data-testid=consents] tbody tr")
        assert consent.count() == 1 and consent.get_attribute("data-status") == "active"
        assert "IMSS" in consent.inner_text() and "Salud mental" in consent.inner_text()
        consent_id = consent.get_attribute("data-consent")
        assert page.locator("[data-testid=grants] tr[data-basis=consent][data-active=true]").count() == 1
        shoot(page, "26-consent-panel", full_page=True)
        consent.get_by_role("button", name="Revocar").click()
        page.wait_for_load_state()
        assert "Consentimiento revocado" in page.get_by_test_id("done").inner_text()
        assert page.locator("[data-testid=consents] tbody tr").get_attribute("data-status") == "inactive"
        assert page.locator("[data-testid=grants] tr[data-basis=consent]").count() == 0

        # Each step in the trail, with the user who took it. Changes (Provenance): the Task created by the
        # referring clinician and moved by the receiving one (accepted, in-progress, completed); the encounter
        # and note written by the receiving clinician; the consent recorded and revoked.
        assert _changes(http, demo, referrer, f"Task/{task}") == [
            ("CREATE", REFERRER[1]), *[("UPDATE", RECEIVER[1])] * 3
        ]  # fmt: skip
        completed = next(t for t in _entries(http, demo, referrer, "Task", _id=task))
        assert completed["status"] == "completed"
        outputs = [o["valueReference"]["reference"] for o in completed["output"] if "valueReference" in o]
        assert [o.split("/")[0] for o in outputs] == ["Encounter", "DocumentReference"]
        for output in outputs:
            assert _changes(http, demo, receiver, output) == [("CREATE", RECEIVER[1])]
        assert _changes(http, demo, referrer, f"Consent/{consent_id}") == [
            ("CREATE", REFERRER[1]), ("UPDATE", REFERRER[1])
        ]  # fmt: skip
        # Accesses (AuditEvent): the referral sent as one transaction; the receiver's reads of the Task and of
        # the unified record answered under the referral grant (not break-the-glass), its refused look before.
        sent_events = _entries(http, demo, referrer, "AuditEvent", subtype="transaction")
        assert any(_user(e) == REFERRER[1] and e["outcome"] == "0" for e in sent_events)
        events = [
            e for e in _entries(http, demo, receiver, "AuditEvent", entity=f"Patient/{pid}") if _user(e) == RECEIVER[1]
        ]
        refused = [e for e in events if e["subtype"][0]["code"] == "operation" and e["outcome"] != "0"]
        assert refused, events
        granted = [e for e in events if e["outcome"] == "0" and f"Task/{task}" in e.get("outcomeDesc", "")]
        assert any(e["subtype"][0]["code"] == "operation" for e in granted), events
        purposes = {c["code"] for e in granted for p in e.get("purposeOfEvent", []) for c in p.get("coding", [])}
        assert "BTG" not in purposes
        updates = [e for e in _entries(http, demo, receiver, "AuditEvent", entity=f"Task/{task}")
                   if _user(e) == RECEIVER[1] and e["subtype"][0]["code"] == "update"]  # fmt: skip
        assert len(updates) == 3 and all(e["outcome"] == "0" for e in updates)
    assert console.errors == []
