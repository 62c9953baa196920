"""Administration from a terminal: `scanchat users add|list|disable`, `scanchat audit verify|show`,
`scanchat erase --patient ID | --scan FINGERPRINT_OR_FILE`, `scanchat expire`.

These act on the configured database (`SCANCHAT_DATABASE_URL`, else `SCANCHAT_REPORTS_DB`) with the
rights of the shell account that can already reach it; each change is written to the audit trail.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
from datetime import datetime


def _store():
    from assistant.reports.store import ReportStore

    return ReportStore()


def _operator() -> str:
    """The audit name of whoever runs an admin command: their login on this machine."""
    return f"cli:{getpass.getuser()}"


def _read_password() -> str:
    if sys.stdin.isatty():
        first, second = getpass.getpass("password: "), getpass.getpass("again: ")
        if first != second:
            raise ValueError("The two passwords differ.")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _users_add(args: argparse.Namespace) -> int:
    store = _store()
    user = store.users.add(args.name, args.role, _read_password())
    store.audit.record(_operator(), "user_add", None, user=user.name, role=user.role.value)
    print(f"user {user.name} ({user.role.value}) saved in {store.db.where}")
    return 0


def _users_list(args: argparse.Namespace) -> int:
    rows = [{"name": u.name, "role": u.role.value, "enabled": enabled} for u, enabled in _store().users.list()]
    if args.json:
        print(json.dumps(rows, indent=1))
    for row in [] if args.json else rows:
        print(f"{row['name']:<24} {row['role']:<10} {'enabled' if row['enabled'] else 'disabled'}")
    return 0


def _users_disable(args: argparse.Namespace) -> int:
    store = _store()
    store.users.disable(args.name)
    store.audit.record(_operator(), "user_disable", None, user=args.name)
    print(f"user {args.name} disabled")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    check = _store().audit.verify(expect_head=args.expect_head)
    for problem in check.problems:
        print(f"TAMPERED: {problem}")
    print(f"{check.entries} entries, head {check.head}: {'intact' if check.ok else 'BROKEN'}")
    return 0 if check.ok else 1


def _since(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from exc


def _audit_show(args: argparse.Namespace) -> int:
    entries = _store().audit.entries(user=args.user, since=args.since, action=args.action, limit=args.limit)
    for entry in entries:
        if args.json:
            print(entry.model_dump_json())
        else:
            detail = json.dumps(entry.detail, ensure_ascii=False)
            print(f"{entry.seq:>6} {entry.at:%Y-%m-%d %H:%M:%S} {entry.user:<16} {entry.action:<12} "
                  f"{(entry.scan_id or '-')[:12]:<12} {detail}")
    return 0


def _scan_id(value: str) -> str:
    """A fingerprint as printed by the audit trail, or a scan file/folder to fingerprint."""
    if re.fullmatch(r"[0-9a-f]{32}", value):
        return value
    from assistant.reports.collect import scan_fingerprint
    from assistant.scans.loading import load_scan

    return scan_fingerprint(load_scan(value))


def _erase(args: argparse.Namespace) -> int:
    if not (args.patient or args.scan):
        raise ValueError("Say whose records to erase: --patient ID or --scan FINGERPRINT_OR_FILE.")
    summary = _store().erase(_operator(), patient_id=args.patient, scan_id=_scan_id(args.scan) if args.scan else None)
    print(json.dumps(summary.model_dump()))
    return 0


def _expire(args: argparse.Namespace) -> int:
    print(f"{_store().expire_conversations()} saved conversations past the retention period deleted")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    from assistant.auth import Role

    users = subparsers.add_parser("users", help="manage who may log in (roles: clinician, reviewer, evaluator, admin)")
    users_sub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    add = users_sub.add_parser("add", help="add a user, or reset one's password and role (password read from stdin)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.set_defaults(func=_users_add)
    listing = users_sub.add_parser("list", help="users, roles and whether they are enabled")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_users_list)
    disable = users_sub.add_parser("disable", help="stop a user from logging in (their records stay)")
    disable.add_argument("name")
    disable.set_defaults(func=_users_disable)

    audit = subparsers.add_parser("audit", help="the tamper-evident audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_sub.add_parser("verify", help="check the hash chain; exit 1 if an entry was edited or deleted")
    verify.add_argument("--expect-head", help="the head hash an earlier verify printed (detects cut-off entries)")
    verify.set_defaults(func=_audit_verify)
    show = audit_sub.add_parser("show", help="entries, oldest first")
    show.add_argument("--user")
    show.add_argument("--since", type=_since, help="YYYY-MM-DD[THH:MM] (UTC unless an offset is given)")
    show.add_argument("--action", help="only this action (load_scan, ask, tool, draft, edit, sign, export, ...)")
    show.add_argument("--limit", type=int, help="only the newest N")
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    show.set_defaults(func=_audit_show)

    erase = subparsers.add_parser("erase", help="erase one patient's or one scan's records (signed reports are kept, marked)")
    erase.add_argument("--patient", help="the DICOM PatientID (matched through its keyed hash; never stored)")
    erase.add_argument("--scan", help="a scan fingerprint (32 hex digits, as in `audit show`) or the scan's file/folder")
    erase.set_defaults(func=_erase)

    expire = subparsers.add_parser("expire", help="delete saved conversations older than SCANCHAT_CONVERSATION_RETENTION_DAYS")
    expire.set_defaults(func=_expire)
