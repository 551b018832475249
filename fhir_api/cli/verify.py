"""``ehr verify`` and ``ehr verify-proof``: check the ledger, or one inclusion proof, offline.

``ehr verify`` recomputes every leaf, Merkle root, chain link and signature from the event store and
exits 0 only if the ledger holds; otherwise it names the first altered, missing, moved or inserted event
and exits 1. ``--public-key`` takes the published key (``GET /fhir/$ledger-key``); without it the server's
own key file is used. Both logs are checked, the clinical log's ledger then the audit log's (with the
break-the-glass review list it signs), unless ``--log clinical`` or ``--log audit`` names one: an intact
record whose access trail was altered is not intact. A ``--head`` is one log's head (``$ledger-head``
answers the clinical log's unless asked ``?log=audit``), so with ``--head`` and no ``--log`` only the
clinical log is checked.

A ledger in the database cannot, alone, show that the log's tail is gone: whoever deletes the last events
can delete their blocks too. So ``ehr verify`` also checks the signed heads kept outside the database —
the copy the server writes beside its key (``ledger-heads/``) and any ``--head`` fetched earlier from
``GET /fhir/$ledger-head`` — and fails with "the log was truncated" when the log or the ledger ends
before one of them. Events after the last signed head fail it when they do not decode as this log's
events (forged) or are older than the sealing interval plus ``EHR_LEDGER_UNSEALED_GRACE_SECONDS``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from eventsourcing.application import Application
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ehr_core.application import RecordApplication
from ehr_core.audit import AuditLog, BreakGlassAccess
from ehr_core.ledger import BlockHead, LedgerKey, LedgerSettings, check_proof, load_public_key
from ehr_core.settings import Settings
from fhir_api.services import ledger_of
from projections.access import break_glass_listed
from projections.ledger import VerifyReport, raw_reader, read_witness, sealed_events, verify, witness_path
from projections.projector import create_quarantine_table, quarantined_events
from projections.setup import open_view_database

__all__ = ["add_parsers", "run_verify"]


def _public_key(path: Path | None, settings: Settings) -> Any:
    if path is not None:
        return load_public_key(path.read_bytes())
    return LedgerKey.configured(settings.data_dir).public_key


def _signed_heads(args: argparse.Namespace, settings: Settings, name: str) -> list[tuple[BlockHead, bytes]]:
    """The signed heads kept outside the database: the server's own copy, and those given with ``--head``."""
    found = []
    for path in [witness_path(settings, name), *(args.head or [])]:
        kept = read_witness(path)
        if kept is not None:
            found.append(kept)
    return found


def _unsealed_limit() -> float:
    ledger = LedgerSettings()
    return max(ledger.seal_seconds, 0.0) + ledger.unsealed_grace_seconds


def _verify(console: Console, *args: Any, **kwargs: Any) -> VerifyReport | None:
    try:
        return verify(*args, **kwargs)
    except Exception as error:  # an unreadable store is not an intact one: say so, never a traceback
        console.print(f"[bold red]ERROR[/]: the store could not be read: {error}")
        print(f"FAILED: the store could not be read: {error}")
        return None


def _logs(args: argparse.Namespace) -> tuple[str, ...]:
    """Which logs to check: ``--log`` (``record`` is the clinical log's name in ``$ledger-head?log=``)."""
    chosen = args.log or ("clinical" if args.head else "both")
    return {"both": ("clinical", "audit"), "audit": ("audit",)}.get(chosen, ("clinical",))


def run_verify(args: argparse.Namespace) -> int:
    settings = Settings()
    outcome = 0
    for log in _logs(args):
        if log == "audit":
            checked = _verify_log(args, AuditLog(settings), settings, settings, "audit_ledger", "audit log: ")
            outcome = max(outcome, checked, _verify_break_glass_review(settings))
        else:
            outcome = max(outcome, _verify_clinical(args, settings))
    return outcome


def _verify_clinical(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.federated:
        return _verify_log(args, RecordApplication(settings), settings, settings, "ledger")
    # Each institution's store has a ledger of its own in the national database.
    outcome = 0
    for store in settings.store_urls():
        store_settings = settings.for_store(store)
        try:
            application = RecordApplication(store_settings)
        except Exception as error:  # a store that does not answer cannot be vouched for: say which
            print(f"FAILED: {store}'s store could not be read: {error}")
            outcome = max(outcome, 2)
            continue
        ledger = ledger_of(store)
        outcome = max(outcome, _verify_log(args, application, store_settings, settings, ledger, f"{store}: "))
    return outcome


def _verify_break_glass_review(settings: Settings) -> int:
    """The review list a compliance officer works from (``break_glass_log``) is a projection of the
    break-the-glass events of the audit log, which its ledger signs: every event must have its row, and
    every row its event. A row deleted from the table (or one added without an access behind it) is found
    here, and ``ehr rebuild break_glass`` puts back what the log says."""
    audit_log = AuditLog(settings)
    views = open_view_database(settings)
    try:
        recorded: dict[int, tuple[str, str, str]] = {}
        start = 1
        while True:
            notifications = audit_log.recorder.select_notifications(start=start, limit=1000)
            for notification in notifications:
                event = audit_log.mapper.to_domain_event(notification)
                if isinstance(event, BreakGlassAccess.Granted):
                    recorded[notification.id] = (event.institution, event.user, event.reason)
            if len(notifications) < 1000:
                break
            start = notifications[-1].id + 1
        with views.read() as tx:
            listed = break_glass_listed(tx)
    finally:
        views.close()
        audit_log.close()
    missing = sorted(set(recorded) - set(listed))
    unrecorded = sorted(set(listed) - set(recorded))
    if not missing and not unrecorded:
        print(f"break-the-glass review list complete: {len(recorded)} accesses in the audit log")
        return 0
    if missing:
        institution, user, reason = recorded[missing[0]]
        problem = (
            f"{len(missing)} break-the-glass accesses in the signed audit log are missing from the review list "
            f"(break_glass_log), e.g. #{missing[0]} by {user} of {institution} ({reason!r})"
        )
    else:
        institution, user, reason = listed[unrecorded[0]]
        problem = (
            f"{len(unrecorded)} rows of the review list (break_glass_log) have no break-the-glass access in the "
            f"signed audit log, e.g. #{unrecorded[0]} by {user} of {institution} ({reason!r})"
        )
    print(f"FAILED: {problem}; `ehr rebuild break_glass` restores the list from the log; find who changed it")
    return 1


def _quarantined(views: Any) -> list[tuple[str, int, str]]:
    """(projection, notification id, error) of every quarantined event (projections/projector.py)."""
    with views.write() as tx:
        create_quarantine_table(tx)
        return quarantined_events(tx)


def _verify_log(
    args: argparse.Namespace,
    application: Application[Any],
    settings: Settings,
    views_settings: Settings,
    name: str,
    label: str = "",
) -> int:
    """Check one log's ledger: ``settings`` reach the log, ``views_settings`` the ledger's tables."""
    console = Console(stderr=True, soft_wrap=True)
    views = open_view_database(views_settings)
    try:
        public_key = _public_key(args.public_key, settings)
        with views.read() as tx:
            total = sealed_events(tx, name)
        started = time.perf_counter()
        columns = (
            TextColumn("[bold]verify"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("events"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, disable=args.quiet) as progress:
            task = progress.add_task("verify", total=total)
            report = _verify(
                console,
                application,
                views,
                public_key,
                name,
                lambda n: progress.update(task, advance=n),
                raw_reader(application, settings),
                signed_heads=_signed_heads(args, views_settings, name),
                unsealed_limit=_unsealed_limit(),
            )
        if report is None:
            return 2
        # Tampering first: an event forged into the log is also what a projection then fails on and
        # quarantines, and the forgery, not its symptom, is what the compliance officer must be told.
        if not report.ok:
            console.print(f"[bold red]TAMPERED[/]: {label}{report.problems[0]}")
            print(f"FAILED: {label}{report.problems[0]}")
            return 1
        quarantined = _quarantined(views)
        if quarantined:
            # The log is the record, but a view that skipped events answers as if they did not exist.
            first = quarantined[0]
            problem = (
                f"{len(quarantined)} events are quarantined (skipped by a projection), the first: notification "
                f"{first[1]} in {first[0]}: {first[2]}; fix the cause, then run `ehr project --retry-quarantined`"
            )
            console.print(f"[bold red]PROBLEM[/]: {label}{problem}")
            print(f"FAILED: {label}{problem}")
            return 1
        seconds = time.perf_counter() - started
        rate = report.events / seconds if seconds > 0 else 0.0
        print(
            f"{label}intact: {report.events} events in {report.blocks} signed blocks "
            f"({report.unsealed} newer events not yet sealed); {seconds:.2f} s, {rate:,.0f} events/s"
        )
        return 0
    finally:
        views.close()
        application.close()


def run_verify_proof(args: argparse.Namespace) -> int:
    proof = json.loads(args.proof.read_text())
    if args.public_key is not None:
        public_key = load_public_key(args.public_key.read_bytes())
    else:
        public_key = load_public_key(proof["public_key"].encode())
        print("note: using the key embedded in the proof; compare it with GET /fhir/$ledger-key")
    problems = check_proof(proof, public_key)
    head = proof["head"]
    if problems:
        for problem in problems:
            print(f"FAILED: {problem}")
        return 1
    event = proof.get("event", {})
    print(
        f"valid: event #{event.get('notification_id')} is leaf {proof['leaf_index']} of block {head['block']} "
        f"(root {head['root'][:16]}…, sealed {head['sealed']}, key {head['key']})"
    )
    return 0


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "verify", help="recompute the tamper-evident ledger from the store (exit 1 if anything was altered)"
    )
    parser.add_argument("--public-key", type=Path, default=None, help="PEM of the published ledger key")
    parser.add_argument(
        "--log",
        choices=("both", "clinical", "record", "audit"),
        default=None,
        help="which log's ledger (default both; with --head, clinical); record is another name for clinical",
    )
    parser.add_argument(
        "--head",
        type=Path,
        action="append",
        help="a signed head kept earlier (JSON from GET /fhir/$ledger-head); the log must not end before it",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_verify)
    proof = commands.add_parser("verify-proof", help="check an inclusion proof from GET /fhir/$ledger-proof, offline")
    proof.add_argument("proof", type=Path)
    proof.add_argument("--public-key", type=Path, default=None, help="PEM of the published ledger key")
    proof.set_defaults(handler=run_verify_proof)
