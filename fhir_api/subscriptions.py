"""Delivering subscription notifications (R4 subscription.html, Subscriptions R5 Backport IG for R4 1.1.0).

The matcher (``projections/subscriptions.py``) records each matched event in an outbox in the same
transaction as its tracking position; this thread delivers the outbox over ``rest-hook`` channels:

- at least once: an event is marked delivered only after the endpoint answered 2xx, so a crash between the
  POST and the mark sends it again; every notification carries its event number, so duplicates are
  recognisable (backport: ``notification-event.event-number``; R4 criteria subscriptions: the
  ``X-Subscription-Event-Number`` header, R4 defines no body for an empty payload);
- in order: per subscription only its lowest undelivered event is ever in flight;
- retried with exponential backoff (``EHR_SUBSCRIPTION_RETRY_*``); after ``subscription_max_attempts``
  failures the Subscription gets ``status = error`` and ``error`` (a new version, written by the server);
- never on a write's critical path: the matcher is caught up here, apart from the requests, when the
  resource views move (woken by their commits, not polling); idle, a round reads nothing more than the
  subscriptions, and asks for due events only of the subscriptions with something new or to retry.
- never slowing writes beyond a share of the CPU: while writes commit, each round (matching included) is
  followed by a rest in proportion to the CPU it took (``fhir_api/delivery_pacing.py``); a burst leaves a
  backlog that drains once the writes pause.

A subscription the client creates as ``requested`` gets a handshake first (backport: a ``handshake``
notification; R4 criteria: a POST with no body) and becomes ``active`` once it is answered 2xx; ``off``
(set by the client) stops matching and delivery. Endpoints: https, or http on loopback only (unless
``EHR_SUBSCRIPTION_ALLOW_HTTP``); redirects are never followed (R4 §Security: the server only talks to
the endpoint the subscriber named). The focus travels only when the subscriber's institution may read it
at notify time (the read policy); what a round delivered to a subscription is one AuditEvent, each
failed attempt another.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

from ehr_core.application import format_instant
from ehr_core.audit import AuditEntry
from ehr_core.context import WriteContext
from fhir_api.delivery_pacing import DeliveryPacing
from fhir_api.rest_hook import RestHookClient
from fhir_api.services import Services
from projections.db import PostgresViews
from projections.delivery_claims import AdvisoryClaims, DeliveryClaims, SoleProcess
from projections.subscriptions import (
    HEARTBEAT_PERIOD,
    PAYLOAD_CONTENT,
    Outbound,
    SubscriptionMatcher,
    SubscriptionRow,
    due_events,
    mark_delivered,
    mark_failed,
    reset_attempts,
    subscription_rows,
    visible_foci,
)

__all__ = ["LINK_EVENT", "Deliverer", "endpoint_allowed", "notification_bundle", "status_parameters"]

log = logging.getLogger(__name__)

_LOOPBACK_NAMES = ("localhost",)
#: On a ``patient-link`` notification event: ``linked`` or ``unlinked`` (the record joined or left the person).
LINK_EVENT = "urn:ehr-core:mpi:link-event"
#: Subscriptions sent to at once (each has at most one event in flight: its order is kept).
_PARALLEL = 8
#: How long one turn of matching, and one round of sending, may last before the other gets its turn: the
#: notifications stream (new events are matched and sent every fraction of a second) instead of a backlog
#: going in blocking rounds whose length grew with it.
_TURN_SECONDS = 0.25
#: The turns while writes commit and delivery is paced (``fhir_api/delivery_pacing.py``): a round rests about
#: ``1 / share`` times the CPU it spent, so shorter rounds keep the notifications streaming between rests.
_PACED_TURN_SECONDS = 0.05
#: The matcher's batch while paced: on SQLite a batch's outbox rows (one per stream of equal criteria and
#: event) are written under the views' one writer lock, which the projection of each write waits for.
_PACED_BATCH = 50
#: The longest the thread sleeps unless woken by a commit of the resource views: it learns of what another
#: process matched (several processes on one PostgreSQL database) at most this late.
_IDLE_SECONDS = 1.0


def endpoint_allowed(endpoint: str, allow_http: bool) -> bool:
    """https anywhere; http on loopback (127.0.0.0/8, ::1, localhost) or when development allows it."""
    parts = urlsplit(endpoint)
    if parts.scheme == "https":
        return bool(parts.hostname)
    if parts.scheme != "http" or not parts.hostname:
        return False
    if allow_http or parts.hostname in _LOOPBACK_NAMES:
        return True
    try:
        return ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def payload_content(row: SubscriptionRow) -> str:
    """Backport ``backport-payload-content`` on channel.payload: empty, id-only or full-resource."""
    payload = row.resource.get("channel", {}).get("_payload") or {}
    for extension in payload.get("extension") or []:
        if extension.get("url") == PAYLOAD_CONTENT:
            return str(extension.get("valueCode") or "id-only")
    return "full-resource" if row.channel.get("payload") else "empty"


def status_parameters(
    row: SubscriptionRow, kind: str, base: str, events: Sequence[tuple[Outbound, bool]] = (), since: int | None = None
) -> dict[str, Any]:
    """The backport SubscriptionStatus (a ``Parameters``, R4): the first entry of every notification."""
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"{base}/Subscription/{row.id}"}},
    ]
    if row.topic:
        parameters.append({"name": "topic", "valueCanonical": row.topic})
    parameters += [
        {"name": "status", "valueCode": row.status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(since if since is not None else row.events)},
    ]
    for outbound, _ in events:
        event: dict[str, Any] = {
            "name": "notification-event",
            "part": [
                {"name": "event-number", "valueString": str(outbound.event_number)},
                {"name": "timestamp", "valueInstant": outbound.recorded},
                {"name": "focus", "valueReference": {"reference": f"{outbound.focus_type}/{outbound.focus_id}"}},
            ],
        }
        if outbound.context and outbound.context.get("person"):
            # A master patient index link: the person is the backport's additional-context; whether the
            # record joined or left it has no element of its own there, so an extension says it.
            person = {"reference": f"Person/{outbound.context['person']}"}
            event["part"].append({"name": "additional-context", "valueReference": person})
            event["extension"] = [{"url": LINK_EVENT, "valueCode": outbound.context.get("link", "linked")}]
        parameters.append(event)
    return {
        "resourceType": "Parameters",
        "id": str(uuid.uuid4()),
        "meta": {
            "profile": [
                "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
            ]
        },
        "parameter": parameters,
    }


def notification_bundle(
    row: SubscriptionRow,
    kind: str,
    base: str,
    events: Sequence[tuple[Outbound, bytes | None]] = (),
    since: int | None = None,
) -> dict[str, Any]:
    """A backport notification: a ``history`` Bundle, SubscriptionStatus first, then the focus resources."""
    content = payload_content(row)
    status = status_parameters(row, kind, base, [(outbound, body is not None) for outbound, body in events], since)
    entries: list[dict[str, Any]] = [{"fullUrl": f"urn:uuid:{status['id']}", "resource": status}]
    for outbound, body in events:
        if content == "empty" or body is None:
            continue  # what the subscriber may not read now is never sent
        entry: dict[str, Any] = {"fullUrl": f"{base}/{outbound.focus_type}/{outbound.focus_id}"}
        if content == "full-resource":
            entry["resource"] = json.loads(body)
        entry["request"] = {"method": "PUT", "url": f"{outbound.focus_type}/{outbound.focus_id}"}
        entry["response"] = {"status": "200"}
        entries.append(entry)
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "history",
        "timestamp": format_instant(datetime.now(UTC)),
        "entry": entries,
    }


def _headers(row: SubscriptionRow) -> dict[str, str]:
    headers: dict[str, str] = {}
    for header in row.channel.get("header") or []:
        name, _, value = str(header).partition(":")
        if name.strip():
            headers[name.strip()] = value.strip()
    return headers


def _heartbeat_seconds(row: SubscriptionRow) -> float | None:
    for extension in row.channel.get("extension") or []:
        if extension.get("url") == HEARTBEAT_PERIOD and extension.get("valueUnsignedInt"):
            return float(extension["valueUnsignedInt"])
    return None


class Deliverer(threading.Thread):
    """Catches the matcher up and delivers its outbox (one thread; see the module docstring)."""

    def __init__(self, services: Services, matcher: SubscriptionMatcher) -> None:
        super().__init__(name="ehr-subscription-delivery", daemon=True)
        self.services = services
        self.matcher = matcher
        settings = services.settings
        self.base = settings.subscription_base_url.rstrip("/")
        self.retry_base = settings.subscription_retry_base_seconds
        self.retry_max = settings.subscription_retry_max_seconds
        self.max_attempts = settings.subscription_max_attempts
        self.allow_http = settings.subscription_allow_http
        self.poll = settings.subscription_poll_seconds
        #: Delivery's share of the CPU while writes commit: it never slows them beyond that.
        self.pacing = DeliveryPacing(settings.subscription_delivery_share)
        self._stopping = threading.Event()
        self._http = RestHookClient(timeout=10.0)
        self._pool = ThreadPoolExecutor(_PARALLEL, thread_name_prefix="ehr-subscription-send")
        #: Subscriptions whose handshake succeeded, until the log shows them ``active``.
        self._handshaken: dict[str, int] = {}
        self._handshake_due: dict[str, float] = {}
        self._heartbeat_sent: dict[str, float] = {}
        #: Set by a commit of the resource views (``wake``): there may be events to match.
        self._woken = threading.Event()
        #: The log's last notification id at the previous round (see ``_follow_log``).
        self._previous_head = 0
        #: When the matcher was last caught up (monotonic).
        self._matched_at = 0.0
        #: Per subscription, its matched-events counter when its outbox last held nothing undelivered: it is
        #: not asked again until the matcher numbers a new event for it.
        self._drained: dict[str, int] = {}
        #: Subscriptions with an event waiting for its retry: asked every round.
        self._retrying: set[str] = set()
        #: Whether a timer (a retry, a handshake, a heartbeat, events appended after a write) wants the next
        #: round soon rather than on the next commit.
        self._timed = True
        views = services.views
        self.claims: DeliveryClaims = (
            AdvisoryClaims(views.conninfo, views.schema) if isinstance(views, PostgresViews) else SoleProcess()
        )

    def wake(self, position: int = 0) -> None:
        """A commit of the resource views (``Projector.on_applied``): match and deliver now (paced: see
        ``run``)."""
        self.pacing.write_committed()
        self._woken.set()

    def stop(self) -> None:
        self._stopping.set()
        self._woken.set()
        self.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()
        self.claims.close()

    def run(self) -> None:
        while not self._stopping.is_set():
            began, cpu = self.pacing.clock(), time.thread_time()
            try:
                busy = self.step()
            except Exception:  # the delivery must outlive a database restart or a bad endpoint
                log.warning("subscription delivery failed; retrying", exc_info=True)
                busy = False
            # While writes commit, rest until the round's CPU (this thread's: matching, reading, marking; and
            # the sending threads') is within delivery's share: writes never wait on delivery beyond it.
            self.pacing.spent(time.thread_time() - cpu)
            rest = self.pacing.rest(began)
            if rest > 0:
                self._stopping.wait(rest)
            if not busy:
                self._woken.wait(self.poll if self._timed else _IDLE_SECONDS)
                self._woken.clear()

    def step(self) -> bool:
        """One round: match, handshake, heartbeat, deliver what is due; True if anything was sent."""
        behind = self._follow_log()
        # Matched when the resource views moved in this process (what woke the thread), and at least every
        # idle period (another process's writes, which that process matches itself unless it died).
        now = time.monotonic()
        turn = _PACED_TURN_SECONDS if self.pacing.writing() else _TURN_SECONDS
        if self.matcher.position < self.services.projector.position or now >= self._matched_at + _IDLE_SECONDS:
            self._matched_at = now
            self.matcher.catch_up_within(turn, _PACED_BATCH if self.pacing.writing() else None)
        with self.services.views.read_primary() as tx:
            rows = {row.id: row for row in subscription_rows(tx)}
        # Only the subscriptions this process holds (one process at a time each); their outbox is read after
        # the claim, so a subscription taken over starts after what its previous holder marked delivered.
        claimed = self.claims.claim(sid for sid, row in rows.items() if row.status in ("requested", "active"))
        # Only an active subscription is sent its events (a requested one waits for its handshake): only those
        # with something new since their outbox was last found empty, or an event waiting for its retry.
        asked = [
            sid
            for sid in sorted(claimed)
            if rows[sid].status == "active" and (sid in self._retrying or self._drained.get(sid) != rows[sid].events)
        ]
        held: set[str] = set()
        with self.services.views.read_primary() as tx:
            due = due_events(tx, time.time(), asked, held=held) if asked else []
        with_events = {outbound.subscription_id for outbound in due}
        for sid in asked:
            if sid not in with_events and sid not in held:
                self._drained[sid] = rows[sid].events
                self._retrying.discard(sid)
        self._retrying |= held
        sent = False
        for row in (rows[sid] for sid in sorted(claimed)):
            if row.status == "requested":
                sent |= self._handshake(row)
            elif row.status == "active":
                sent |= self._heartbeat(row)
        self._timed = bool(
            behind
            or self._retrying
            or any(rows[sid].status == "requested" or _heartbeat_seconds(rows[sid]) for sid in claimed)
        )
        # Each subscription's events go in event-number order, stopping at its first failure; subscriptions
        # are sent to in parallel.
        queues: dict[str, list[Outbound]] = {}
        for outbound in due:
            subscribed = rows.get(outbound.subscription_id)
            if subscribed is not None and subscribed.status == "active":
                queues.setdefault(outbound.subscription_id, []).append(outbound)
        if not queues:
            return sent
        # The foci as each subscriber's institution may read them now: read once for the round, not per event.
        with self.services.views.read_primary() as tx:
            bodies = visible_foci(tx, [(rows[sid].institution, o) for sid, queue in queues.items() for o in queue])
        work = [(rows[sid], queue) for sid, queue in queues.items()]
        until = time.monotonic() + turn
        outcomes = list(self._pool.map(lambda pair: self._send_in_order(pair[0], pair[1], bodies, until), work))
        failed: list[tuple[SubscriptionRow, Outbound, int, str]] = []
        with self.services.views.write() as tx:
            mark_delivered(tx, [(o.subscription_id, o.event_number) for delivered, _ in outcomes for o in delivered])
            for (row, _), (_, failure) in zip(work, outcomes, strict=True):
                if failure is not None:
                    outbound, error = failure
                    self._retrying.add(row.id)
                    next_attempt = time.time() + self._backoff(outbound.attempts + 1)
                    attempts = mark_failed(tx, row.id, outbound.event_number, next_attempt, error)
                    failed.append((row, outbound, attempts, error))
        for row, outbound, attempts, error in failed:
            if attempts >= self.max_attempts:
                self._set_status(row, "error", f"notification {outbound.event_number} failed {attempts} times: {error}")
        return True

    def _send_in_order(
        self,
        row: SubscriptionRow,
        queue: list[Outbound],
        bodies: dict[tuple[str, str, str], bytes | None],
        until: float,
    ) -> tuple[list[Outbound], tuple[Outbound, str] | None]:
        """Send ``queue`` in order until the first failure or the round's end (``until``, monotonic: what
        is left goes next round, first); (those delivered, the first failure and its error).

        The events a round delivered are one AuditEvent (an entity per focus sent), a failed attempt another:
        fifty subscriptions matching every write would otherwise add fifty audit entries (each appended,
        projected and sealed into the audit ledger) to each write."""
        cpu = time.thread_time()
        try:
            return self._send_queue(row, queue, bodies, until)
        finally:
            self.pacing.spent(time.thread_time() - cpu)  # this sending thread's part of the round

    def _send_queue(
        self,
        row: SubscriptionRow,
        queue: list[Outbound],
        bodies: dict[tuple[str, str, str], bytes | None],
        until: float,
    ) -> tuple[list[Outbound], tuple[Outbound, str] | None]:
        delivered: list[Outbound] = []
        sent: list[str] = []
        method, status = "POST", 0
        failure: tuple[Outbound, str] | None = None
        for outbound in queue:
            if self._stopping.is_set() or (delivered and time.monotonic() >= until):
                break
            body = bodies.get((row.institution, outbound.focus_type, outbound.focus_id))
            attempt_status, error, attempt_method, url, entities = self._send_event(row, outbound, body)
            if error:
                self._audit(row, attempt_method, url, attempt_status, entities)
                failure = (outbound, error)
                break
            delivered.append(outbound)
            sent += entities
            method, status = attempt_method, attempt_status
        if delivered:
            self._audit(row, method, str(row.channel.get("endpoint") or ""), status, sent)
        return delivered, failure

    def _follow_log(self) -> bool:
        """Project into the resource views what the log held at the previous round and nobody projected
        (on SQLite the views follow the log only after a write, and the master patient index appends its
        links after the write that caused them); True if the log is ahead of them now.

        Only what was already there at the previous round: a write appended since then is being made
        visible by the request that made it, which must not wait for this thread to apply it instead."""
        projector = self.services.projector
        head = projector.application.recorder.max_notification_id() or 0
        if projector.position < self._previous_head:
            projector.catch_up(until=self._previous_head)
        self._previous_head = head
        return head > projector.position

    # -- channel ---------------------------------------------------------------------------------

    def _send(
        self,
        row: SubscriptionRow,
        method: str,
        url: str,
        body: dict[str, Any] | bytes | None,
        extra: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        """(HTTP status, error) of one request; status 0: no answer."""
        if not endpoint_allowed(url, self.allow_http):
            return 0, f"endpoint not allowed (https, or http on loopback): {url}"
        headers = _headers(row) | (extra or {})
        content: bytes | None = None
        if isinstance(body, dict):
            content = json.dumps(body).encode()
        elif body is not None:
            content = body
        if content is not None:
            headers.setdefault("Content-Type", "application/fhir+json")
        try:
            status = self._http.request(method, url, content, headers)
        except (OSError, http.client.HTTPException, ValueError) as error:  # ValueError: a header http refuses
            return 0, f"{type(error).__name__}: {error}"
        if 200 <= status < 300:
            return status, ""
        return status, f"the endpoint answered {status}"

    def _audit(self, row: SubscriptionRow, method: str, url: str, status: int, entities: list[str]) -> None:
        entry = AuditEntry(
            recorded=format_instant(datetime.now(UTC)),
            interaction="subscription-notification",
            method=method,
            path=urlsplit(url).path or "/",
            status=status or 502,
            institution=row.institution,
            user="system/subscriptions",
            purpose="TREAT",
            request_id=uuid.uuid4().hex,
            operation="subscription-notification",
            entities=[f"Subscription/{row.id}", *entities],
        )
        try:
            self.services.compliance.audit_writer.submit(entry)
        except Exception:
            log.warning("could not audit a subscription notification", exc_info=True)

    # -- handshake, heartbeat, events --------------------------------------------------------------

    def _handshake(self, row: SubscriptionRow) -> bool:
        if self._handshaken.get(row.id) == row.version or self._handshake_due.get(row.id, 0) > time.time():
            return False
        endpoint = str(row.channel.get("endpoint") or "")
        if row.topic:
            status, error = self._send(row, "POST", endpoint, notification_bundle(row, "handshake", self.base))
        else:
            status, error = self._send(row, "POST", endpoint, None)
        self._audit(row, "POST", endpoint, status, [])
        if error:
            attempts = int(self._handshake_due.get(f"{row.id}#n", 0)) + 1
            self._handshake_due[f"{row.id}#n"] = attempts
            if attempts >= self.max_attempts:
                self._set_status(row, "error", f"handshake failed: {error}")
                self._handshake_due.pop(f"{row.id}#n", None)
            else:
                self._handshake_due[row.id] = time.time() + self._backoff(attempts)
            return True
        self._handshake_due.pop(f"{row.id}#n", None)
        self._handshake_due.pop(row.id, None)
        with self.services.views.write() as tx:
            reset_attempts(tx, row.id)
        self._handshaken[row.id] = row.version
        self._set_status(row, "active", None)
        return True

    def _heartbeat(self, row: SubscriptionRow) -> bool:
        period = _heartbeat_seconds(row)
        if period is None or not row.topic:
            return False
        now = time.time()
        last = self._heartbeat_sent.setdefault(row.id, now)
        if now - last < period:
            return False
        self._heartbeat_sent[row.id] = now
        endpoint = str(row.channel.get("endpoint") or "")
        status, _ = self._send(row, "POST", endpoint, notification_bundle(row, "heartbeat", self.base))
        self._audit(row, "POST", endpoint, status, [])
        return True

    def _send_event(
        self, row: SubscriptionRow, outbound: Outbound, body: bytes | None
    ) -> tuple[int, str, str, str, list[str]]:
        """Send one event with its focus ``body`` as the subscriber may read it (None: not readable); (HTTP
        status, error, method, URL, the focus if it travelled). Marked delivered or failed, and audited, by
        the caller."""
        endpoint = str(row.channel.get("endpoint") or "")
        number = {"X-Subscription-Event-Number": str(outbound.event_number)}
        focus = f"{outbound.focus_type}/{outbound.focus_id}"
        if row.topic:
            bundle = notification_bundle(row, "event-notification", self.base, [(outbound, body)])
            method, url, status_error = "POST", endpoint, self._send(row, "POST", endpoint, bundle, number)
        elif row.channel.get("payload") and body is not None:
            # R4 subscription.html: with a payload the resource is PUT to [endpoint]/[type]/[id].
            method, url = "PUT", f"{endpoint.rstrip('/')}/{focus}"
            status_error = self._send(row, method, url, body, number)
        else:
            method, url, status_error = "POST", endpoint, self._send(row, "POST", endpoint, None, number)
        return *status_error, method, url, [focus] if body is not None else []

    def _backoff(self, attempts: int) -> float:
        return float(min(self.retry_max, self.retry_base * 2 ** (attempts - 1)))

    def _set_status(self, row: SubscriptionRow, status: str, error: str | None) -> None:
        """The server's own status change: a new version of the Subscription, unless the client changed it."""
        resource = dict(row.resource)
        resource.pop("meta", None)
        resource["status"] = status
        if error is None:
            resource.pop("error", None)
        else:
            resource["error"] = error[:1000]
        context = WriteContext(
            institution=row.institution, user="system/subscriptions", interaction="update", purpose="TREAT"
        )
        try:
            written = self.services.application.update("Subscription", row.id, resource, context, if_match=row.version)
            self.services.wait_until_visible(written)
        except Exception as problem:
            log.info("subscription %s: status %s not written: %s", row.id, status, problem)
