"""What the record page's sharing panels and the referral inbox read through the FHIR API: the units a
referral may go to (``Location`` with a CLUES, managed by an institution's ``Organization``), the referral
Tasks of an institution and unit with their ServiceRequests, and who may read a record (``$access-grants``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ehr_core.referrals import INSTITUTION_SYSTEM
from fhir_api.web.consents import ConsentRow, consent_row
from fhir_api.web.fhir_client import InternalFhir
from fhir_api.web.record import CLUES_SYSTEM, source_of
from fhir_api.web.referrals import Referral, Unit, referral_of
from fhir_api.web.session import Session

__all__ = ["Grant", "Inbox", "Panel", "inbox", "panel", "units"]

#: The most Tasks one inbox list reads (newest first); the API pages beyond, the page says so.
INBOX_COUNT = 200


async def units(fhir: InternalFhir) -> dict[str, Unit]:
    """Every establishment with a CLUES, by CLUES, with the institution of its managing Organization."""
    locations, organizations = await asyncio.gather(
        fhir.get("/fhir/Location", {"_count": "1000"}), fhir.get("/fhir/Organization", {"_count": "1000"})
    )
    institution_of: dict[str, str] = {}
    for entry in (organizations.json() or {}).get("entry", []) if organizations.ok else []:
        organization = entry.get("resource") or {}
        for identifier in organization.get("identifier") or []:
            if identifier.get("system") == INSTITUTION_SYSTEM and identifier.get("value"):
                institution_of[f"Organization/{organization.get('id')}"] = str(identifier["value"])
    found: dict[str, Unit] = {}
    for entry in (locations.json() or {}).get("entry", []) if locations.ok else []:
        location = entry.get("resource") or {}
        clues = next((str(i["value"]) for i in location.get("identifier") or [] if i.get("system") == CLUES_SYSTEM), "")
        manager = str((location.get("managingOrganization") or {}).get("reference") or "")
        if clues and manager in institution_of:
            found[clues] = Unit(
                str(location.get("id")), clues, str(location.get("name") or clues), institution_of[manager]
            )
    return dict(sorted(found.items(), key=lambda item: (item[1].institution, item[1].name)))


@dataclass
class Grant:
    """One line of ``$access-grants``: who may read which record, why, from when until when."""

    patient: str
    institution: str
    basis: str
    source: str
    start: str
    end: str
    active: bool


@dataclass
class Panel:
    """The record page's sharing panels."""

    #: the signed-in institution's own Patient record of this person (what it may refer and consent for)
    own_record: str | None
    institution: str
    unit: Unit | None
    targets: list[Unit] = field(default_factory=list)
    consents: list[ConsentRow] = field(default_factory=list)
    referrals: list[Referral] = field(default_factory=list)
    grants: list[Grant] = field(default_factory=list)
    institutions: list[str] = field(default_factory=list)


def _grants(document: Any) -> list[Grant]:
    grants = []
    for parameter in (document or {}).get("parameter") or []:
        if parameter.get("name") != "grant":
            continue
        parts = {
            p.get("name"): next((v for k, v in p.items() if k.startswith("value")), None) for p in parameter["part"]
        }
        grants.append(
            Grant(
                patient=str((parts.get("patient") or {}).get("reference", "")).removeprefix("Patient/"),
                institution=str(parts.get("institution") or ""),
                basis=str(parts.get("basis") or ""),
                source=str((parts.get("source") or {}).get("reference", "")),
                start=str(parts.get("start") or "")[:16].replace("T", " "),
                end=str(parts.get("end") or "")[:16].replace("T", " "),
                active=bool(parts.get("active")),
            )
        )
    return grants


async def panel(
    fhir: InternalFhir, session: Session, patient_id: str, resources: list[dict[str, Any]], reason: str | None
) -> Panel:
    """The consent and referral panels of the unified record whose resources ``$everything`` gave."""
    institution = session.who.get("institution", "")
    directory, grants = await asyncio.gather(
        units(fhir), fhir.get(f"/fhir/Patient/{patient_id}/$access-grants", break_glass=reason)
    )
    own = next(
        (
            str(r.get("id"))
            for r in resources
            if r.get("resourceType") == "Patient" and institution and source_of(r)[0] == institution
        ),
        None,
    )
    requests = {str(r.get("id")): r for r in resources if r.get("resourceType") == "ServiceRequest"}
    now = datetime.now(UTC)
    referrals = [
        referral_of(r, requests, directory, now)
        for r in resources
        if r.get("resourceType") == "Task"
        and str((r.get("focus") or {}).get("reference", "")).startswith("ServiceRequest/")
    ]
    consents = [consent_row(r) for r in resources if r.get("resourceType") == "Consent"]
    return Panel(
        own_record=own,
        institution=institution,
        unit=directory.get(session.who.get("unit", "")),
        targets=[u for u in directory.values() if u.institution != institution],
        consents=sorted(consents, key=lambda c: c.updated, reverse=True),
        referrals=sorted(referrals, key=lambda r: r.authored, reverse=True),
        grants=_grants(grants.json()) if grants.ok else [],
        institutions=sorted({u.institution for u in directory.values()} - {institution}),
    )


@dataclass
class Inbox:
    """An institution's (or one unit's) referrals: received ones by state, and sent ones with their answers."""

    scope: str
    institution: str
    unit: Unit | None
    received: list[Referral] = field(default_factory=list)
    accepted: list[Referral] = field(default_factory=list)
    overdue: list[Referral] = field(default_factory=list)
    closed: list[Referral] = field(default_factory=list)
    sent: list[Referral] = field(default_factory=list)
    problem: str | None = None


async def _tasks(fhir: InternalFhir, query: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
    answer = await fhir.get("/fhir/Task", query | {"_include": "Task:focus", "_count": str(INBOX_COUNT)})
    if not answer.ok:
        return [], {}, answer.problem()
    entries = [e.get("resource") or {} for e in (answer.json() or {}).get("entry", [])]
    tasks = [r for r in entries if r.get("resourceType") == "Task"]
    requests = {str(r.get("id")): r for r in entries if r.get("resourceType") == "ServiceRequest"}
    return tasks, requests, None


async def inbox(fhir: InternalFhir, session: Session, scope: str) -> Inbox:
    """``scope`` ``unit``: the referrals addressed to the signed-in unit and sent from it; ``institution``:
    all of the institution's units."""
    institution = session.who.get("institution", "")
    directory = await units(fhir)
    unit = directory.get(session.who.get("unit", ""))
    scope = "unit" if scope == "unit" and unit is not None else "institution"
    mine = [u for u in directory.values() if u.institution == institution]
    senders = [unit] if scope == "unit" and unit is not None else mine
    found = Inbox(scope, institution, unit)
    if not institution:
        return found
    queries = [{"owner:identifier": f"{INSTITUTION_SYSTEM}|{institution}"}]
    if senders:
        queries.append({"requester:identifier": ",".join(f"{CLUES_SYSTEM}|{u.clues}" for u in senders)})
    answers = await asyncio.gather(*(_tasks(fhir, q) for q in queries))
    now = datetime.now(UTC)
    problems = [p for _, _, p in answers if p]
    found.problem = "; ".join(problems) or None
    received_tasks, received_requests, _ = answers[0]
    for task in received_tasks:
        referral = referral_of(task, received_requests, directory, now)
        if scope == "unit" and unit is not None and referral.receiving_unit not in ("", unit.clues):
            continue
        if referral.overdue:
            found.overdue.append(referral)
        if referral.status == "requested":
            found.received.append(referral)
        elif referral.status in ("accepted", "in-progress", "on-hold"):
            found.accepted.append(referral)
        else:
            found.closed.append(referral)
    if len(answers) > 1:
        sent_tasks, sent_requests, _ = answers[1]
        found.sent = [referral_of(t, sent_requests, directory, now) for t in sent_tasks]
    for listed in (found.received, found.accepted, found.overdue, found.closed, found.sent):
        listed.sort(key=lambda r: r.authored, reverse=True)
    return found
