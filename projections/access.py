"""What the access policy needs from the log: who recorded each resource, and active Consents.

- ``resource_owners``: the institution that recorded a resource's first version ("an institution reads
  what it recorded").
- ``consent_grants``: one row per (Consent, institution) that an active, permitting Consent lets read the
  patient's record, with its period. The institution is named in ``Consent.provision.actor.reference``
  by ``identifier`` (system ``urn:ehr-core:institution``) or ``display``. A Consent updated to another
  status, or deleted, stops granting (its rows are replaced or removed). Only the custodian grants
  (DESIGN.md "Access"): a Consent takes effect when the institution that recorded the patient's record wrote
  it; one written by anyone else is kept as what it is, a request, and grants nothing (its author stays in
  the log's context and in the server's Provenance). Otherwise any institution could write itself a grant.

The policy as SQL (:func:`visible_clause`): one predicate, written once and used by every read path (single
reads through :mod:`fhir_api.access`, search matches and ``_include``/``_revinclude``, type and system
history, bulk export), so no path can disagree with another. A resource is visible to an institution when

1. it recorded the resource (``resource_owners``), or
2. the resource's type holds nobody's record (:data:`SHARED_TYPES`: directories, terminology), or
3. it is in at least one patient compartment and *every* patient of its compartment has an active Consent
   naming the institution, valid now (a Group or a shared Encounter needs all of them, not one), or
4. the caller broke the glass (the institution rule is lifted; the request is flagged and logged).

and the caller's SMART scopes cover the type (``user``/``system`` scopes), or a ``patient`` scope covers it
and the resource is in the token patient's compartment. The predicate runs inside the query (correlated
``EXISTS`` on primary keys), so totals and page cursors count only what the caller may see, with no
per-row Python loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import orjson
from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic

from ehr_core.application import format_instant
from ehr_core.audit import BreakGlassAccess
from projections.changes import Change
from projections.db import Dialect, Tx, ViewDatabase
from projections.projector import Projector
from projections.resources import HistoryEntry
from projections.view import View

__all__ = [
    "INSTITUTION_SYSTEM",
    "SHARED_TYPES",
    "AccessView",
    "BreakGlassReview",
    "Viewer",
    "audit_clause",
    "audit_entry_visible",
    "break_glass_entries",
    "break_glass_listed",
    "consent_grants",
    "count_visible_history",
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


def with_consents(tx: Tx, viewer: Viewer) -> Viewer:
    """``viewer`` knowing whether its institution holds any valid consent (one indexed look-up)."""
    if viewer.consents is not None or viewer.break_glass:
        return viewer
    row = tx.execute(
        f"SELECT 1 FROM consent_grants g WHERE g.institution = ? AND {_VALID} LIMIT 1",
        (viewer.institution, viewer.now, viewer.now),
    ).fetchone()
    return replace(viewer, consents=row is not None)


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
    if consents:
        # A consenting patient's compartment holds it, and no patient of its compartment is without a grant.
        compartment = f"c.resource_type = {type_column} AND c.resource_id = {id_column}"
        sql += (
            " OR ((SELECT 1 FROM resource_compartments c JOIN consent_grants g ON g.patient_id = c.patient_id"
            f" WHERE {compartment} AND g.institution = ? AND {_VALID} LIMIT 1) IS NOT NULL"
            f" AND (SELECT 1 FROM resource_compartments c WHERE {compartment} AND NOT EXISTS"
            f" (SELECT 1 FROM consent_grants g WHERE g.patient_id = c.patient_id AND g.institution = ? AND {_VALID})"
            " LIMIT 1) IS NULL)"
        )
        params += [institution, now, now, institution, now, now]
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


def consent_grants(consent: dict[str, Any]) -> list[tuple[str, str, str | None, str | None]]:
    """(patient id, institution, start, end) that a Consent grants; none unless active and permitting."""
    if consent.get("status") != "active":
        return []
    provision = consent.get("provision") or {}
    if provision.get("type", "permit") != "permit":
        return []
    reference = str((consent.get("patient") or {}).get("reference", ""))
    if not reference.startswith("Patient/"):
        return []
    patient = reference.split("/", 1)[1]
    period = provision.get("period") or {}
    grants = []
    for actor in provision.get("actor") or []:
        ref = actor.get("reference") or {}
        identifier = ref.get("identifier") or {}
        institution = identifier.get("value") if identifier.get("system") == INSTITUTION_SYSTEM else ref.get("display")
        if isinstance(institution, str) and institution:
            grants.append((patient, institution, period.get("start"), period.get("end")))
    return grants


class AccessView(View):
    tables = ("resource_owners", "consent_grants")

    def create(self, tx: Tx, dialect: Dialect) -> None:
        tx.execute(
            """CREATE TABLE IF NOT EXISTS resource_owners (
                resource_type TEXT NOT NULL,
                resource_id TEXT NOT NULL,
                institution TEXT NOT NULL,
                PRIMARY KEY (resource_type, resource_id))"""
        )
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

    def apply(self, tx: Tx, changes: Sequence[Change]) -> None:
        tx.executemany(
            "INSERT INTO resource_owners (resource_type, resource_id, institution) VALUES (?, ?, ?) "
            "ON CONFLICT (resource_type, resource_id) DO NOTHING",
            [
                (c.resource_type, c.resource_id, str(c.context.get("institution", "unknown")))
                for c in changes
                if not c.deleted
            ],
        )
        for change in changes:
            if change.resource_type != "Consent":
                continue
            tx.execute("DELETE FROM consent_grants WHERE resource_id = ?", (change.resource_id,))
            if change.body is None:
                continue
            grants = consent_grants(orjson.loads(change.body))
            if not grants or not _by_custodian(tx, change, grants[0][0]):
                continue
            tx.executemany(
                "INSERT INTO consent_grants (resource_type, resource_id, patient_id, institution, period_start, "
                "period_end) VALUES ('Consent', ?, ?, ?, ?, ?)",
                [(change.resource_id, *grant) for grant in grants],
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
    viewer: Viewer, resource_type: str | None, before: int | None, since: str | None
) -> tuple[str, list[Any]]:
    clause, params = visible_clause(viewer, "h.resource_type", "h.resource_id")
    where, values = [clause], list(params)
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
) -> list[HistoryEntry]:
    """Type or system history (newest first, notification id < ``before``) of what ``viewer`` may see."""
    viewer = with_consents(tx, viewer)
    where, params = _history_where(viewer, resource_type, before, since)
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
) -> int:
    where, params = _history_where(with_consents(tx, viewer), resource_type, before, since)
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
