"""The audit trail: who loaded which scan, asked what, which tools ran, what was exported, edited, signed, translated.

Append-only and tamper-evident: each entry's hash covers its own fields and the previous entry's
hash, so editing or deleting an entry breaks every later link (`verify`). Database triggers refuse
updates and deletes too; the chain catches what someone with direct access does anyway. Scans are
named by their content fingerprint, never by patient data. An erasure may blank an entry's detail
(the question asked) to `REDACTED`; the entry keeps its digest, so the chain still verifies.
The newest entries could be cut off without breaking the chain: keep the head hash `verify`
prints somewhere else and pass it back as `expect_head`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from assistant.db import Database, DatabaseError
from assistant.db.schema import audit

log = logging.getLogger(__name__)

REDACTED = '{"erased":true}'
GENESIS = "0" * 64


class AuditEntry(BaseModel):
    seq: int
    at: datetime
    user: str
    action: str
    scan_id: str | None
    detail: dict[str, Any]


class AuditCheck(BaseModel):
    """What `verify` found: how many entries, the head hash to keep elsewhere, and each broken link."""

    entries: int
    head: str
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _entry_hash(prev_hash: str, seq: int, at: str, user: str, action: str, scan_id: str | None, detail_digest: str) -> str:
    return _digest(_canonical([prev_hash, seq, at, user, action, scan_id, detail_digest]))


class AuditLog:
    def __init__(self, db: Database):
        self.db = db

    def record(self, user: str, action: str, scan_id: str | None = None, /, **detail: Any) -> None:
        """Append one entry; entries are serialised (one writer at a time) so the chain has no forks.
        Raises `DatabaseError` (a message, not a traceback) when the database cannot take it."""
        try:
            with self.db.transaction() as db:
                self.append(db, user, action, scan_id, **detail)
        except SQLAlchemyError as exc:
            log.warning("audit entry %s by %s not written", action, user, exc_info=True)
            raise DatabaseError(f"The audit trail in {self.db.where} cannot be written right now; "
                                f"'{action}' was not recorded.") from exc

    def append(self, db: sa.Connection, user: str, action: str, scan_id: str | None = None, /, **detail: Any) -> None:
        """Append inside a caller's transaction, so an entry is written exactly when the change it records is."""
        if not self.db.is_sqlite:  # SQLite's BEGIN IMMEDIATE already holds the write lock
            db.execute(sa.text("LOCK TABLE audit IN SHARE ROW EXCLUSIVE MODE"))
        last = db.execute(sa.select(audit.c.seq, audit.c.hash).order_by(audit.c.seq.desc()).limit(1)).first()
        seq, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS)
        at = datetime.now(timezone.utc).isoformat()
        text = _canonical(detail)
        digest = _digest(text)
        db.execute(audit.insert().values(seq=seq, at=at, user_name=user, action=action, scan_id=scan_id, detail=text,
                                         detail_digest=digest, prev_hash=prev_hash,
                                         hash=_entry_hash(prev_hash, seq, at, user, action, scan_id, digest)))

    def entries(self, user: str | None = None, since: datetime | None = None, action: str | None = None,
                limit: int | None = None) -> list[AuditEntry]:
        query = sa.select(audit).order_by(audit.c.seq)
        if user:
            query = query.where(audit.c.user_name == user)
        if since:
            query = query.where(audit.c.at >= _utc(since).isoformat())
        if action:
            query = query.where(audit.c.action == action)
        with self.db.reading() as db:
            rows = db.execute(query).mappings().all()
        entries = [AuditEntry(seq=r["seq"], at=datetime.fromisoformat(r["at"]), user=r["user_name"], action=r["action"],
                              scan_id=r["scan_id"], detail=_parse(r["detail"])) for r in rows]
        return entries[-limit:] if limit else entries

    def verify(self, expect_head: str | None = None) -> AuditCheck:
        """Walk the chain from the first entry; every edited, inserted or deleted entry is reported by number."""
        problems: list[str] = []
        prev_hash, expected_seq, count = GENESIS, 1, 0
        redacted: set[int] = set()
        erased: set[int] = set()  # entries an erasure entry says it blanked
        with self.db.reading() as db:
            rows: Iterable = db.execute(sa.select(audit).order_by(audit.c.seq)).mappings()
            for r in rows:
                count += 1
                if r["seq"] != expected_seq:
                    problems.append(f"entries {expected_seq}-{r['seq'] - 1} are missing (deleted)")
                if r["prev_hash"] != prev_hash:
                    problems.append(f"entry {r['seq']} does not follow the entry before it (an entry before it was "
                                    "deleted, edited or inserted)")
                if r["detail"] == REDACTED:
                    redacted.add(r["seq"])
                elif _digest(r["detail"]) != r["detail_digest"]:
                    problems.append(f"entry {r['seq']}: its detail was edited")
                elif r["action"] == "erase":
                    erased.update(_parse(r["detail"]).get("redacted", []))
                if _entry_hash(r["prev_hash"], r["seq"], r["at"], r["user_name"], r["action"], r["scan_id"],
                               r["detail_digest"]) != r["hash"]:
                    problems.append(f"entry {r['seq']}: its fields were edited (hash mismatch)")
                prev_hash, expected_seq = r["hash"], r["seq"] + 1
        problems += [f"entry {seq}: its detail was blanked outside an erasure" for seq in sorted(redacted - erased)]
        if expect_head and expect_head != prev_hash:
            problems.append(f"the newest entry's hash is {prev_hash}, not the expected {expect_head}: "
                            "entries were cut off the end or the chain was rewritten")
        return AuditCheck(entries=count, head=prev_hash, problems=problems)

    def redact(self, db: sa.Connection, seqs: list[int]) -> int:
        """Blank the detail of these entries (an erasure); their digests stay, so the chain still verifies."""
        if not seqs:
            return 0
        return db.execute(audit.update().where(audit.c.seq.in_(seqs)).values(detail=REDACTED)).rowcount


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _parse(detail: str) -> dict[str, Any]:
    try:
        value = json.loads(detail)
    except ValueError:
        return {"unreadable": detail[:200]}
    return value if isinstance(value, dict) else {"value": value}
