"""Subscriptions as a projection of the log: the matcher and its outbox (DESIGN.md "Notifications").

The matcher follows the clinical log like any projector, with its own tracking row (``subscriptions``):
each batch reads the ``Subscription`` resources it meets (their criteria, channel and status) and, for
every other change, decides whether the changed resource matches an active subscription's criteria, as the
subscription owner's institution may read it. Criteria of token parameters (most of them, and every
topic's trigger) are decided in memory against the index rows the search extractor gives the event's
resource (``projections/subscription_criteria.py``: the same rows, compared as the search compares them),
then the read policy in one statement per batch and institution; any other criteria go to the server's own
search engine (the criteria search restricted to ``_id`` of the changed resources, one per batch and
distinct criteria). Each match is one outbox row per *stream* (the subscriptions of equal criteria, topic
and institution, which match the same events: fifty such subscriptions cost one row per matched event, not
fifty), numbered per subscription through the segments of streams it followed (the backport IG's
``eventNumber``; ``projections/subscription_streams.py``), written in the batch's transaction with the
tracking row: matching is exactly-once. Delivery reads the outbox apart from the log
(``fhir_api/subscriptions.py``): at least once, in event-number order per subscription, retried with
exponential backoff; it never blocks a write.

Criteria decided in memory are evaluated against the resource as the event wrote it (R4 subscription.html:
"evaluated against the resource when it changes"); the search engine answers for the resource as it is
now: the matcher never runs ahead of the ``resources`` projection (it stops at that projection's
position), so for those criteria a resource is matched as the views hold it, at most a few versions later
than the event, and a change that no longer matches by then is not notified. The read policy is always
the views' as they are now.

Topic-based subscriptions (Subscriptions R5 Backport IG for R4, 1.1.0) name a topic canonical in
``Subscription.criteria``; :data:`TOPICS` are those this server ships.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

import orjson
from eventsourcing.persistence import Notification
from eventsourcing.utils import TopicError, resolve_topic

from ehr_core.application import format_instant
from ehr_core.errors import InvalidResource
from ehr_core.identity.person import Person
from ehr_core.streams import ResourceStream
from projections import metrics
from projections.access import Viewer, owner_of, visible_ids
from projections.changes import Change, change_from_event
from projections.db import Dialect, Tx
from projections.projector import Projector, Retry, tracking_position
from projections.resources import ResourceViews
from projections.search import match
from projections.search.extract import extract
from projections.search.types.base import Rows
from projections.subscription_criteria import Criteria, compile_criteria
from projections.subscription_streams import (
    MATCH_COLUMNS,
    Outbound,
    due_events,
    events_between,
    forget_streams,
    mark_delivered,
    mark_failed,
    reset_attempts,
)
from projections.view import View

__all__ = [
    "BACKPORT",
    "FILTER_CRITERIA",
    "HEARTBEAT_PERIOD",
    "PAYLOAD_CONTENT",
    "TOPICS",
    "Outbound",
    "RecordLink",
    "SubscriptionMatcher",
    "SubscriptionRow",
    "Topic",
    "due_events",
    "events_between",
    "mark_delivered",
    "mark_failed",
    "record_link_from_event",
    "reset_attempts",
    "subscription_row",
    "subscription_rows",
    "visible_foci",
]

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport"
FILTER_CRITERIA = f"{BACKPORT}/StructureDefinition/backport-filter-criteria"
PAYLOAD_CONTENT = f"{BACKPORT}/StructureDefinition/backport-payload-content"
HEARTBEAT_PERIOD = f"{BACKPORT}/StructureDefinition/backport-heartbeat-period"
INSTITUTION_SYSTEM = "urn:ehr-core:institution"
#: Statuses in which a subscription is matched (R4 subscription-status: ``off`` and ``error`` stop it).
_MATCHING = ("requested", "active")


@dataclass(frozen=True)
class RecordLink:
    """A Patient record linked to, or unlinked from, a person of the master patient index (DESIGN.md
    "Identity across institutions": linking and undoing a link are events of the person's stream)."""

    notification_id: int
    person: str
    #: The Patient id (the record).
    record: str
    linked: bool
    recorded: str
    resource_type = "Patient"

    @property
    def resource_id(self) -> str:
        return self.record

    @property
    def context(self) -> dict[str, str]:
        """What the outbox keeps beside the focus: the person, and whether the record joined or left it."""
        return {"person": self.person, "link": "linked" if self.linked else "unlinked"}


def record_link_from_event(notification_id: int, event: Any) -> RecordLink | None:
    """The link or unlink a person event records; None for any other event (an enrolment founds a person of
    one record: no link between records)."""
    if not isinstance(event, Person.Linked | Person.Unlinked):
        return None
    record = str(event.record).removeprefix("Patient/")
    linked = isinstance(event, Person.Linked)
    return RecordLink(notification_id, str(event.originator_id), record, linked, format_instant(event.timestamp))


#: What the matcher follows: resource changes, and the master patient index's links.
Matched = Change | RecordLink
_FOLLOWED = (ResourceStream.Started, ResourceStream.Revised, ResourceStream.Retracted, Person.Linked, Person.Unlinked)


@lru_cache(maxsize=256)
def _followed(topic: str) -> bool:
    """Whether events of ``topic`` are what the matcher follows: told from the topic eventsourcing stores in
    plain text beside the encrypted state (resolved as the library does, renamed topics included), so other
    events are never decrypted and decoded."""
    try:
        return issubclass(resolve_topic(topic), _FOLLOWED)
    except TopicError:
        return True  # the mapper says what is wrong with it


@dataclass(frozen=True)
class Topic:
    """A SubscriptionTopic this server ships: a resource type, a fixed search, and a rule about the owner."""

    url: str
    title: str
    resource_type: str
    #: The topic's own search (the trigger), before the subscriber's filters.
    params: tuple[tuple[str, str], ...]
    #: Whether a matching change concerns the subscriber's institution (owner, the change, the tx).
    concerns: Callable[[str, Matched, dict[str, Any], Tx], bool]
    #: Triggered by the master patient index's links of a ``resource_type`` record, not by its changes.
    links: bool = False


def _performer_is(owner: str, change: Matched, resource: dict[str, Any], tx: Tx) -> bool:
    for performer in resource.get("performer") or []:
        identifier = performer.get("identifier") or {}
        if identifier.get("system") == INSTITUTION_SYSTEM and identifier.get("value") == owner:
            return True
        if performer.get("reference") == f"Organization/{owner}":
            return True
    return False


def _patient_of_owner(owner: str, change: Matched, resource: dict[str, Any], tx: Tx) -> bool:
    reference = str((resource.get("subject") or {}).get("reference") or "")
    if not reference.startswith("Patient/"):
        return False
    return owner_of(tx, "Patient", reference.removeprefix("Patient/")) == owner


def _elsewhere(owner: str, change: Matched, resource: dict[str, Any], tx: Tx) -> bool:
    # Visible to the owner although written elsewhere: only through the patient's consent (or a grant).
    return isinstance(change, Change) and str(change.context.get("institution") or "") != owner


def _record_of_owner(owner: str, change: Matched, resource: dict[str, Any], tx: Tx) -> bool:
    return owner_of(tx, "Patient", change.resource_id) == owner


_BASE = "urn:ehr-core:SubscriptionTopic"
TOPICS: dict[str, Topic] = {
    topic.url: topic
    for topic in (
        Topic(
            f"{_BASE}/referral-received",
            "A referral (ServiceRequest, SNOMED CT 3457005) whose performer is my institution",
            "ServiceRequest",
            (("category", "http://snomed.info/sct|3457005"),),
            _performer_is,
        ),
        Topic(
            f"{_BASE}/laboratory-result",
            "A laboratory result (Observation category laboratory) for a patient of my institution",
            "Observation",
            (("category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),),
            _patient_of_owner,
        ),
        Topic(
            f"{_BASE}/encounter-elsewhere",
            "An encounter at another institution of a patient who consented to share with mine",
            "Encounter",
            (),
            _elsewhere,
        ),
        Topic(
            f"{_BASE}/patient-link",
            "A Patient record of my institution linked to, or unlinked from, a person of the master patient index",
            "Patient",
            (),
            _record_of_owner,
            links=True,
        ),
    )
}


@dataclass(frozen=True)
class SubscriptionRow:
    id: str
    institution: str
    resource_type: str
    params: list[tuple[str, str]]
    topic: str | None
    status: str
    version: int
    #: The Subscription as stored (the server writes status changes as new versions of it).
    resource: dict[str, Any]
    #: Events matched since the subscription started (the backport IG's ``eventsSinceSubscriptionStart``).
    events: int
    #: The stream of matched events it follows while matched (None: ``off``, ``error``), from ``first_seq``
    #: on; ``base``: its events numbered before that (``projections/subscription_streams.py``).
    stream: str | None = None
    first_seq: int = 0
    base: int = 0

    @property
    def channel(self) -> dict[str, Any]:
        return dict(self.resource.get("channel") or {})


def parse_criteria(resource: dict[str, Any]) -> tuple[str | None, str, list[tuple[str, str]]]:
    """(topic, resource type, search parameters) of a Subscription: R4 ``Type?query`` or a backport topic."""
    criteria = str(resource.get("criteria") or "")
    topic = TOPICS.get(criteria)
    if topic is not None:
        params = list(topic.params)
        for extension in (resource.get("_criteria") or {}).get("extension") or []:
            if extension.get("url") == FILTER_CRITERIA:
                text = str(extension.get("valueString") or "")
                kind, _, query = text.partition("?")
                if kind in ("", topic.resource_type):
                    params.extend(parse_qsl(query, keep_blank_values=True))
        return topic.url, topic.resource_type, params
    kind, _, query = criteria.partition("?")
    return None, kind, parse_qsl(query, keep_blank_values=True)


class SubscriptionOutbox(View):
    tables = ("subscriptions", "subscription_streams", "subscription_segments", "subscription_matches")

    def create(self, tx: Tx, dialect: Dialect) -> None:
        tx.execute(
            "CREATE TABLE IF NOT EXISTS subscriptions (id TEXT PRIMARY KEY, institution TEXT NOT NULL, "
            "resource_type TEXT NOT NULL, params TEXT NOT NULL, topic TEXT, status TEXT NOT NULL, "
            "version BIGINT NOT NULL, resource TEXT NOT NULL, events BIGINT NOT NULL DEFAULT 0)"
        )
        # Subscriptions tables of before the shared streams: the followed segment and the delivery state.
        for column, kind in _STATE_COLUMNS:
            if dialect == "postgres":
                tx.execute(f"ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS {column} {kind}")
            elif column not in [str(r[1]) for r in tx.execute("PRAGMA table_info(subscriptions)").fetchall()]:
                tx.execute(f"ALTER TABLE subscriptions ADD COLUMN {column} {kind}")
        tx.execute(
            "CREATE TABLE IF NOT EXISTS subscription_matches (stream TEXT NOT NULL, seq BIGINT NOT NULL, "
            "notification_id BIGINT NOT NULL, focus_type TEXT NOT NULL, focus_id TEXT NOT NULL, "
            "focus_version BIGINT NOT NULL, recorded TEXT NOT NULL, context TEXT, PRIMARY KEY (stream, seq))"
        )
        tx.execute("CREATE TABLE IF NOT EXISTS subscription_streams (stream TEXT PRIMARY KEY, head BIGINT NOT NULL)")
        tx.execute(
            "CREATE TABLE IF NOT EXISTS subscription_segments (subscription_id TEXT NOT NULL, stream TEXT NOT NULL, "
            "first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL, first_number BIGINT NOT NULL, "
            "PRIMARY KEY (subscription_id, first_number))"
        )
        if dialect == "postgres":
            old = tx.execute("SELECT to_regclass('subscription_outbox') IS NOT NULL").fetchone()
        else:
            old = tx.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'subscription_outbox'"
            ).fetchone()
        if old is not None and bool(old[0]):
            _migrate_outbox(tx)

    def apply(self, tx: Tx, changes: Sequence[Matched]) -> None:
        """Match and write in the caller's transaction, against the subscriptions the table holds (the
        matcher itself plans against the index it keeps, see :class:`SubscriptionMatcher`)."""
        plan = self.plan(tx, SubscriptionIndex.read(tx, 0), changes)
        plan.write(tx)

    def plan(self, tx: Tx, index: SubscriptionIndex, changes: Sequence[Matched]) -> MatchPlan:
        """What ``changes`` write, computed with reads only (the criteria searches, the topics' owner rules):
        on SQLite the views have one writer, so the matcher works out a batch before taking it and holds it
        only to write the result, never while it searches (a write's projection would wait for that)."""
        # Subscription changes split the batch: a run of other changes is matched against the subscriptions
        # as they stood before it, with one search per distinct criteria (not one per change and subscription).
        plan = MatchPlan(index.copy())
        run: list[Matched] = []
        for change in changes:
            if isinstance(change, Change) and change.resource_type == "Subscription":
                self._match_run(tx, plan, run)
                run = []
                plan.subscription(change)
            elif isinstance(change, RecordLink) or (not change.deleted and change.body is not None):
                run.append(change)
        self._match_run(tx, plan, run)
        return plan

    def _match_run(self, tx: Tx, plan: MatchPlan, run: Sequence[Matched]) -> None:
        if not run:
            return
        kinds = {_kind(item) for item in run}
        # One subscription per stream decides for all of it: a stream's subscriptions share its criteria,
        # topic and institution, so they match the same events (one outbox row each, not one per subscription).
        streams = {row.stream: row for kind in sorted(kinds) for row in plan.index.active(kind) if row.stream}
        if not streams:
            return  # no subscription can match: no SQL, whatever the run holds
        # Per stream, the events of the run that match it (by notification id): decided in memory against
        # the resource's index rows when the criteria allow (projections/subscription_criteria.py), else by one
        # criteria search per batch.
        matched: dict[str, set[int]] = {}
        resources: dict[int, dict[str, Any]] = {}  # each event's resource, parsed once for every stream
        rows: dict[int, Rows] = {}  # and its index rows, extracted once
        readable: dict[tuple[str, str], set[str]] = {}  # the read policy, asked once per institution and type
        for stream, row in sorted(streams.items()):
            items = [item for item in run if _kind(item) == _row_kind(row)]
            criteria = compile_criteria(row.resource_type, tuple(row.params))
            if criteria.decides and not _links(row):
                matched[stream] = self._matching_events(tx, row, criteria, items, resources, rows, readable)
            else:  # the search engine decides (a link's record is not in its event: searched as it is now)
                found = self._matching_ids(tx, row, sorted({item.resource_id for item in items}))
                matched[stream] = {item.notification_id for item in items if item.resource_id in found}
        by_kind: dict[tuple[str, bool], list[tuple[str, SubscriptionRow]]] = {}
        for stream, row in sorted(streams.items()):
            by_kind.setdefault(_row_kind(row), []).append((stream, row))
        heads = plan.index.heads
        outbox: list[tuple[Any, ...]] = []
        for item in run:  # in log order: seqs, hence event numbers, follow the log
            for stream, row in by_kind.get(_kind(item), []):
                if item.notification_id not in matched[stream]:
                    continue
                topic = TOPICS.get(row.topic or "")
                if topic is not None:
                    if item.notification_id not in resources:
                        resources[item.notification_id] = _resource(item)
                    if not topic.concerns(row.institution, item, resources[item.notification_id], tx):
                        continue
                heads[stream] = heads.get(stream, 0) + 1
                plan.moved.add(stream)
                if isinstance(item, Change):
                    focus, recorded, context = item.version, item.last_updated, None
                else:  # a link is no version of the record: the focus is the record as it is when notified
                    focus, recorded, context = 0, item.recorded, json.dumps(item.context)
                outbox.append(
                    (stream, heads[stream], item.notification_id, item.resource_type, item.resource_id, focus,
                     recorded, context)
                )  # fmt: skip
        if outbox:
            plan.steps.append(outbox)

    @staticmethod
    def _matching_events(
        tx: Tx,
        row: SubscriptionRow,
        criteria: Criteria,
        items: Sequence[Matched],
        resources: dict[int, dict[str, Any]],
        rows: dict[int, Rows],
        readable: dict[tuple[str, str], set[str]],
    ) -> set[int]:
        """Those of ``items`` (changes) whose resource meets ``criteria``, as the subscriber's institution
        may read it: the criteria against the event's index rows, then the read policy (one query per
        institution, type and run, for every criteria of the run)."""
        hits: list[Matched] = []
        for item in items:
            if item.notification_id not in rows:
                if item.notification_id not in resources:
                    resources[item.notification_id] = _resource(item)
                rows[item.notification_id] = extract(resources[item.notification_id])
            if criteria.matches(item.resource_id, rows[item.notification_id]):
                hits.append(item)
        if not hits:
            return set()
        asked = (row.institution, row.resource_type)
        if asked not in readable:
            # ``consents=True``: the consent branch of the policy evaluated in the same statement, not
            # first asked whether the institution holds any consent (one round trip, the same answer).
            viewer = Viewer(institution=row.institution, now=datetime.now(UTC).isoformat(), consents=True)
            ids = sorted({item.resource_id for item in items})
            readable[asked] = visible_ids(tx, viewer, row.resource_type, ids)
        return {item.notification_id for item in hits if item.resource_id in readable[asked]}

    @staticmethod
    def _matching_ids(tx: Tx, row: SubscriptionRow, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` the criteria search finds, as the subscriber's institution may read them."""
        viewer = Viewer(institution=row.institution, now=datetime.now(UTC).isoformat())
        found: set[str] = set()
        for start in range(0, len(ids), 200):
            chunk = ids[start : start + 200]
            params = [*row.params, ("_id", ",".join(chunk))]
            try:
                found.update(match(tx, row.resource_type, params, limit=len(chunk), viewer=viewer))
            except InvalidResource:  # criteria the search engine refuses never match
                return set()
        return found


class SubscriptionIndex:
    """The subscriptions as the matcher's tracking position left them, in memory by what they match.

    Read from the ``subscriptions`` table once, then kept by the batches this process applies: the table
    changes only in the matcher's batches (under its tracking row), so an index taken at the position the
    tracking row still shows is the table. Each batch then costs no read of every subscription (and no parse
    of each stored Subscription) before it can know that nothing matches."""

    def __init__(self, position: int, rows: dict[str, SubscriptionRow], heads: dict[str, int]) -> None:
        #: The tracking position the index describes.
        self.position = position
        self.rows = rows
        #: The last seq of each stream (``projections/subscription_streams.py``), as the batch numbers them.
        self.heads = heads
        self._active: dict[tuple[str, bool], list[SubscriptionRow]] | None = None

    @classmethod
    def read(cls, tx: Tx, position: int) -> SubscriptionIndex:
        rows = {row.id: row for row in subscription_rows(tx)}
        heads = {str(s): int(h) for s, h in tx.execute("SELECT stream, head FROM subscription_streams").fetchall()}
        return cls(position, rows, heads)

    def copy(self) -> SubscriptionIndex:
        return SubscriptionIndex(self.position, dict(self.rows), dict(self.heads))

    def events(self, row: SubscriptionRow) -> int:
        """The events numbered for ``row`` so far, those of this batch included."""
        if row.stream is None:
            return row.base
        return row.base + max(0, self.heads.get(row.stream, 0) - row.first_seq + 1)

    def matching(self) -> bool:
        """Whether any subscription is being matched (``requested`` or ``active``)."""
        return bool(self._by_kind())

    def active(self, kind: tuple[str, bool]) -> list[SubscriptionRow]:
        """The subscriptions being matched (``requested``, ``active``) against changes of ``kind``, by id."""
        return self._by_kind().get(kind, [])

    def _by_kind(self) -> dict[tuple[str, bool], list[SubscriptionRow]]:
        if self._active is None:
            self._active = {}
            for sid in sorted(self.rows):
                row = self.rows[sid]
                if row.status in _MATCHING:
                    self._active.setdefault(_row_kind(row), []).append(row)
        return self._active

    def put(self, row: SubscriptionRow | None, subscription_id: str) -> None:
        if row is None:
            self.rows.pop(subscription_id, None)
        else:
            self.rows[subscription_id] = row
        self._active = None

    def settled(self, position: int) -> SubscriptionIndex:
        """The index once its batch is committed at ``position`` (the rows carry their events so far)."""
        rows = {}
        for sid, row in self.rows.items():
            events = self.events(row)
            rows[sid] = row if events == row.events else replace(row, events=events)
        return SubscriptionIndex(position, rows, dict(self.heads))


@dataclass(frozen=True)
class _SubscriptionStep:
    """A Subscription written (``row``) or deleted (None), and the segment it stopped following, if any."""

    change: Change
    row: SubscriptionRow | None
    #: (stream, first_seq, last_seq, first_number) of the segment closed.
    closed: tuple[str, int, int, int] | None
    #: The streams a deleted subscription read (dropped if nobody else reads them).
    streams: tuple[str, ...] = ()


class MatchPlan:
    """One batch's writes, in log order: Subscription changes and runs of outbox rows; then the streams' heads."""

    def __init__(self, index: SubscriptionIndex) -> None:
        #: The subscriptions as they stand after the batch (the streams' heads included).
        self.index = index
        #: The streams that numbered events in this batch (their head is written).
        self.moved: set[str] = set()
        self.steps: list[_SubscriptionStep | list[tuple[Any, ...]]] = []

    def subscription(self, change: Change) -> None:
        """A Subscription created, changed or deleted: later runs of the batch match against it."""
        known = self.index.rows.get(change.resource_id)
        if change.deleted or change.body is None:
            streams = (known.stream,) if known is not None and known.stream is not None else ()
            self.steps.append(_SubscriptionStep(change, None, None, streams))
            self.index.put(None, change.resource_id)
            return
        resource = json.loads(change.body)
        topic, kind, params = parse_criteria(resource)
        row = SubscriptionRow(
            id=change.resource_id,
            # The table keeps the institution that created it (a later version's writer does not change it).
            institution=known.institution if known else str(change.context.get("institution") or "unknown"),
            resource_type=kind,
            params=[(str(k), str(v)) for k, v in params],
            topic=topic,
            status=str(resource.get("status") or ""),
            version=change.version,
            resource=resource,
            events=0,
        )
        stream = _stream_of(row) if row.status in _MATCHING else None
        closed = None
        if known is not None and known.stream is not None and known.stream == stream:
            first_seq, base = known.first_seq, known.base  # same criteria, still matched: the same segment
        else:
            # A new segment: numbered on from the events so far, from the stream's next seq.
            base = self.index.events(known) if known is not None else 0
            if known is not None and known.stream is not None and base > known.base:
                closed = (known.stream, known.first_seq, self.index.heads.get(known.stream, 0), known.base + 1)
            first_seq = self.index.heads.get(stream, 0) + 1 if stream is not None else 0
        row = replace(row, stream=stream, first_seq=first_seq, base=base)
        row = replace(row, events=self.index.events(row))
        self.steps.append(_SubscriptionStep(change, row, closed))
        self.index.put(row, change.resource_id)

    def write(self, tx: Tx) -> None:
        for step in self.steps:
            if isinstance(step, _SubscriptionStep):
                _write_subscription(tx, step)
            else:
                # Many rows go as one COPY on PostgreSQL: a batch of 500 matched writes is 500 rows per stream.
                tx.insert("subscription_matches", MATCH_COLUMNS, step)
        heads = self.index.heads
        if self.moved:
            tx.upsert(
                "subscription_streams", ("stream", "head"), ("stream",), [(s, heads[s]) for s in sorted(self.moved)]
            )


def _write_subscription(tx: Tx, step: _SubscriptionStep) -> None:
    sid = step.change.resource_id
    row = step.row
    if row is None:
        streams = [str(s) for (s,) in tx.execute(
            "SELECT stream FROM subscription_segments WHERE subscription_id = ?", (sid,)
        ).fetchall()]  # fmt: skip
        tx.execute("DELETE FROM subscription_segments WHERE subscription_id = ?", (sid,))
        tx.execute("DELETE FROM subscriptions WHERE id = ?", (sid,))
        forget_streams(tx, [*streams, *step.streams])
        return
    if step.closed is not None:
        tx.execute(
            "INSERT INTO subscription_segments (subscription_id, stream, first_seq, last_seq, first_number) "
            "VALUES (?, ?, ?, ?, ?)",
            (sid, *step.closed),
        )
    # One statement whether the Subscription is new or updated; an update keeps the institution that created
    # it (the owner the access policy checks at notify time) and its delivery state.
    tx.execute(
        "INSERT INTO subscriptions (id, institution, resource_type, params, topic, status, version, resource, events, "
        "stream, first_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
        "resource_type = excluded.resource_type, params = excluded.params, topic = excluded.topic, "
        "status = excluded.status, version = excluded.version, resource = excluded.resource, "
        "events = excluded.events, stream = excluded.stream, first_seq = excluded.first_seq",
        (
            sid,
            row.institution,
            row.resource_type,
            json.dumps(row.params),
            row.topic,
            row.status,
            row.version,
            step.change.body.decode() if step.change.body is not None else "{}",
            row.base,
            row.stream,
            row.first_seq,
        ),
    )


#: Columns of the ``subscriptions`` table added with the shared streams (tables of before get them on open).
_STATE_COLUMNS = (
    ("stream", "TEXT"),
    ("first_seq", "BIGINT NOT NULL DEFAULT 0"),
    ("delivered", "BIGINT NOT NULL DEFAULT 0"),
    ("attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("next_attempt", "DOUBLE PRECISION NOT NULL DEFAULT 0"),
    ("error", "TEXT"),
)


def _stream_of(row: SubscriptionRow) -> str:
    """The stream of the subscriptions that match exactly what ``row`` matches: same topic (its owner rule),
    institution (the read policy), resource type or links, and criteria."""
    key = json.dumps([row.topic, row.institution, row.resource_type, _links(row), row.params])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _migrate_outbox(tx: Tx) -> None:
    """An outbox of before the shared streams (one row per subscription and event): each subscription's rows
    become a stream of its own, read as a closed segment (same event numbers, same delivery and retry state),
    and it follows its criteria's shared stream from then on. The old table is dropped."""
    rows = subscription_rows(tx)
    heads = {str(s): int(h) for s, h in tx.execute("SELECT stream, head FROM subscription_streams").fetchall()}
    for row in rows:
        old = tx.execute(
            "SELECT event_number, notification_id, focus_type, focus_id, focus_version, recorded, context, delivered, "
            "attempts, next_attempt, error FROM subscription_outbox WHERE subscription_id = ? ORDER BY event_number",
            (row.id,),
        ).fetchall()
        delivered, attempts, next_attempt, error = row.base, 0, 0.0, None
        if old:
            private = f"migrated:{row.id}"
            tx.insert("subscription_matches", MATCH_COLUMNS, [(private, *r[:7]) for r in old])
            first, last = int(old[0][0]), int(old[-1][0])
            tx.execute(
                "INSERT INTO subscription_segments (subscription_id, stream, first_seq, last_seq, first_number) "
                "VALUES (?, ?, ?, ?, ?)",
                (row.id, private, first, last, first),
            )
            tx.execute("INSERT INTO subscription_streams (stream, head) VALUES (?, ?)", (private, last))
            pending = [r for r in old if not int(r[7])]
            if pending:  # delivered in order: everything before the first undelivered event was delivered
                delivered, attempts, next_attempt, error = int(pending[0][0]) - 1, *pending[0][8:11]
        stream = _stream_of(row) if row.status in _MATCHING else None
        first_seq = heads.get(stream, 0) + 1 if stream is not None else 0
        tx.execute(
            "UPDATE subscriptions SET stream = ?, first_seq = ?, delivered = ?, attempts = ?, next_attempt = ?, "
            "error = ? WHERE id = ?",
            (stream, first_seq, delivered, attempts, next_attempt, error, row.id),
        )
    tx.execute("DROP TABLE subscription_outbox")


def _links(row: SubscriptionRow) -> bool:
    """Whether the subscription follows the master patient index's links rather than resource changes."""
    topic = TOPICS.get(row.topic or "")
    return topic is not None and topic.links


def _resource(item: Matched) -> dict[str, Any]:
    """The resource an event carries (a link carries none)."""
    body = item.body if isinstance(item, Change) else None
    if not body:
        return {}
    try:
        parsed: dict[str, Any] = orjson.loads(body)
    except orjson.JSONDecodeError:  # numbers beyond a double (1e400): the standard parser gives inf
        parsed = json.loads(body)
    return parsed


def _kind(item: Matched) -> tuple[str, bool]:
    return item.resource_type, isinstance(item, RecordLink)


def _row_kind(row: SubscriptionRow) -> tuple[str, bool]:
    """What a subscription is matched against: changes of its resource type, or (a links topic) links."""
    return row.resource_type, _links(row)


class SubscriptionMatcher(Projector):
    """The ``subscriptions`` projection: never ahead of the ``resources`` projection it searches.

    Off every write's path (DESIGN.md "Notifications"): a write waits for ``resources`` and ``identity``
    only; the delivery thread runs this matcher when the resource views move (``Projector.on_applied``).
    On SQLite the views have a single writer: a batch is matched in a read transaction and only its result
    is written under the writer lock (the tracking row checked unchanged), so matching never holds up the
    projection of the next write. On PostgreSQL the batch holds only the matcher's own tracking row."""

    def __init__(self, application: Any, database: Any, batch_size: int = 500) -> None:
        self.outbox = SubscriptionOutbox()
        super().__init__(application, database, [self.outbox], name="subscriptions", batch_size=batch_size)
        self._index: SubscriptionIndex | None = None
        #: The index as the batch being applied leaves it, kept once that batch is committed.
        self._planned: SubscriptionIndex | None = None
        #: The position the batch being applied was read after (None: not read by ``_fetch``).
        self._fetched_after: int | None = None
        #: A smaller batch asked by ``catch_up_within`` (None: ``batch_size``).
        self._batch_limit: int | None = None

    def _fetch(self, tx: Tx, position: int) -> Sequence[Notification]:
        self._fetched_after = position
        ceiling = tracking_position(tx, "resources")
        if ceiling <= position:
            return []
        limit = min(self._batch_limit or self.batch_size, ceiling - position)
        found = self.application.recorder.select_notifications(start=position + 1, limit=limit, stop=ceiling)
        return list(found)

    def _index_at(self, tx: Tx, position: int) -> SubscriptionIndex:
        """The subscriptions at ``position``: those kept in memory if this process applied the last batch."""
        if self._index is None or self._index.position != position:
            self._index = SubscriptionIndex.read(tx, position)
        return self._index

    def _changes(self, tx: Tx, index: SubscriptionIndex, notifications: Sequence[Notification]) -> list[Matched]:
        """The resource changes and record links of a batch (other events are skipped by their topic).

        With no subscription being matched, a batch without a Subscription change can match nothing: it is
        told from the resource history (its projection is ahead of this one) and none of its events is
        decrypted and decoded, which is most of what a store without subscriptions would spend here."""
        if notifications and not index.matching() and not _subscription_written(tx, notifications):
            return []
        mapper = self.application.mapper
        changes: list[Matched] = []
        for notification in notifications:
            if not _followed(notification.topic):
                continue
            event = mapper.to_domain_event(notification)
            change = change_from_event(notification.id, event) or record_link_from_event(notification.id, event)
            if change is not None:
                changes.append(change)
        return changes

    def apply_notifications(self, tx: Tx, notifications: Sequence[Notification]) -> int | None:
        # In one transaction (PostgreSQL, and a quarantined event applied again): the tracking row is held.
        position = self._fetched_after
        index = self._index_at(tx, self._read_position(tx, lock=False) if position is None else position)
        plan = self.outbox.plan(tx, index, self._changes(tx, index, notifications))
        plan.write(tx)
        self._planned = plan.index
        return None

    def _apply_whole_batch(self, until: int | None) -> int:
        self._planned = self._fetched_after = None
        try:
            if self.database.dialect == "sqlite":
                done = self._match_then_write(until)
            else:
                done = super()._apply_whole_batch(until)
        except BaseException:
            self._index = None  # the batch rolled back: the table is what it was, read it again
            raise
        if self._planned is not None:
            self._index = self._planned.settled(self._position)
        return done

    def _match_then_write(self, until: int | None) -> int:
        """SQLite: match a batch reading only, then write it in a short transaction of the views' one writer."""
        started = time.perf_counter()
        with self.database.read() as tx:
            position = self._read_position(tx, lock=False)
            if until is not None and position >= until:
                self._position = position
                return 0
            notifications = self._fetch(tx, position)
            if not notifications:
                self._position = position
                return 0
            index = self._index_at(tx, position)
            plan = self.outbox.plan(tx, index, self._changes(tx, index, notifications))
        with self.database.write() as tx:
            if self._read_position(tx, lock=True) != position:
                raise Retry(f"the {self.name} projection moved while a batch was matched: match it again")
            plan.write(tx)
            last = self._advance(tx, notifications[-1].id)
        self._planned = plan.index
        metrics.applied(self.name, len(notifications), time.perf_counter() - started)
        self._moved_to(last)
        return len(notifications)

    def retry_quarantined(self) -> tuple[int, int]:
        self._fetched_after = None
        try:
            return super().retry_quarantined()
        finally:
            self._index = None  # counters moved without the tracking row: read the table again

    def forget_position(self) -> None:
        super().forget_position()
        self._index = None

    def reset(self) -> None:
        super().reset()
        self._index = None

    def catch_up_within(self, seconds: float, batch_size: int | None = None) -> int:
        """Apply batches until none is pending or ``seconds`` have passed; return the events applied.

        The delivery loop matches and sends in turns: an unbounded catch-up chases a log that writes keep
        extending (the matcher stops at the ``resources`` projection, which moves with every write, so its
        batches are small) and sends nothing meanwhile (measured on PostgreSQL with 50 subscriptions
        matching every write: 3.7 s of matching without a notification). ``batch_size``: smaller batches than
        the projection's (the delivery thread's paced turns, ``fhir_api/delivery_pacing.py``), so that a
        batch's write holds the views' writer for less."""
        deadline = time.monotonic() + seconds
        applied = 0
        with self._lock:
            self._batch_limit = batch_size
            try:
                while True:
                    done = self._apply_batch(None)
                    applied += done
                    if done == 0 or time.monotonic() >= deadline:
                        return applied
            finally:
                self._batch_limit = None

    def beside(self, database: Any) -> Projector:
        return SubscriptionMatcher(self.application, database, self.batch_size)

    def head(self) -> int:
        with self.database.read_primary() as tx:
            return tracking_position(tx, "resources")


def _subscription_written(tx: Tx, notifications: Sequence[Notification]) -> bool:
    """Whether a Subscription was created, changed or deleted within the batch's events."""
    found = tx.execute(
        "SELECT 1 FROM resource_history WHERE resource_type = 'Subscription' AND notification_id BETWEEN ? AND ?"
        " LIMIT 1",
        (notifications[0].id, notifications[-1].id),
    ).fetchone()
    return found is not None


def _row(row: Sequence[Any]) -> SubscriptionRow:
    stream = None if row[9] is None else str(row[9])
    first_seq, base = int(row[10] or 0), int(row[8])
    head = int(row[11] or 0)
    return SubscriptionRow(
        id=str(row[0]),
        institution=str(row[1]),
        resource_type=str(row[2]),
        params=[(str(k), str(v)) for k, v in json.loads(row[3])],
        topic=None if row[4] is None else str(row[4]),
        status=str(row[5]),
        version=int(row[6]),
        resource=json.loads(row[7]),
        events=base + (max(0, head - first_seq + 1) if stream is not None else 0),
        stream=stream,
        first_seq=first_seq,
        base=base,
    )


_COLUMNS = (
    "s.id, s.institution, s.resource_type, s.params, s.topic, s.status, s.version, s.resource, s.events, "
    "s.stream, s.first_seq, h.head FROM subscriptions s LEFT JOIN subscription_streams h ON h.stream = s.stream"
)


def subscription_rows(tx: Tx) -> list[SubscriptionRow]:
    return [_row(row) for row in tx.execute(f"SELECT {_COLUMNS} ORDER BY s.id").fetchall()]


def subscription_row(tx: Tx, subscription_id: str) -> SubscriptionRow | None:
    row = tx.execute(f"SELECT {_COLUMNS} WHERE s.id = ?", (subscription_id,)).fetchone()
    return None if row is None else _row(row)


def visible_foci(tx: Tx, wanted: Sequence[tuple[str, Outbound]]) -> dict[tuple[str, str, str], bytes | None]:
    """The focus of each (institution, event) as that institution may read it now (None: not readable, or
    gone), keyed (institution, focus type, focus id): one policy query per institution and type, one read per
    resource type (50 subscriptions matching the same write ask once, not 50 times)."""
    asked: dict[tuple[str, str], set[str]] = {}
    for institution, outbound in wanted:
        asked.setdefault((institution, outbound.focus_type), set()).add(outbound.focus_id)
    now = datetime.now(UTC).isoformat()
    readable: set[tuple[str, str, str]] = set()
    for (institution, kind), ids in asked.items():
        viewer = Viewer(institution=institution, now=now)
        readable |= {(institution, kind, i) for i in visible_ids(tx, viewer, kind, sorted(ids))}
    stored = ResourceViews.read_many(tx, sorted({(kind, i) for _, kind, i in readable}))
    found: dict[tuple[str, str, str], bytes | None] = {}
    for (institution, kind), ids in asked.items():
        for i in ids:
            current = stored.get((kind, i)) if (institution, kind, i) in readable else None
            found[(institution, kind, i)] = None if current is None else current.body
    return found
