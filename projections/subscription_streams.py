"""The subscriptions' outbox: matched events kept once per criteria, each subscription reading its own numbers.

Fifty subscriptions with the same criteria match the same events: writing one outbox row per subscription
and event made a write matched by all fifty cost fifty rows (12-15 µs of CPU each on SQLite, under the views'
one writer lock every write's projection waits for). So a matched event is written once per *stream*: the
subscriptions of one stream share its criteria, topic and institution (what decides a match and its read
policy), and the stream numbers its events 1, 2, 3... (``seq``).

A subscription's event numbers (the backport IG's ``eventNumber``, consecutive from 1 since it started) are
read through its *segments*: the seqs of a stream it followed, from ``first_seq`` (numbered
``first_number``) to ``last_seq``. The segment it follows now is kept on its ``subscriptions`` row
(``stream``, ``first_seq``; ``events`` is then the events numbered before that segment); a change of
criteria or of status (``off``, ``error``) closes it into ``subscription_segments``. Its delivery state is
on that row too: ``delivered`` (every event up to that number was delivered: delivery sends in order and
stops at the first failure), and the retry state of the next one (``attempts``, ``next_attempt``,
``error``): one row per subscription, not per event.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from projections.db import Tx

__all__ = [
    "MATCH_COLUMNS",
    "Outbound",
    "Segment",
    "due_events",
    "events_between",
    "forget_streams",
    "mark_delivered",
    "mark_failed",
    "reset_attempts",
]

#: Far beyond any event number (an open upper bound both SQL dialects take as a BIGINT).
_NO_END = 2**62

MATCH_COLUMNS = (
    "stream", "seq", "notification_id", "focus_type", "focus_id", "focus_version", "recorded", "context",
)  # fmt: skip


@dataclass(frozen=True)
class Outbound:
    """One matched event waiting to be (or already) delivered."""

    subscription_id: str
    event_number: int
    notification_id: int
    focus_type: str
    focus_id: str
    focus_version: int
    recorded: str
    attempts: int
    delivered: bool
    #: Beside the focus (a link event: the ``person`` and ``link``: linked or unlinked); None for a change.
    context: dict[str, str] | None = None


@dataclass(frozen=True)
class Segment:
    """The seqs ``first_seq``..``last_seq`` (None: still followed) of a stream, numbered from ``first_number``."""

    stream: str
    first_seq: int
    last_seq: int | None
    first_number: int

    def seq(self, number: int) -> int:
        return self.first_seq + number - self.first_number

    def number(self, seq: int) -> int:
        return self.first_number + seq - self.first_seq


@dataclass(frozen=True)
class _State:
    delivered: int
    attempts: int
    next_attempt: float
    segments: list[Segment]


def _states(tx: Tx, subscriptions: Sequence[str]) -> dict[str, _State]:
    """The delivery state and segments of ``subscriptions``: two statements for them all."""
    wanted = set(subscriptions)
    if not wanted:
        return {}
    marks = ", ".join("?" * len(wanted))
    ordered = sorted(wanted)
    rows = tx.execute(
        "SELECT id, stream, first_seq, events, delivered, attempts, next_attempt FROM subscriptions "
        f"WHERE id IN ({marks})",
        ordered,
    ).fetchall()
    closed: dict[str, list[Segment]] = {}
    for sid, stream, first, last, number in tx.execute(
        "SELECT subscription_id, stream, first_seq, last_seq, first_number FROM subscription_segments "
        f"WHERE subscription_id IN ({marks}) ORDER BY subscription_id, first_number",
        ordered,
    ).fetchall():
        closed.setdefault(str(sid), []).append(Segment(str(stream), int(first), int(last), int(number)))
    states: dict[str, _State] = {}
    for sid, stream, first_seq, base, delivered, attempts, next_attempt in rows:
        segments = closed.get(str(sid), [])
        if stream is not None:
            segments.append(Segment(str(stream), int(first_seq), None, int(base) + 1))
        states[str(sid)] = _State(int(delivered), int(attempts), float(next_attempt), segments)
    return states


def _events(
    tx: Tx, subscription_id: str, state: _State, since: int, until: int, limit: int, cache: dict[Any, list[Any]]
) -> list[Outbound]:
    """The events numbered ``since``..``until`` of a subscription, at most ``limit``, in number order: one
    indexed range read per segment, shared by subscriptions asking the same range of the same stream."""
    found: list[Outbound] = []
    for segment in state.segments:
        if len(found) >= limit:
            break
        low = max(since, segment.first_number)
        high_seq = segment.seq(until) if segment.last_seq is None else min(segment.last_seq, segment.seq(until))
        if segment.seq(low) > high_seq:
            continue
        asked = (segment.stream, segment.seq(low), high_seq, limit - len(found))
        if asked not in cache:
            cache[asked] = tx.execute(
                "SELECT seq, notification_id, focus_type, focus_id, focus_version, recorded, context "
                "FROM subscription_matches WHERE stream = ? AND seq >= ? AND seq <= ? ORDER BY seq LIMIT ?",
                asked,
            ).fetchall()
        for seq, notification, focus_type, focus_id, version, recorded, context in cache[asked]:
            number = segment.number(int(seq))
            found.append(
                Outbound(
                    subscription_id,
                    number,
                    int(notification),
                    str(focus_type),
                    str(focus_id),
                    int(version),
                    str(recorded),
                    state.attempts if number == state.delivered + 1 else 0,
                    number <= state.delivered,
                    None if context is None else {str(k): str(v) for k, v in json.loads(context).items()},
                )
            )
    return found


def due_events(
    tx: Tx,
    now: float,
    subscriptions: Sequence[str],
    per_subscription: int = 50,
    limit: int = 2000,
    held: set[str] | None = None,
) -> list[Outbound]:
    """The undelivered events of each of ``subscriptions`` whose next undelivered event is due, in
    event-number order (at most ``per_subscription`` each, fewer when ``limit`` shared among them all asks
    less): sent in that order, stopping at the first failure. ``limit`` is shared so that every subscription
    gets its turn each round: filling it with the first subscriptions in id order left the others waiting
    for as long as those first ones had a backlog. ``held`` collects the subscriptions whose undelivered
    events wait for a retry not yet due."""
    found: list[Outbound] = []
    each = max(1, min(per_subscription, limit // max(1, len(subscriptions))))
    cache: dict[Any, list[Any]] = {}
    states = _states(tx, subscriptions)
    for subscription in subscriptions:
        state = states.get(subscription)
        if state is None:
            continue
        events = _events(tx, subscription, state, state.delivered + 1, _NO_END, each, cache)
        if events and state.next_attempt <= now:
            found += events
        elif events and held is not None:
            held.add(subscription)  # undelivered, waiting for its retry
    return found


def events_between(tx: Tx, subscription_id: str, since: int, until: int | None) -> list[Outbound]:
    """The events ``since``..``until`` (inclusive) of a subscription, delivered or not (``$events``)."""
    state = _states(tx, [subscription_id]).get(subscription_id)
    if state is None:
        return []
    upper = until if until is not None else _NO_END
    return _events(tx, subscription_id, state, max(1, since), upper, _NO_END, {})


def mark_delivered(tx: Tx, delivered: Sequence[tuple[str, int]]) -> None:
    """Mark (subscription id, event number) delivered, with every event before it (sent in order): one
    statement per subscription in one batch; the next event starts with no failed attempt."""
    last: dict[str, int] = {}
    for subscription, number in delivered:
        last[subscription] = max(number, last.get(subscription, 0))
    tx.executemany(
        "UPDATE subscriptions SET delivered = ?, attempts = 0, next_attempt = 0, error = NULL "
        "WHERE id = ? AND delivered < ?",
        [(number, subscription, number) for subscription, number in sorted(last.items())],
    )


def mark_failed(tx: Tx, subscription_id: str, event_number: int, next_attempt: float, error: str) -> int:
    """Count a failed attempt at the subscription's next event (``event_number``) and schedule the next
    one; return the attempts so far."""
    tx.execute(
        "UPDATE subscriptions SET attempts = attempts + 1, next_attempt = ?, error = ? WHERE id = ? AND delivered < ?",
        (next_attempt, error[:2000], subscription_id, event_number),
    )
    row = tx.execute("SELECT attempts FROM subscriptions WHERE id = ?", (subscription_id,)).fetchone()
    return int(row[0]) if row else 0


def reset_attempts(tx: Tx, subscription_id: str) -> None:
    """A subscription handshaken again (after ``error``) retries its pending events from the start."""
    tx.execute("UPDATE subscriptions SET attempts = 0, next_attempt = 0 WHERE id = ?", (subscription_id,))


def forget_streams(tx: Tx, streams: Sequence[str]) -> None:
    """Drop the matched events of ``streams`` no subscription reads any more (a subscription deleted was
    the last to follow it, or to keep a segment of it). The stream's head stays: were the criteria
    subscribed again, it numbers on from there."""
    for stream in sorted(set(streams)):
        tx.execute(
            "DELETE FROM subscription_matches WHERE stream = ? "
            "AND NOT EXISTS (SELECT 1 FROM subscriptions WHERE stream = ?) "
            "AND NOT EXISTS (SELECT 1 FROM subscription_segments WHERE stream = ?)",
            (stream, stream, stream),
        )
