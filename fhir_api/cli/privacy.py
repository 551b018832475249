"""``ehr keys rotate``, ``ehr keys list``, ``ehr shred`` and ``ehr arco-cancel``.

- ``ehr keys rotate --new-key-file PATH [--generate]``: re-wrap every data key under a new master key (one
  transaction; events untouched), then point ``EHR_MASTER_KEY_FILE`` at PATH. Without ``--new-key-file`` in
  development (no configured master), the generated ``<data dir>/master-key`` is rotated in place.
- ``ehr shred --patient ID --legal-basis TEXT [--force]``: crypto-shred one patient's record; refused during
  the NOM-004 retention period unless ``--force`` (the legal basis is recorded in the log).
- ``ehr arco-cancel --patient ID --request TEXT``: an ARCO cancellation: a block during retention, a
  shredding once retention has ended.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from ehr_core.context import WriteContext
from ehr_core.errors import RecordError
from ehr_core.keys import KeyStore, MasterKey, load_masters, write_key_file
from ehr_core.privacy import ErasureReport, Privacy, retention_ends
from ehr_core.settings import Settings

__all__ = ["add_parsers"]


def _context(args: argparse.Namespace, interaction: str) -> WriteContext:
    return WriteContext(
        institution=args.institution,
        user=args.user or getpass.getuser(),
        role=args.role,
        purpose="HRIGHT",  # HL7 PurposeOfUse: exercise of the data subject's rights
        interaction=interaction,
    )


def _report(report: ErasureReport) -> None:
    until = report.retained_until.date().isoformat() if report.retained_until else "-"
    print(
        f"ehr: Patient/{report.patient} {report.action}: {len(report.resources)} resources, {report.events} events; "
        f"retention until {until}{' (FORCED)' if report.forced else ''}; recorded as notification "
        f"{report.notification_id}",
        flush=True,
    )


def run_shred(args: argparse.Namespace) -> int:
    from fhir_api.bootstrap import open_services

    services = open_services(Settings(), follow=False)
    try:
        report = Privacy(services.application).shred(
            args.patient, args.legal_basis, _context(args, "shred"), force=args.force
        )
        services.projector.catch_up()
        _report(report)
        return 0
    except RecordError as error:
        print(f"ehr shred: refused: {error}", file=sys.stderr)
        return 1
    finally:
        services.close()


def run_arco_cancel(args: argparse.Namespace) -> int:
    from fhir_api.bootstrap import open_services

    services = open_services(Settings(), follow=False)
    try:
        privacy = Privacy(services.application)
        _, _, last_act = privacy.scan(args.patient)
        context = _context(args, "arco-cancellation")
        basis = f"ARCO cancellation request: {args.request}"
        if last_act is not None and datetime.now(UTC) < retention_ends(last_act):
            report = privacy.block(args.patient, basis, context)
        else:
            report = privacy.shred(args.patient, basis, context)
        services.projector.catch_up()
        _report(report)
        return 0
    except RecordError as error:
        print(f"ehr arco-cancel: refused: {error}", file=sys.stderr)
        return 1
    finally:
        services.close()


def run_rotate(args: argparse.Namespace) -> int:
    settings = Settings()
    master, previous = load_masters(settings)
    store = KeyStore(settings, master, previous)
    try:
        configured = bool(settings.master_key or settings.master_key_file)
        if args.new_key_file is None:
            if configured or settings.production:
                print("ehr keys rotate: --new-key-file is required with a configured master key", file=sys.stderr)
                return 2
            # Development: rotate <data dir>/master-key in place, crash-safe (every file is read by id).
            path = settings.data_dir / "master-key"
            new = MasterKey.generate()
            write_key_file(path.with_name("master-key.previous"), master)
            write_key_file(path.with_name("master-key.next"), new)
            count = store.rotate(new)
            os.replace(path.with_name("master-key.next"), path)
            path.with_name("master-key.previous").unlink()
            print(f"ehr: re-wrapped {count} data keys under the new development master key {new.id}")
            return 0
        target: Path = args.new_key_file
        if args.generate:
            if target.exists():
                print(f"ehr keys rotate: {target} exists; not overwriting a key", file=sys.stderr)
                return 2
            write_key_file(target, MasterKey.generate())
        new = MasterKey.parse(target.read_text())
        count = store.rotate(new)
        print(
            f"ehr: re-wrapped {count} data keys under master key {new.id}; now set EHR_MASTER_KEY_FILE={target} "
            f"(the old key {master.id} no longer opens anything)"
        )
        return 0
    finally:
        store.close()


def run_list(args: argparse.Namespace) -> int:
    store = KeyStore(Settings())
    try:
        for row in store.rows():
            print(f"{row.key_id.hex()}  {row.status:9}  master={row.master_id or '-'}  changed={row.changed or '-'}")
        return 0
    finally:
        store.close()


def _who(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--institution", default="local", help="institution performing the operation")
    parser.add_argument("--user", default=None, help="operator (default: the OS user)")
    parser.add_argument("--role", default="privacy-officer")


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="data keys: list, rotate the master key")
    sub = keys.add_subparsers(dest="keys_command", required=True)
    rotate = sub.add_parser("rotate", help="re-wrap every data key under a new master key (events untouched)")
    rotate.add_argument("--new-key-file", type=Path, default=None, help="file holding the new master key (base64)")
    rotate.add_argument("--generate", action="store_true", help="generate the new key into --new-key-file")
    rotate.set_defaults(handler=run_rotate)
    listing = sub.add_parser("list", help="key ids and status (never a key, never a patient id)")
    listing.set_defaults(handler=run_list)

    shred = commands.add_parser("shred", help="crypto-shred one patient's record (audited, NOM-004 aware)")
    shred.add_argument("--patient", required=True, help="the Patient id")
    shred.add_argument("--legal-basis", required=True, help="why: recorded in the log")
    shred.add_argument("--force", action="store_true", help="shred during the retention period (legal order)")
    _who(shred)
    shred.set_defaults(handler=run_shred)

    cancel = commands.add_parser("arco-cancel", help="ARCO cancellation: block during retention, shred after")
    cancel.add_argument("--patient", required=True)
    cancel.add_argument("--request", required=True, help="the request's reference (folio) and summary")
    _who(cancel)
    cancel.set_defaults(handler=run_arco_cancel)
