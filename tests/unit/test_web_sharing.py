"""What the web view's referral and consent forms write is what the access policy reads: a referral Task the
write policy recognises (owned by the receiving institution), a Consent whose grants and deny provisions the
access projection derives; and the inbox's overdue rule (the Task's answer-by date, else its priority's days)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ehr_core.referrals import REFERRAL_CATEGORY, receiving_institution
from fhir_api.web.consents import ACT_CODE, consent_resource, consent_row
from fhir_api.web.referrals import DUE_DAYS, PRIORITIES, Unit, completed, counter_referral, referral_of
from fhir_api.web.referrals import referral_resources as resources
from projections.access import consent_denials, consent_grants

RURAL = Unit("ocimb000123", "OCIMB000123", "Centro de Salud Rural San Juan Bautista", "IMSS-BIENESTAR")
HOSPITAL = Unit("dfist000312", "DFIST000312", "Hospital Regional 1o de Octubre", "ISSSTE")
NOW = datetime(2026, 4, 9, 10, 0, tzinfo=UTC)


def _task(priority: str) -> dict[str, object]:
    _request, task = (e["resource"] for e in resources("p1", RURAL, HOSPITAL, "Cardiología", "Dolor", priority, NOW))
    return task | {"id": "t1", "focus": {"reference": "ServiceRequest/s1"}}


@pytest.mark.parametrize("priority", PRIORITIES)
def test_the_referral_is_one_the_write_policy_addresses_to_the_receiver(priority: str) -> None:
    entries = resources("p1", RURAL, HOSPITAL, "Cardiología", "Dolor torácico", priority, NOW)
    request, task = (e["resource"] for e in entries)
    assert request["category"][0]["coding"][0]["code"] == REFERRAL_CATEGORY[1]
    assert request["requester"]["identifier"]["value"] == RURAL.clues
    assert task["focus"]["reference"] == entries[0]["fullUrl"]
    placed = _task(priority)
    assert receiving_institution(placed, lambda _: None) == HOSPITAL.institution
    referral = referral_of(placed, {"s1": request}, {u.clues: u for u in (RURAL, HOSPITAL)}, NOW)
    assert (referral.receiving_unit, referral.referring_unit, referral.status) == (
        HOSPITAL.clues,
        RURAL.clues,
        "requested",
    )
    assert referral.due == (NOW + timedelta(days=DUE_DAYS[priority])).date().isoformat()


def test_overdue_is_open_past_the_answer_by_date() -> None:
    task = _task("urgent")
    units = {u.clues: u for u in (RURAL, HOSPITAL)}
    late = NOW + timedelta(days=DUE_DAYS["urgent"] + 1)
    assert not referral_of(task, {}, units, NOW).overdue
    assert referral_of(task, {}, units, late).overdue
    assert referral_of(task | {"status": "accepted"}, {}, units, late).overdue
    assert not referral_of(task | {"status": "rejected"}, {}, units, late).overdue
    # A Task without an answer-by date (the demo's): its priority's days from when it was authored.
    bare = {k: v for k, v in task.items() if k != "restriction"} | {"priority": "routine"}
    assert not referral_of(bare, {}, units, NOW + timedelta(days=DUE_DAYS["routine"] - 1)).overdue
    assert referral_of(bare, {}, units, NOW + timedelta(days=DUE_DAYS["routine"] + 1)).overdue


def test_the_counter_referral_reaches_the_referrer_in_the_task() -> None:
    task = _task("routine")
    encounter, note = (e["resource"] for e in counter_referral(task, HOSPITAL, "Continuar control.", NOW))
    assert encounter["subject"] == note["subject"] == {"reference": "Patient/p1"}
    assert encounter["basedOn"] == [{"reference": "ServiceRequest/s1"}]
    done = completed(task, "Encounter/e1", "DocumentReference/d1", "Continuar control.", NOW)
    referral = referral_of(done, {}, {}, NOW)
    assert referral.status == "completed"
    assert referral.note == "Continuar control."
    assert referral.outputs == ["Encounter/e1", "DocumentReference/d1"]


def test_the_consent_grants_and_denies_what_the_form_said() -> None:
    named = consent_resource("p1", ["IMSS", "ISSSTE"], "2026-01-01", "", ["PSY", "ETH"], NOW.isoformat())
    assert sorted(consent_grants(named)) == [("p1", "IMSS", "2026-01-01", None), ("p1", "ISSSTE", "2026-01-01", None)]
    assert sorted(consent_denials(named)) == [
        ("p1", institution, "_security", ACT_CODE, code)
        for institution in ("IMSS", "ISSSTE")
        for code in ("ETH", "PSY")
    ]
    everyone = consent_resource("p1", [], "", "2027-01-01", [], NOW.isoformat())
    assert consent_grants(everyone) == [("p1", "*", None, "2027-01-01")]
    assert consent_denials(everyone) == []
    row = consent_row(named | {"id": "c1"})
    assert (row.institutions, row.denied, row.start) == (["IMSS", "ISSSTE"], ["PSY", "ETH"], "2026-01-01")
    revoked = named | {"status": "inactive"}
    assert consent_grants(revoked) == [] and consent_denials(revoked) == []
