"""``ehr audit replay --patient ID [--from T] [--to T] [--format text|csv|ndjson]``.

A chronological account of one patient's record: every write (from the clinical log, via the Provenance
view: who, institution, unit, the version written) and every access or refused attempt (from the audit
log: who, what, the versions the reader received, where from, why, the outcome), oldest first. Several
``--patient`` options merge the accounts of records of the same person held by different institutions.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import asdict, dataclass

import orjson

from ehr_core.audit import AuditLog
from ehr_core.settings import Settings
from projections.audit import audit_entries_for_patient
from projections.db import Tx
from projections.provenance import provenance_for_patient
from projections.setup import audit_projector, open_view_database

__all__ = ["ReplayLine", "add_parser", "replay"]


@dataclass(frozen=True)
class ReplayLine:
    recorded: str
    kind: str  # write, access, refused
    action: str  # create, update, delete, read, search-type, ...
    resources: str  # Type/id/_history/v, space-separated
    patient: str
    institution: str
    unit: str
    user: str
    role: str
    purpose: str
    address: str
    status: str
    request_id: str


def _bound(value: str | None, upper: bool) -> str | None:
    if value is None:
        return None
    return value + "~" if upper and len(value) < 32 else value


def replay(tx: Tx, patients: list[str], since: str | None, until: str | None) -> list[ReplayLine]:
    lines: list[ReplayLine] = []
    low, high = _bound(since, False), _bound(until, True)
    for patient in patients:
        for write in provenance_for_patient(tx, patient, low, high):
            context = write.context
            action = {"POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete"}[write.method]
            lines.append(
                ReplayLine(
                    write.recorded,
                    "write",
                    "create" if write.target_version == 1 else action,
                    f"{write.target_type}/{write.target_id}/_history/{write.target_version}",
                    patient,
                    str(context.get("institution", "")),
                    str(context.get("unit", "") or ""),
                    str(context.get("user", "")),
                    str(context.get("role", "") or ""),
                    str(context.get("purpose", "")),
                    str(context.get("address", "") or ""),
                    "",
                    str(context.get("request_id", "")),
                )
            )
        for stored in audit_entries_for_patient(tx, patient, low, high):
            entry = stored.entry
            if entry.action in ("C", "U", "D") and entry.status < 400:
                continue  # the write itself is listed from the clinical log
            lines.append(
                ReplayLine(
                    entry.recorded,
                    "access" if entry.status < 400 else "refused",
                    entry.interaction if not entry.operation else entry.operation,
                    " ".join(entry.entities) or f"{entry.path}?{entry.query}",
                    patient,
                    entry.institution,
                    entry.unit or "",
                    entry.user,
                    entry.role or "",
                    entry.purpose,
                    entry.address or "",
                    str(entry.status),
                    entry.request_id,
                )
            )
    lines.sort(key=lambda line: (line.recorded, line.kind != "write"))
    return lines


def _write(lines: list[ReplayLine], form: str) -> None:
    out = sys.stdout
    if form == "ndjson":
        for line in lines:
            out.write(orjson.dumps(asdict(line)).decode() + "\n")
    elif form == "csv":
        writer = csv.writer(out)
        writer.writerow(list(ReplayLine.__dataclass_fields__))
        for line in lines:
            writer.writerow(list(asdict(line).values()))
    else:
        for line in lines:
            who = f"{line.user}" + (f" ({line.role})" if line.role else "") + f" @ {line.institution}"
            where = "/".join(x for x in (line.unit, line.address) if x)
            status = f" -> {line.status}" if line.status else ""
            out.write(
                f"{line.recorded}  {line.kind:<7} {line.action:<16} {line.resources}  by {who}"
                f"{' [' + where + ']' if where else ''} for {line.purpose}{status}\n"
            )


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    views = open_view_database(settings)
    audit_log = AuditLog(settings)
    try:
        # The audit views may lag a server that is still running; bring them up to date first.
        audit_projector(audit_log, views, settings).catch_up()
        with views.read() as tx:
            lines = replay(tx, args.patient, args.since, args.until)
        _write(lines, args.format)
        return 0
    finally:
        audit_log.close()
        views.close()


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("audit", help="compliance: replay who wrote and saw a patient's record")
    sub = parser.add_subparsers(dest="audit_command", required=True)
    replay_parser = sub.add_parser("replay", help="every write and access to one patient's record, oldest first")
    replay_parser.add_argument("--patient", action="append", required=True, help="Patient id (repeatable)")
    replay_parser.add_argument("--from", dest="since", default=None, help="instant or date (inclusive)")
    replay_parser.add_argument("--to", dest="until", default=None, help="instant or date (inclusive)")
    replay_parser.add_argument("--format", choices=("text", "csv", "ndjson"), default="text")
    replay_parser.set_defaults(handler=run)
