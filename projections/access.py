"""What the access policy needs from the log: who recorded each resource, and active Consents.

- ``resource_owners``: the institution that recorded a resource's first version ("an institution reads
  what it recorded").
- ``consent_grants``: one row per (Consent or referral Task, institution) that lets that institution read a
  patient's record, with its period. A Consent grants while ``active`` with a ``permit`` provision, to the
  institutions named in ``Consent.provision.actor.reference`` by ``identifier`` (system
  ``urn:ehr-core:institution``) or ``display``, or to every institution (``*``) when it names none. A
  referral Task (:mod:`ehr_core.referrals`) grants its receiving institution from acceptance, and until
  ``referral_grant_days`` after completion. A Consent or Task changed to a non-granting state, or deleted,
  stops granting at once (its rows are replaced or removed). Only the custodian grants (DESIGN.md
  "Access"): a Consent or referral takes effect when the institution that recorded the patient's record
  wrote it (or the patient through a patient-facing app, for a Consent); one written by anyone else is kept
  as what it is, a request, and grants nothing. Otherwise any institution could write itself a grant.
- ``consent_denials``: what an active Consent keeps inside the institution that recorded it (its ``deny``
  provisions by class, code or security label).
- ``referral_addressees``: the referral Task and its ServiceRequest, readable by the receiving institution
  from the moment it is requested.

The policy as SQL (:func:`visible_clause`): one predicate, written once and used by every read path (single
reads through :mod:`fhir_api.access`, search matches and ``_include``/``_revinclude``, type and system
history, bulk export), so no path can disagree with another. A resource is visible to an institution when

1. it recorded the resource (``resource_owners``), or
2. the resource's type holds nobody's record (:data:`SHARED_TYPES`: directories, terminology), or
3. it is a referral Task or ServiceRequest addressed to it, or
4. it is in at least one patient compartment, *every* patient of its compartment has a grant (Consent or
   referral) naming the institution, valid now (a Group or a shared Encounter needs all of them, not one),
   and no active Consent of those patients denies it (class, code or security label), or
5. the caller broke the glass (the institution rule is lifted; the request is flagged and logged).

and the caller's SMART scopes cover the type (``user``/``system`` scopes), or a ``patient`` scope covers it
and the resource is in the token patient's compartment. The predicate runs inside the query (correlated
``EXISTS`` on primary keys), so totals and page cursors count only what the caller may see, with no
per-row Python loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, timedelta
from typing import Any

import orjson
from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic

from ehr_core.application import format_instant
from ehr_core.audit import BreakGlassAccess
from ehr_core.referrals import GRANTING, receiving_institution
from projections.changes import Change
from projections.db import Dialect, Tx, ViewDatabase
from projections.projector import Projector
from projections.resources import HistoryEntry, Period, current_during
from projections.view import View

__all__ = [
    "INSTITUTION_SYSTEM",
    "SHARED_TYPES",
    "AccessView",
    "BreakGlassReview",
    "Viewer",
    "access_denials",
    "access_grants",
    "audit_clause",
    "audit_entry_visible",
    "break_glass_entries",
    "break_glass_listed",
    "consent_denials",
    "consent_grants",
    "consents_lookup",
    "count_visible_history",
    "grant_basis",
    "institution_clause",
    "owner_of",
    "owners_and_consent",
    "provenance_clause",
    "provenance_visible",
    "visible_clause",
    "visible_history",
    "visible_ids",
    "visible_page",
    "with_consents",
]

INSTITUTION_SYSTEM = "urn:ehr-core:institution"

#: Types that are nobody's health record (R4 puts none of them in the Patient CompartmentDefinition):
#: directories, terminology and knowledge resources, readable by every institution. A type outside
#: every compartment but not listed here (Binary, Bundle, Device...) may still carry a patient's data,
#: so it stays with the institution that recorded it (fail closed).
SHARED_TYPES = frozenset(
    {
        "ActivityDefinition",
        "CapabilityStatement",
        "CodeSystem",
        "CompartmentDefinition",
        "ConceptMap",
        "Endpoint",
        "HealthcareService",
        "ImplementationGuide",
        "Library",
        "Location",
        "Measure",
        "Medication",
        "MedicationKnowledge",
        "NamingSystem",
        "ObservationDefinition",
        "OperationDefinition",
        "Organization",
        "PlanDefinition",
        "Practitioner",
        "PractitionerRole",
        "Questionnaire",
        "SearchParameter",
        "SpecimenDefinition",
        "StructureDefinition",
        "StructureMap",
        "Substance",
        "ValueSet",
    }
)
_SHARED_SQL = ", ".join(f"'{t}'" for t in sorted(SHARED_TYPES))  # constants, never caller input


@dataclass(frozen=True)
class Viewer:
    """Who reads, as the access policy sees them: institution, scopes' reach, break-the-glass."""

    institution: str
    #: The current instant (ISO 8601, UTC) against which Consent periods are checked.
    now: str
    #: Types covered by ``user``/``system`` read or search scopes; None: every type.
    types: frozenset[str] | None = None
    #: The token's patient, and the types its ``patient`` scopes cover (None: every type).
    patient: str | None = None
    patient_types: frozenset[str] | None = frozenset()
    #: The caller broke the glass with a stated reason: the institution rule is lifted (scopes still hold).
    break_glass: bool = False
    #: Whether any Consent naming the institution is valid now (None: not looked up, assume some).
    #: Without one, the consent branch is left out of the SQL: most searches cost only the owner check.
    consents: bool | None = None


_VALID = "(g.period_start IS NULL OR g.period_start <= ?) AND (g.period_end IS NULL OR g.period_end >= ?)"


def consents_lookup(viewer: Viewer) -> tuple[str, list[Any]] | None:
    """What :func:`with_consents` asks, as a scalar subquery (1 or NULL) another statement can carry; None
    when the viewer needs no look-up."""
    if viewer.consents is not None or viewer.break_glass:
        return None
    sql = f"(SELECT 1 FROM consent_grants g WHERE g.institution IN (?, '*') AND {_VALID} LIMIT 1)"
    return sql, [viewer.institution, viewer.now, viewer.now]


def with_consents(tx: Tx, viewer: Viewer) -> Viewer:
    """``viewer`` knowing whether its institution holds any valid consent (one indexed look-up)."""
    lookup = consents_lookup(viewer)
    if lookup is None:
        return viewer
    # Asked by every search: one index read, its plan kept once a connection has run it a few times.
    row = tx.reusing_plans().execute(f"SELECT {lookup[0]}", lookup[1]).fetchone()
    return replace(viewer, consents=row is not None and row[0] is not None)


def _in(column: str, values: frozenset[str] | None) -> tuple[str, list[Any]]:
    """``column IN (values)``; None means any value."""
    if values is None:
        return "1 = 1", []
    if not values:
        return "1 = 0", []
    ordered = sorted(values)
    return f"{column} IN ({', '.join('?' for _ in ordered)})", list(ordered)


def institution_clause(
    type_column: str, id_column: str, institution: str, now: str, consents: bool = True
) -> tuple[str, list[Any]]:
    """SQL true when ``institution`` may read the resource (type_column, id_column): own, shared or consent
    (the consent branch only when ``consents``: the institution holds some valid consent at all)."""
    # Scalar subqueries, not EXISTS: PostgreSQL turns an EXISTS inside OR into a hashed subplan over the
    # whole table (every resource of the institution, every compartment) even for a search of 14 rows;
    # a scalar subquery stays a primary-key probe per candidate row, so the cost follows the search.
    sql = (
        f"((SELECT o.institution FROM resource_owners o WHERE o.resource_type = {type_column} "
        f"AND o.resource_id = {id_column}) = ? OR {type_column} IN ({_SHARED_SQL})"
    )
    params: list[Any] = [institution]
    # Aliases here are long and unlikely: the caller's columns (``a.resource_id``...) are inside the subqueries,
    # and a subquery alias equal to the caller's would silently compare a column with itself.
    # A referral is addressed to its receiving institution: the Task and the ServiceRequest it tracks are
    # readable by it from the moment it is requested (it must see what it is asked to accept).
    sql += (
        f" OR (SELECT 1 FROM referral_addressees ref_a WHERE ref_a.resource_type = {type_column} AND "
        f"ref_a.resource_id = {id_column} AND ref_a.institution = ? LIMIT 1) IS NOT NULL"
    )
    params.append(institution)
    if consents:
        # A consenting (or referred) patient's compartment holds it, no patient of its compartment is without
        # a grant, and no active Consent of theirs keeps it in the institution that recorded it (a deny
        # provision by class, code or security label): denials are part of the predicate, so they hold for
        # totals, _include and every other path as for the matches themselves.
        compartment = f"c.resource_type = {type_column} AND c.resource_id = {id_column}"
        sql += (
            # From the resource's compartments to their grants (a nested EXISTS fixes the order): driven by
            # the institution's grants instead, each row would walk every grant the institution holds.
            f" OR ((SELECT 1 FROM resource_compartments c WHERE {compartment} AND EXISTS (SELECT 1 FROM"
            f" consent_grants g WHERE g.patient_id = c.patient_id AND g.institution IN (?, '*') AND {_VALID})"
            " LIMIT 1) IS NOT NULL"
            f" AND (SELECT 1 FROM resource_compartments c WHERE {compartment} AND NOT EXISTS"
            " (SELECT 1 FROM consent_grants g WHERE g.patient_id = c.patient_id AND g.institution IN (?, '*')"
            f" AND {_VALID}) LIMIT 1) IS NULL"
            " AND (SELECT 1 FROM resource_compartments den_c JOIN consent_denials den_d"
            f" ON den_d.patient_id = den_c.patient_id WHERE den_c.resource_type = {type_column}"
            f" AND den_c.resource_id = {id_column} AND den_d.institution IN (?, '*')"
            f" AND ((den_d.kind = 'class' AND den_d.code = {type_column})"
            " OR (den_d.kind <> 'class' AND EXISTS (SELECT 1 FROM search_ids den_s JOIN search_token den_k"
            " ON den_k.resource_type = den_s.resource_type AND den_k.sid = den_s.sid"
            f" WHERE den_s.resource_type = {type_column} AND den_s.resource_id = {id_column}"
            " AND den_k.param = den_d.kind AND den_k.code = den_d.code"
            " AND (den_d.system IS NULL OR den_k.system = den_d.system)))) LIMIT 1) IS NULL)"
        )
        params += [institution, now, now, institution, now, now, institution]
    return sql + ")", params


def visible_clause(viewer: Viewer, type_column: str, id_column: str) -> tuple[str, list[Any]]:
    """SQL true when ``viewer`` may see the resource (type_column, id_column): scopes, then the institution rule."""
    parts: list[str] = []
    params: list[Any] = []
    wide, wide_params = _in(type_column, viewer.types)
    scope = [f"({wide})"]
    params += wide_params
    if viewer.patient is not None and viewer.patient_types != frozenset():
        covered, covered_params = _in(type_column, viewer.patient_types)
        scope.append(
            f"({covered} AND ({type_column} IN ({_SHARED_SQL}) OR EXISTS (SELECT 1 FROM resource_compartments p "
            f"WHERE p.resource_type = {type_column} AND p.resource_id = {id_column} AND p.patient_id = ?)))"
        )
        params += [*covered_params, viewer.patient]
    parts.append("(" + " OR ".join(scope) + ")")
    if not viewer.break_glass:
        clause, clause_params = institution_clause(
            type_column, id_column, viewer.institution, viewer.now, viewer.consents is not False
        )
        parts.append(clause)
        params += clause_params
    return "(" + " AND ".join(parts) + ")", params


def audit_clause(viewer: Viewer, alias: str = "e") -> tuple[str, list[Any]]:
    """SQL true when ``viewer`` may see the server's audit entry ``alias`` (``audit_entries``): its own
    institution's actions, or an entry that names patients (``audit_entry_refs`` ``patient``), each of
    them one whose Patient record the viewer may read (own, or consent). Another institution's entry
    about nobody in particular (a search by name, a metadata read) stays with that institution, and an
    entry naming a patient hidden from the viewer would tell who looked at that patient's record."""
    clause, params = visible_clause(viewer, "'Patient'", "substr(n.value, 9)")  # after "Patient/"
    refs = f"FROM audit_entry_refs n WHERE n.audit_nid = {alias}.audit_nid AND n.param = 'patient'"
    if viewer.types == frozenset() and viewer.patient is not None:
        # A patient-facing app (patient scopes only) sees who accessed its own patient's record: entries
        # naming that patient and nobody else, so no other patient's id or another search reaches it.
        return (
            f"(EXISTS (SELECT 1 {refs}) AND NOT EXISTS (SELECT 1 {refs} AND n.value <> ?))",
            [f"Patient/{viewer.patient}"],
        )
    return (
        f"({alias}.institution = ? OR (EXISTS (SELECT 1 {refs}) AND NOT EXISTS (SELECT 1 {refs} AND NOT {clause})))",
        [f"{INSTITUTION_SYSTEM}|{viewer.institution}", *params],  # as audit_entries keeps it
    )


def provenance_clause(viewer: Viewer, alias: str = "p") -> tuple[str, list[Any]]:
    """SQL true when ``viewer`` may see the server's Provenance ``alias`` of one write: when it may see the
    resource written (the same rule as reading it), since the Provenance says who wrote what to it, when."""
    return visible_clause(viewer, f"{alias}.target_type", f"{alias}.target_id")


def _institutions(actors: Any) -> list[str]:
    """The institutions a provision's ``actor`` list names (``identifier`` ``urn:ehr-core:institution``, or
    ``display``); ``['*']`` when it names none — the consent then holds for every public institution."""
    if not actors:
        return ["*"]
    named = []
    for actor in actors:
        ref = actor.get("reference") or {}
        identifier = ref.get("identifier") or {}
        institution = identifier.get("value") if identifier.get("system") == INSTITUTION_SYSTEM else ref.get("display")
        if isinstance(institution, str) and institution:
            named.append(institution)
    return named


def _patient_of(consent: dict[str, Any]) -> str | None:
    reference = str((consent.get("patient") or {}).get("reference", ""))
    return reference.split("/", 1)[1] if reference.startswith("Patient/") else None


def consent_grants(consent: dict[str, Any]) -> list[tuple[str, str, str | None, str | None]]:
    """(patient id, institution, start, end) that a Consent grants; none unless active and permitting. A
    permit naming no actor grants every institution (institution ``*``)."""
    if consent.get("status") != "active":
        return []
    provision = consent.get("provision") or {}
    if provision.get("type", "permit") != "permit":
        return []
    patient = _patient_of(consent)
    if patient is None:
        return []
    period = provision.get("period") or {}
    return [
        (patient, institution, period.get("start"), period.get("end"))
        for institution in _institutions(provision.get("actor"))
    ]


#: Consent.provision.class codes are resource types (R4 consent.html: "The class of information covered").
DENY_KINDS = ("class", "code", "_security")


def consent_denials(consent: dict[str, Any]) -> list[tuple[str, str, str, str | None, str]]:
    """(patient id, institution, kind, system, code) that an active Consent keeps inside the institution that
    recorded them: each ``deny`` provision (the top one, or nested ones, R4 consent.html "provision.provision")
    by ``class`` (a resource type), ``code`` (matched against the resource's ``code`` search parameter) or
    ``securityLabel`` (matched against ``meta.security``, search parameter ``_security``), for the
    institutions its ``actor`` names (none: every institution)."""
    if consent.get("status") != "active":
        return []
    patient = _patient_of(consent)
    if patient is None:
        return []
    rows: list[tuple[str, str, str, str | None, str]] = []

    def walk(provision: dict[str, Any], inherited: list[str]) -> None:
        actors = _institutions(provision.get("actor")) if provision.get("actor") else inherited
        if provision.get("type") == "deny":
            codings: list[tuple[str, dict[str, Any]]] = [("class", c) for c in provision.get("class") or []]
            for concept in provision.get("code") or []:
                codings += [("code", c) for c in (concept or {}).get("coding") or []]
            codings += [("_security", c) for c in provision.get("securityLabel") or []]
            for kind, coding in codings:
                code = (coding or {}).get("code")
                if not isinstance(code, str) or not code:
                    continue
                system = None if kind == "class" else coding.get("system")
                rows.extend((patient, institution, kind, system, code) for institution in actors)
        for nested in provision.get("provision") or []:
            if isinstance(nested, dict):
                walk(nested, actors)

    top = consent.get("provision") or {}
    # A nested deny without actors holds for everyone the consent shares with — every institution.
    walk(top, ["*"])
    return rows


def _referral_grant(tx: Tx, change: Change, grant_days: int) -> tuple[str, str, str | None, str | None] | None:
    """(patient id, receiving institution, start, end) that a referral Task grants as of ``change``: while it
    is accepted, in progress or on hold, and for ``grant_days`` after it was completed (the log's recorded
    time of each step, so ``ehr rebuild`` gives the same periods). Only a referral recorded by the institution
    that holds the patient's record grants (DESIGN.md "Access"), and never to that institution itself."""
    if change.body is None:
        return None
    task = orjson.loads(change.body)
    receiver = receiving_institution(task, lambda oid: _stored(tx, "Organization", oid))
    if receiver is None or task.get("status") not in GRANTING:
        return None
    patient = str(task["for"]["reference"]).split("/", 1)[1]
    referrer = owner_of(tx, "Task", change.resource_id)
    if referrer is None or referrer == receiver or owner_of(tx, "Patient", patient) != referrer:
        return None
    previous = tx.execute(
        "SELECT period_start, period_end FROM consent_grants WHERE resource_type = 'Task' AND resource_id = ?",
        (change.resource_id,),
    ).fetchone()
    at = change.recorded.astimezone(UTC)
    start = str(previous[0]) if previous is not None and previous[0] else at.isoformat(timespec="microseconds")
    end = None
    if task.get("status") == "completed":
        kept = previous[1] if previous is not None else None
        end = str(kept) if kept else (at + timedelta(days=grant_days)).isoformat(timespec="microseconds")
    return patient, receiver, start, end


def _stored(tx: Tx, resource_type: str, resource_id: str) -> dict[str, Any] | None:
    row = tx.execute(
        "SELECT body FROM resources WHERE resource_type = ? AND resource_id = ?", (resource_type, resource_id)
    ).fetchone()
    if row is None or row[0] is None:
        return None
    found: dict[str, Any] = orjson.loads(bytes(row[0]))
    return found


class AccessView(View):
    """Owners, consents' and referrals' grants, consents' denials (see the module's docstring)."""

    tables = ("resource_owners", "consent_grants", "consent_denials", "referral_addressees")

    def __init__(self, referral_grant_days: int = 90) -> None:
        self.referral_grant_days = referral_grant_days

    def create(self, tx: Tx, dialect: Dialect) -> None:
        tx.execute(
            """CREATE TABLE IF NOT EXISTS resource_owners (
                resource_type TEXT NOT NULL,
                resource_id TEXT NOT NULL,
                institution TEXT NOT NULL,
                PRIMARY KEY (resource_type, resource_id))"""
        )
        # One row per institution a Consent (resource_type 'Consent') or an accepted referral ('Task') lets
        # read a patient's record, with its period; institution '*' is every institution.
        tx.execute(
            """CREATE TABLE IF NOT EXISTS consent_grants (
                resource_type TEXT NOT NULL,
                resource_id TEXT NOT NULL,
                patient_id TEXT NOT NULL,
                institution TEXT NOT NULL,
                period_start TEXT,
                period_end TEXT)"""
        )
        tx.execute("CREATE INDEX IF NOT EXISTS consent_grants_patient ON consent_grants (patient_id, institution)")
        # Whether an institution holds any consent at all (asked before each filtered search).
        tx.execute("CREATE INDEX IF NOT EXISTS consent_grants_institution ON consent_grants (institution)")
        tx.execute("CREATE INDEX IF NOT EXISTS consent_grants_source ON consent_grants (resource_id)")
        # What an active Consent keeps inside the recording institution (deny provisions): kind 'class' (code
        # = a resource type), 'code' or '_security' (the search parameter the resource's codes are indexed by).
        tx.execute(
            """CREATE TABLE IF NOT EXISTS consent_denials (
                resource_id TEXT NOT NULL,
                patient_id TEXT NOT NULL,
                institution TEXT NOT NULL,
                kind TEXT NOT NULL,
                system TEXT,
                code TEXT NOT NULL)"""
        )
        tx.execute("CREATE INDEX IF NOT EXISTS consent_denials_patient ON consent_denials (patient_id, institution)")
        tx.execute("CREATE INDEX IF NOT EXISTS consent_denials_source ON consent_denials (resource_id)")
        # The referral Task and its ServiceRequest, readable by the institution the referral is addressed to.
        tx.execute(
            """CREATE TABLE IF NOT EXISTS referral_addressees (
                resource_type TEXT NOT NULL,
                resource_id TEXT NOT NULL,
                institution TEXT NOT NULL,
                task_id TEXT NOT NULL)"""
        )
        tx.execute(
            "CREATE INDEX IF NOT EXISTS referral_addressees_resource ON referral_addressees "
            "(resource_type, resource_id, institution)"
        )
        tx.execute("CREATE INDEX IF NOT EXISTS referral_addressees_task ON referral_addressees (task_id)")

    def apply(self, tx: Tx, changes: Sequence[Change]) -> None:
        # The first version's institution owns a resource: a later version never replaces the row.
        tx.insert_new(
            "resource_owners",
            ("resource_type", "resource_id", "institution"),
            ("resource_type", "resource_id"),
            [
                (c.resource_type, c.resource_id, str(c.context.get("institution", "unknown")))
                for c in changes
                if not c.deleted
            ],
        )
        for change in changes:
            if change.resource_type == "Task":
                self._apply_referral(tx, change)
            if change.resource_type != "Consent":
                continue
            # A revoked, rejected, updated or deleted Consent stops granting and denying at once: its rows go.
            tx.execute(
                "DELETE FROM consent_grants WHERE resource_type = 'Consent' AND resource_id = ?", (change.resource_id,)
            )
            tx.execute("DELETE FROM consent_denials WHERE resource_id = ?", (change.resource_id,))
            if change.body is None:
                continue
            consent = orjson.loads(change.body)
            patient = _patient_of(consent)
            if patient is None or not _by_custodian(tx, change, patient):
                continue
            tx.executemany(
                "INSERT INTO consent_grants (resource_type, resource_id, patient_id, institution, period_start, "
                "period_end) VALUES ('Consent', ?, ?, ?, ?, ?)",
                [(change.resource_id, *grant) for grant in consent_grants(consent)],
            )
            tx.executemany(
                "INSERT INTO consent_denials (resource_id, patient_id, institution, kind, system, code) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(change.resource_id, *denial) for denial in consent_denials(consent)],
            )

    def _apply_referral(self, tx: Tx, change: Change) -> None:
        tx.execute("DELETE FROM referral_addressees WHERE task_id = ?", (change.resource_id,))
        if change.body is not None:
            task = orjson.loads(change.body)
            receiver = receiving_institution(task, lambda oid: _stored(tx, "Organization", oid))
            if receiver is not None and receiver != owner_of(tx, "Task", change.resource_id):
                request = str(task["focus"]["reference"]).split("/", 1)[1]
                tx.executemany(
                    "INSERT INTO referral_addressees (resource_type, resource_id, institution, task_id) "
                    "VALUES (?, ?, ?, ?)",
                    [
                        (kind, rid, receiver, change.resource_id)
                        for kind, rid in (("Task", change.resource_id), ("ServiceRequest", request))
                    ],
                )
        grant = _referral_grant(tx, change, self.referral_grant_days)
        tx.execute("DELETE FROM consent_grants WHERE resource_type = 'Task' AND resource_id = ?", (change.resource_id,))
        if grant is not None:
            tx.execute(
                "INSERT INTO consent_grants (resource_type, resource_id, patient_id, institution, period_start, "
                "period_end) VALUES ('Task', ?, ?, ?, ?, ?)",
                (change.resource_id, *grant),
            )


def _by_custodian(tx: Tx, change: Change, patient: str) -> bool:
    """Whether ``change`` (a Consent) was written by the institution that recorded ``Patient/patient``, or by
    that patient through a patient-facing app (the writer's context names them)."""
    if change.context.get("patient") == patient:
        return True
    row = tx.execute(
        "SELECT institution FROM resource_owners WHERE resource_type = 'Patient' AND resource_id = ?", (patient,)
    ).fetchone()
    return row is not None and str(row[0]) == str(change.context.get("institution"))


def access_grants(tx: Tx, patient_ids: Sequence[str]) -> list[tuple[str, str, str, str, str | None, str | None]]:
    """Every grant on these Patient records, valid or not yet/no longer valid: (patient id, institution,
    source type, source id, start, end) — who may read the record, why (a Consent or a referral Task), and
    until when."""
    if not patient_ids:
        return []
    marks = ", ".join("?" for _ in patient_ids)
    rows = tx.execute(
        "SELECT patient_id, institution, resource_type, resource_id, period_start, period_end FROM consent_grants "
        f"WHERE patient_id IN ({marks}) ORDER BY patient_id, institution, resource_type, resource_id",
        list(patient_ids),
    ).fetchall()
    return [(str(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], r[5]) for r in rows]


def access_denials(tx: Tx, patient_ids: Sequence[str]) -> list[tuple[str, str, str, str, str | None, str]]:
    """Every deny provision in force on these Patient records: (patient id, institution, Consent id, kind,
    system, code)."""
    if not patient_ids:
        return []
    marks = ", ".join("?" for _ in patient_ids)
    rows = tx.execute(
        "SELECT patient_id, institution, resource_id, kind, system, code FROM consent_denials "
        f"WHERE patient_id IN ({marks}) ORDER BY patient_id, resource_id, kind, code",
        list(patient_ids),
    ).fetchall()
    return [(str(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], str(r[5])) for r in rows]


def grant_basis(
    tx: Tx, patient_ids: Sequence[str], institution: str, now: str, target: tuple[str, str] | None = None
) -> list[str]:
    """The grants valid now through which ``institution`` reads these Patient records (or the compartments
    holding ``target``): ``Consent/id`` and ``Task/id`` (a referral), for the audit entry of a read they allow."""
    if target is not None:
        rows = tx.execute(
            "SELECT patient_id FROM resource_compartments WHERE resource_type = ? AND resource_id = ?", target
        ).fetchall()
        patient_ids = [*patient_ids, *(str(r[0]) for r in rows)]
        if target[0] == "Patient":
            patient_ids.append(target[1])
    addressed: list[str] = []
    if target is not None:
        # A referral Task or ServiceRequest read by the institution it is addressed to: under that referral.
        found = tx.execute(
            "SELECT task_id FROM referral_addressees WHERE resource_type = ? AND resource_id = ? AND institution = ?",
            (*target, institution),
        ).fetchall()
        addressed = [f"Task/{r[0]}" for r in found]
    if not patient_ids:
        return addressed
    marks = ", ".join("?" for _ in patient_ids)
    rows = tx.execute(
        f"SELECT DISTINCT g.resource_type, g.resource_id FROM consent_grants g WHERE g.patient_id IN ({marks}) "
        f"AND g.institution IN (?, '*') AND {_VALID} ORDER BY g.resource_type DESC, g.resource_id",
        [*patient_ids, institution, now, now],
    ).fetchall()
    return list(dict.fromkeys([*addressed, *(f"{r[0]}/{r[1]}" for r in rows)]))


# -- the read paths that list many resources -------------------------------------------------------------
# The views' own queries (projections.resources) with the policy's predicate joined in: the filter is part
# of the SQL, so a page, its total and its cursor never count what the viewer may not see.


@contextmanager
def _no_jit(tx: Tx, dialect: Dialect) -> Iterator[None]:
    """PostgreSQL JIT off for one filtered query: the per-row subqueries inflate the cost estimate past
    ``jit_above_cost`` and compiling them takes about a second (measured) for a millisecond query. The
    views' reads run outside a transaction, so the setting is put back by hand."""
    if dialect != "postgres":
        yield
        return
    tx.execute("SET jit = off")
    try:
        yield
    finally:
        tx.execute("RESET jit")


def _history_where(
    viewer: Viewer, resource_type: str | None, before: int | None, since: str | None, at: Period | None = None
) -> tuple[str, list[Any]]:
    clause, params = visible_clause(viewer, "h.resource_type", "h.resource_id")
    where, values = [clause], list(params)
    if at is not None:
        during, during_params = current_during("h", at)
        where.append(during)
        values += during_params
    for column, value, op in (("resource_type", resource_type, "="), ("notification_id", before, "<")):
        if value is not None:
            where.append(f"h.{column} {op} ?")
            values.append(value)
    if since is not None:
        where.append("h.last_updated >= ?")
        values.append(since)
    return " AND ".join(where), values


def visible_history(
    tx: Tx,
    viewer: Viewer,
    *,
    resource_type: str | None = None,
    before: int | None = None,
    since: str | None = None,
    limit: int = 50,
    dialect: Dialect = "sqlite",
    at: Period | None = None,
) -> list[HistoryEntry]:
    """Type or system history (newest first, notification id < ``before``) of what ``viewer`` may see."""
    viewer = with_consents(tx, viewer)
    where, params = _history_where(viewer, resource_type, before, since, at)
    with _no_jit(tx, dialect):
        rows = tx.execute(
            "SELECT h.notification_id, h.resource_type, h.resource_id, h.version, h.last_updated, h.method, h.body "
            f"FROM resource_history h WHERE {where} ORDER BY h.notification_id DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
    return [
        HistoryEntry(
            str(r[1]), str(r[2]), int(r[3]), str(r[4]), None if r[6] is None else bytes(r[6]), int(r[0]), str(r[5])
        )
        for r in rows
    ]


def count_visible_history(
    tx: Tx,
    viewer: Viewer,
    *,
    resource_type: str | None = None,
    before: int | None = None,
    since: str | None = None,
    dialect: Dialect = "sqlite",
    at: Period | None = None,
) -> int:
    where, params = _history_where(with_consents(tx, viewer), resource_type, before, since, at)
    with _no_jit(tx, dialect):
        row = tx.execute(f"SELECT COUNT(*) FROM resource_history h WHERE {where}", params).fetchone()
    return int(row[0]) if row else 0


def visible_ids(tx: Tx, viewer: Viewer, resource_type: str, ids: Sequence[str]) -> set[str]:
    """Those of ``ids`` (of ``resource_type``) that ``viewer`` may see: for operations that answer with
    records found another way than a search (the patient index's ``$match``, ``$ihe-pix``, review queue)."""
    viewer = with_consents(tx, viewer)
    clause, params = visible_clause(viewer, "r.resource_type", "r.resource_id")
    unique = sorted(set(ids))
    found: set[str] = set()
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        rows = tx.execute(
            f"SELECT r.resource_id FROM resources r WHERE r.resource_type = ? "
            f"AND r.resource_id IN ({', '.join('?' for _ in chunk)}) AND {clause}",
            [resource_type, *chunk, *params],
        ).fetchall()
        found.update(str(row[0]) for row in rows)
    return found


def visible_page(
    tx: Tx,
    viewer: Viewer,
    resource_type: str,
    patients: list[str] | None,
    *,
    compartments_only: bool,
    after_id: str = "",
    since: str | None = None,
    limit: int = 1000,
    dialect: Dialect = "sqlite",
) -> list[tuple[str, bytes]]:
    """One keyset page (by id) of current resources of a type that ``viewer`` may see, for bulk export:
    every one (system level), or those in patient compartments (all of them, or ``patients``'s)."""
    clause, params = visible_clause(with_consents(tx, viewer), "r.resource_type", "r.resource_id")
    conditions = ["r.resource_type = ?", "r.resource_id > ?", "r.body IS NOT NULL", clause]
    values: list[Any] = [resource_type, after_id, *params]
    if since:
        conditions.append("r.last_updated >= ?")
        values.append(since)
    if compartments_only:
        inside = "c.resource_type = r.resource_type AND c.resource_id = r.resource_id"
        if patients is not None:
            if not patients:
                return []
            inside += f" AND c.patient_id IN ({', '.join('?' for _ in patients)})"
            values.extend(patients)
        conditions.append(f"EXISTS (SELECT 1 FROM resource_compartments c WHERE {inside})")
    with _no_jit(tx, dialect):
        rows = tx.execute(
            f"SELECT r.resource_id, r.body FROM resources r WHERE {' AND '.join(conditions)} "
            "ORDER BY r.resource_id LIMIT ?",
            (*values, limit),
        ).fetchall()
    return [(str(row[0]), bytes(row[1])) for row in rows]


def break_glass_listed(tx: Tx) -> dict[int, tuple[str, str, str]]:
    """The review list by audit log position: (institution, user, reason) of each listed access."""
    rows = tx.execute("SELECT audit_nid, institution, user_id, reason FROM break_glass_log").fetchall()
    return {int(r[0]): (str(r[1]), str(r[2]), str(r[3])) for r in rows}


def owner_of(tx: Tx, resource_type: str, resource_id: str) -> str | None:
    """The institution that holds the resource (None: nothing recorded)."""
    row = tx.execute(
        "SELECT institution FROM resource_owners WHERE resource_type = ? AND resource_id = ?",
        (resource_type, resource_id),
    ).fetchone()
    return None if row is None else str(row[0])


def owners_and_consent(
    tx: Tx, resource_type: str, resource_ids: Sequence[str], institution: str, now: str
) -> list[tuple[str, bool]]:
    """Per recorded resource of ``resource_ids``: its owner and whether ``institution`` may read it
    (own, shared or consent: :func:`institution_clause`)."""
    if not resource_ids:
        return []
    clause, params = institution_clause("x.resource_type", "x.resource_id", institution, now)
    marks = ", ".join("?" for _ in resource_ids)
    rows = tx.execute(
        f"SELECT x.institution, CASE WHEN {clause} THEN 1 ELSE 0 END FROM resource_owners x "
        f"WHERE x.resource_type = ? AND x.resource_id IN ({marks})",
        [*params, resource_type, *resource_ids],
    ).fetchall()
    return [(str(row[0]), bool(int(row[1]))) for row in rows]


def break_glass_entries(tx: Tx, patient_ids: Sequence[str], limit: int = 200) -> list[tuple[Any, ...]]:
    """Listed break-the-glass accesses to these Patient records (or their ``$everything``) or to resources in
    their compartments, newest first: (recorded, institution, unit, user, role, reason, target)."""
    if not patient_ids:
        return []
    marks = ", ".join("?" for _ in patient_ids)
    patterns = [f"Patient/{p}" for p in patient_ids]
    rows = tx.execute(
        "SELECT recorded, institution, unit, user_id, role, reason, target FROM break_glass_log "
        f"WHERE target IN ({marks}) OR target IN ({', '.join('?' for _ in patterns)}) "
        "OR target IN (SELECT resource_type || '/' || resource_id FROM resource_compartments "
        f"WHERE patient_id IN ({marks})) ORDER BY audit_nid DESC LIMIT ?",
        (*[f"Patient/{p}/$everything" for p in patient_ids], *patterns, *patient_ids, limit),
    ).fetchall()
    return [tuple(row) for row in rows]


# -- the break-the-glass review list: a projection of the audit log -------------------------------------

_GRANTED = get_topic(BreakGlassAccess.Granted)
_REVIEW_COLUMNS = ("audit_nid", "recorded", "institution", "unit", "user_id", "role", "reason", "target")


class BreakGlassReview(Projector):
    """The break-the-glass review list (``break_glass_log``): one row per
    :class:`ehr_core.audit.BreakGlassAccess` event of the audit log, keyed by its notification id, so
    ``ehr rebuild break_glass`` gives the same rows and ``ehr verify --log audit`` can match each signed
    event to its row. Only those events are read (by topic, which the log keeps in plain text): the audit
    log holds one entry per API interaction, and break-the-glass accesses are few among them."""

    @property
    def tables(self) -> tuple[str, ...]:
        return ("break_glass_log",)

    def beside(self, database: ViewDatabase) -> BreakGlassReview:
        return BreakGlassReview(self.application, database, [], self.name, self.batch_size)

    def create_tables(self) -> None:
        with self.database.write() as tx:
            tx.execute(
                "CREATE TABLE IF NOT EXISTS projection_tracking (name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
            )
            if "audit_nid" not in _columns(tx, self.database.dialect, "break_glass_log"):
                _keep_legacy_list(tx, self.database.dialect)
            tx.execute(
                "CREATE TABLE IF NOT EXISTS break_glass_log (audit_nid BIGINT PRIMARY KEY, recorded TEXT NOT NULL, "
                "institution TEXT NOT NULL, unit TEXT, user_id TEXT NOT NULL, role TEXT, reason TEXT NOT NULL, "
                "target TEXT NOT NULL)"
            )
            tx.execute("CREATE INDEX IF NOT EXISTS break_glass_log_target ON break_glass_log (target)")
            tx.execute(
                "INSERT INTO projection_tracking (name, position) VALUES (?, 0) ON CONFLICT (name) DO NOTHING",
                (self.name,),
            )

    def _fetch(self, tx: Tx, position: int) -> Sequence[Notification]:
        """The next break-the-glass events after ``position``; when they are fewer than a batch, the log's
        last notification too (applied as nothing), so the tracking row reaches the log's head and the lag
        reported is the review list's, not the count of audit entries since the last access."""
        recorder = self.application.recorder
        head = recorder.max_notification_id() or 0
        if head <= position:
            return []
        found = list(
            recorder.select_notifications(start=position + 1, limit=self.batch_size, stop=head, topics=[_GRANTED])
        )
        if len(found) < self.batch_size and (not found or found[-1].id < head):
            # Every notification up to ``head`` was committed when it was read (the log appends in order).
            found += recorder.select_notifications(start=head, limit=1, stop=head)
        return found

    def apply_notifications(self, tx: Tx, notifications: Sequence[Notification]) -> int | None:
        rows = []
        for notification in notifications:
            if notification.topic != _GRANTED:
                continue
            event = self.application.mapper.to_domain_event(notification)
            assert isinstance(event, BreakGlassAccess.Granted)
            rows.append(
                (
                    notification.id,
                    format_instant(event.timestamp),
                    event.institution,
                    event.unit,
                    event.user,
                    event.role,
                    event.reason,
                    event.target,
                )
            )
        tx.insert("break_glass_log", _REVIEW_COLUMNS, rows)
        return None

    def reset(self) -> None:
        with self._lock, self.database.write() as tx:
            tx.execute("DELETE FROM break_glass_log")
            tx.execute("UPDATE projection_tracking SET position = 0 WHERE name = ?", (self.name,))
            self._position = 0

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        with self.database.read() as tx:
            return {"break_glass_log": tx.execute("SELECT * FROM break_glass_log ORDER BY audit_nid").fetchall()}


def _columns(tx: Tx, dialect: Dialect, table: str) -> list[str]:
    if dialect == "postgres":
        rows = tx.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
            "AND table_schema = current_schema()",
            (table,),
        ).fetchall()
        return [str(r[0]) for r in rows]
    return [str(r[1]) for r in tx.execute(f"PRAGMA table_info({table})").fetchall()]


def _keep_legacy_list(tx: Tx, dialect: Dialect) -> None:
    """A review list from before break-the-glass was an event (written at request time, in no log, so no
    rebuild can give its rows back): kept as ``break_glass_log_legacy`` for its reviewers, untouched."""
    if not _columns(tx, dialect, "break_glass_log"):
        return
    tx.execute("ALTER TABLE break_glass_log RENAME TO break_glass_log_legacy")


def audit_entry_visible(tx: Tx, viewer: Viewer, *, entry_id: str | None = None, audit_nid: int | None = None) -> bool:
    """Whether ``viewer`` may see one audit entry, by its AuditEvent id or its audit log position
    (:func:`audit_clause`, the rule of the AuditEvent searches)."""
    clause, params = audit_clause(viewer, "e")
    column, value = ("e.id", entry_id) if audit_nid is None else ("e.audit_nid", audit_nid)
    row = tx.execute(f"SELECT 1 FROM audit_entries e WHERE {column} = ? AND {clause}", [value, *params])
    return row.fetchone() is not None


def provenance_visible(tx: Tx, viewer: Viewer, entry_id: str) -> bool:
    """Whether ``viewer`` may see the server's Provenance ``entry_id`` (:func:`provenance_clause`)."""
    clause, params = provenance_clause(viewer, "p")
    row = tx.execute(f"SELECT 1 FROM provenance p WHERE p.id = ? AND {clause}", [entry_id, *params])
    return row.fetchone() is not None
