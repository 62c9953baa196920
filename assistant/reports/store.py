"""Report versions and conversations in the database (`assistant.db`): every save is a new version,
signed versions never change, and every record belongs to a user.

Each save runs in one transaction (a crash mid-save leaves the previous versions as they were);
a trigger makes signed versions read-only inside the database itself, and a save based on an
older version than the latest is refused instead of silently overwriting another tab's edit.
A report is visible to its owner and to reviewers; only a reviewer signs, as the logged-in user.
A conversation is found again by (user, scan), never by scan alone. Every change to a report is
written to the audit trail in the same transaction. The wording a signed report used for each
concept is remembered, so later reports reuse it.

Nothing here lets a database problem escape as a traceback: an unavailable database becomes a
`ReportError` saying so, and a row that cannot be read is copied to the `quarantine` table (and a
conversation moved there), so one bad row never makes a scan impossible to open.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from assistant.audit import AuditLog
from assistant.auth import User, Users
from assistant.config import Settings, get_settings
from assistant.db import Database, DatabaseError, default_url, sqlite_url
from assistant.db.schema import audit as audit_table
from assistant.db.schema import (conversations, quarantine, report_erasures, reports, unsaved_edits, versions,
                                 wordings)
from assistant.reports.conversations import SavedConversation
from assistant.reports.model import ReportContent, ReportError, ReportText, ReportVersion, UnsavedEdit

log = logging.getLogger(__name__)

Warn = Callable[[str], None]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _guarded(method):
    """Database failures (locked, unreachable, a trigger's refusal) become a ReportError the UI shows as a warning."""

    @functools.wraps(method)
    def wrapper(self: ReportStore, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except IntegrityError as exc:
            log.warning("refused by the database: %s", exc)
            raise ReportError(f"The database refused the change: {_reason(exc)}.") from exc
        except SQLAlchemyError as exc:
            log.warning("database error in %s", method.__name__, exc_info=True)
            raise ReportError(f"The database {self.db.where} is not available right now ({_reason(exc)}); "
                              "nothing was changed, try again in a moment.") from exc

    return wrapper


class Erasure(BaseModel):
    """What `ReportStore.erase` removed and what it kept."""

    conversations: int
    reports_deleted: int
    reports_marked: int = 0
    versions_deleted: int
    audit_entries_redacted: int


class ReportStore:
    """Reports, conversations, users and the audit trail of one database (SQLite file or PostgreSQL URL).

    ``ReportStore(path)`` opens a SQLite file, ``ReportStore("postgresql+psycopg://...")`` a server,
    ``ReportStore()`` the configured one (`Settings.database_url`, else `Settings.reports_db`).
    """

    def __init__(self, location: str | Path | None = None, settings: Settings | None = None):
        self.settings = settings or get_settings()
        if location is None:
            url = default_url(self.settings)
        elif isinstance(location, Path) or "://" not in str(location):
            url = sqlite_url(location)
        else:
            url = str(location)
        try:
            self.db = Database(url)
        except DatabaseError as exc:
            raise ReportError(str(exc)) from exc
        self.path = self.db.path
        self.users = Users(self.db)
        self.audit = AuditLog(self.db)
        self.expire_conversations()  # the retention period holds even where nobody runs `scanchat expire`

    # --- reports: writing ---------------------------------------------------------------------------

    @_guarded
    def create(self, content: ReportContent, owner: User, patient_id: str | None = None) -> ReportVersion:
        """A new report owned by `owner` whose first version is `content`."""
        report_id = uuid.uuid4().hex[:12]
        version = ReportVersion(report_id=report_id, number=1, author=owner.name, created=_now(), change_note="draft",
                                content=content, owner=owner.name)
        with self.db.transaction() as db:
            db.execute(reports.insert().values(id=report_id, scan_id=content.scan.scan_id, created=version.created.isoformat(),
                                               owner=owner.name, patient_key=self.patient_key(patient_id)))
            self._insert(db, version)
            self.audit.append(db, owner.name, "draft", content.scan.scan_id, report=report_id)
        return version

    @_guarded
    def save(self, report_id: str, content: ReportContent, user: User, change_note: str = "",
             based_on: int | None = None, action: str = "edit") -> ReportVersion:
        """Store an edit as the next version.

        `based_on` is the version the editor started from; if someone saved a newer one since,
        the save is refused so that neither edit is lost.
        """
        with self.db.transaction() as db:
            owner = self._visible(db, report_id, user)
            latest = self._latest(db, report_id, owner, writing=True)
            if based_on is not None and based_on != latest.number:
                raise ReportError(f"Version {latest.number} was saved by {latest.author} after the version {based_on} "
                                  "you edited; reload the report and apply your changes again.")
            if content.scan.scan_id != latest.content.scan.scan_id:
                raise ReportError("These findings come from a different scan than the report; draft a new report.")
            changed = content.text.changed_sections(latest.content.text)
            if content.translations != latest.content.translations:
                changed.append("translations")
            version = ReportVersion(report_id=report_id, number=latest.number + 1, author=user.name, created=_now(),
                                    change_note=change_note or _describe(changed, latest), changed_sections=changed,
                                    content=content, owner=owner)
            self._insert(db, version)
            self.audit.append(db, user.name, action, content.scan.scan_id, report=report_id, version=version.number,
                              sections=changed)
        return version

    @_guarded
    def sign(self, report_id: str, signer: User) -> ReportVersion:
        """Sign the latest version as the logged-in `signer` (a reviewer); from now on it is final."""
        if not signer.may_sign:
            raise ReportError(f"{signer.name} is a {signer.role.value}; only a reviewer may sign a report.")
        with self.db.transaction() as db:
            owner = self._visible(db, report_id, signer)
            latest = self._latest(db, report_id, owner, writing=True)
            if latest.signed:
                raise ReportError(f"Version {latest.number} is already signed by {latest.signed_by}.")
            signed_at = _now()
            db.execute(versions.update().where(versions.c.report_id == report_id, versions.c.number == latest.number)
                       .values(signed_by=signer.name, signed_role=signer.role.value, signed_at=signed_at.isoformat()))
            for finding in latest.content.findings:
                if finding.concept_id:
                    db.execute(wordings.delete().where(wordings.c.concept_id == finding.concept_id))
                    db.execute(wordings.insert().values(concept_id=finding.concept_id, wording=finding.what,
                                                        report_id=report_id))
            self.audit.append(db, signer.name, "sign", latest.content.scan.scan_id, report=report_id,
                              version=latest.number, role=signer.role.value)
        return latest.model_copy(update={"signed_by": signer.name, "signed_at": signed_at,
                                         "signer_role": signer.role.value})

    @_guarded
    def keep_unsaved(self, report_id: str, based_on: int, user: User, text: ReportText) -> None:
        """Keep the editor's text as it is typed, so a closed browser loses nothing; a saved version clears it."""
        with self.db.transaction() as db:
            self._visible(db, report_id, user)
            db.execute(unsaved_edits.delete().where(unsaved_edits.c.report_id == report_id))
            db.execute(unsaved_edits.insert().values(report_id=report_id, based_on=based_on, author=user.name,
                                                     updated=_now().isoformat(), text=text.model_dump_json()))

    def record_export(self, version: ReportVersion, user: User, formats: list[str]) -> None:
        self.audit.record(user.name, "export", version.content.scan.scan_id, report=version.report_id,
                          version=version.number, formats=formats)

    @staticmethod
    def _insert(db: sa.Connection, version: ReportVersion) -> None:
        db.execute(unsaved_edits.delete().where(unsaved_edits.c.report_id == version.report_id))
        db.execute(versions.insert().values(
            report_id=version.report_id, number=version.number, author=version.author,
            created=version.created.isoformat(), change_note=version.change_note,
            changed_sections=",".join(version.changed_sections), content=version.content.model_dump_json()))

    # --- reports: reading ---------------------------------------------------------------------------

    @_guarded
    def latest(self, report_id: str, user: User) -> ReportVersion:
        with self.db.reading() as db:
            return self._latest(db, report_id, self._visible(db, report_id, user))

    @_guarded
    def version(self, report_id: str, number: int, user: User) -> ReportVersion:
        with self.db.reading() as db:
            owner = self._visible(db, report_id, user)
            row = db.execute(self._versions_query(report_id).where(versions.c.number == number)).mappings().first()
            if row is None:
                raise ReportError(f"Report {report_id} has no version {number}.")
            return self._version(row, owner)

    @_guarded
    def versions(self, report_id: str, user: User) -> list[ReportVersion]:
        """Every readable version, oldest first (an unreadable one is quarantined and left out, with a warning)."""
        with self.db.reading() as db:
            owner = self._visible(db, report_id, user)
            rows = db.execute(self._versions_query(report_id).order_by(versions.c.number)).mappings().all()
            found = []
            for row in rows:
                try:
                    found.append(self._version(row, owner))
                except ReportError:  # already logged and copied to quarantine
                    continue
        if not found:
            raise ReportError(f"Report {report_id!r} has no readable version.")
        return found

    @_guarded
    def unsaved(self, report_id: str, user: User) -> UnsavedEdit | None:
        """Text typed since the last saved version, if any (and if it can still be read)."""
        with self.db.reading() as db:
            self._visible(db, report_id, user)
            row = db.execute(sa.select(unsaved_edits).where(unsaved_edits.c.report_id == report_id)).mappings().first()
        if row is None:
            return None
        try:
            return UnsavedEdit(based_on=row["based_on"], author=row["author"],
                               updated=datetime.fromisoformat(row["updated"]),
                               text=ReportText.model_validate_json(row["text"]))
        except (ValidationError, ValueError) as exc:
            self._quarantine("unsaved_edits", report_id, exc, row["text"], delete=unsaved_edits.c.report_id == report_id)
            return None

    @_guarded
    def reports_for_scan(self, scan_id: str, user: User) -> list[str]:
        """Ids of this scan's reports the user may open, oldest first: their own, or all of them for a reviewer."""
        query = sa.select(reports.c.id).where(reports.c.scan_id == scan_id).order_by(reports.c.created)
        if not user.reads_all_reports:
            query = query.where(reports.c.owner == user.name)
        with self.db.reading() as db:
            return list(db.execute(query).scalars())

    @_guarded
    def wordings(self) -> dict[str, str]:
        """concept id -> the wording signed reports used for it."""
        with self.db.reading() as db:
            return dict(db.execute(sa.select(wordings.c.concept_id, wordings.c.wording)).tuples().all())

    def _visible(self, db: sa.Connection, report_id: str, user: User) -> str:
        """The report's owner, if `user` may open it; the same message whether it is missing or someone else's."""
        owner = db.execute(sa.select(reports.c.owner).where(reports.c.id == report_id)).scalar()
        if owner is None or (owner != user.name and not user.reads_all_reports):
            raise ReportError(f"There is no report {report_id!r} that {user.name} may open.")
        return owner

    @staticmethod
    def _versions_query(report_id: str) -> sa.Select:
        return (sa.select(versions, report_erasures.c.erased_at)
                .join(report_erasures, report_erasures.c.report_id == versions.c.report_id, isouter=True)
                .where(versions.c.report_id == report_id))

    def _latest(self, db: sa.Connection, report_id: str, owner: str, writing: bool = False) -> ReportVersion:
        row = db.execute(self._versions_query(report_id).order_by(versions.c.number.desc()).limit(1)).mappings().first()
        if row is None:
            raise ReportError(f"There is no report {report_id!r} in {self.db.where}.")
        return self._version(row, owner, quarantine_copy=not writing)

    def _version(self, row, owner: str, quarantine_copy: bool = True) -> ReportVersion:
        try:
            return ReportVersion(
                report_id=row["report_id"], number=row["number"], author=row["author"],
                created=datetime.fromisoformat(row["created"]), change_note=row["change_note"],
                changed_sections=[c for c in row["changed_sections"].split(",") if c],
                content=ReportContent.model_validate_json(row["content"]), signed_by=row["signed_by"],
                signed_at=datetime.fromisoformat(row["signed_at"]) if row["signed_at"] else None,
                signer_role=row["signed_role"], owner=owner,
                erased_at=datetime.fromisoformat(row["erased_at"]) if row["erased_at"] else None)
        except (ValidationError, ValueError) as exc:  # versions are never deleted: the row is copied, not moved
            if quarantine_copy:
                self._quarantine("versions", f"{row['report_id']}/{row['number']}", exc, row["content"])
            raise ReportError(f"Version {row['number']} of report {row['report_id']} cannot be read ({_first_line(exc)}); "
                              "a copy was put in quarantine for an administrator.") from exc

    # --- conversations ------------------------------------------------------------------------------

    @_guarded
    def save_conversation(self, conversation: SavedConversation, patient_id: str | None = None) -> None:
        """Replace the stored state of this conversation, in one transaction; another user's is refused."""
        row = {"scan_id": conversation.scan.scan_id, "updated": conversation.updated.isoformat(),
               "content": conversation.model_dump_json(), "patient_key": self.patient_key(patient_id)}
        with self.db.transaction() as db:
            owner = db.execute(sa.select(conversations.c.owner)
                               .where(conversations.c.id == conversation.conversation_id)).scalar()
            if owner is None:
                db.execute(conversations.insert().values(id=conversation.conversation_id, owner=conversation.owner, **row))
            elif owner == conversation.owner:
                db.execute(conversations.update().where(conversations.c.id == conversation.conversation_id).values(**row))
            else:
                raise ReportError(f"The conversation {conversation.conversation_id} belongs to another user; "
                                  "start a new one.")

    @_guarded
    def conversation(self, conversation_id: str, user: User) -> SavedConversation:
        with self.db.reading() as db:
            row = db.execute(sa.select(conversations).where(conversations.c.id == conversation_id,
                                                            conversations.c.owner == user.name)).mappings().first()
        saved = self._conversation(row) if row else None
        if saved is None:
            raise ReportError(f"There is no conversation {conversation_id!r} of {user.name} in {self.db.where}.")
        return saved

    @_guarded
    def latest_conversation(self, user: User, scan_id: str, warn: Warn | None = None) -> SavedConversation | None:
        """The user's most recently saved conversation about this scan, if any. An unreadable one is moved to
        quarantine (`warn` is told) and the one before it is restored instead."""
        query = (sa.select(conversations).where(conversations.c.owner == user.name, conversations.c.scan_id == scan_id)
                 .order_by(conversations.c.updated.desc()))
        with self.db.reading() as db:
            rows = db.execute(query).mappings().all()
        for row in rows:
            saved = self._conversation(row, warn)
            if saved is not None:
                return saved
        return None

    def _conversation(self, row, warn: Warn | None = None) -> SavedConversation | None:
        try:
            return SavedConversation.model_validate_json(row["content"]).model_copy(update={"owner": row["owner"]})
        except (ValidationError, ValueError) as exc:
            self._quarantine("conversations", row["id"], exc, row["content"], delete=conversations.c.id == row["id"])
            if warn:
                warn(f"A saved conversation about this scan could not be read and was set aside ({_first_line(exc)}).")
            return None

    # --- lifecycle -------------------------------------------------------------------------------------

    def patient_key(self, patient_id: str | None) -> str | None:
        """A keyed hash of the patient id (HMAC-SHA256, key in cache_dir, not in the database): erasure can find a
        patient's records, the database never holds the identifier."""
        if not patient_id or not patient_id.strip():
            return None
        return hmac.new(_patient_secret(self.settings), patient_id.strip().encode(), hashlib.sha256).hexdigest()

    @_guarded
    def expire_conversations(self, now: datetime | None = None) -> int:
        """Delete conversations not updated within `Settings.conversation_retention_days`; how many went."""
        days = self.settings.conversation_retention_days
        if days is None:
            return 0
        cutoff = ((now or _now()) - timedelta(days=days)).isoformat()
        with self.db.transaction() as db:
            gone = db.execute(conversations.delete().where(conversations.c.updated < cutoff)).rowcount
            if gone:
                self.audit.append(db, "system", "expire", None, conversations=gone, retention_days=days)
        return gone

    @_guarded
    def erase(self, by: str, *, patient_id: str | None = None, scan_id: str | None = None) -> Erasure:
        """Erase one patient's (or one scan's) records: conversations, drafts and unsigned versions go, the questions
        asked about those scans are blanked in the audit trail; signed versions stay as medical records, marked."""
        if not (patient_id or scan_id):
            raise ReportError("Say whose records to erase: a patient id or a scan fingerprint.")
        key = self.patient_key(patient_id)

        def matching(table: sa.Table) -> sa.ColumnElement[bool]:
            clauses = ([table.c.patient_key == key] if key else []) + ([table.c.scan_id == scan_id] if scan_id else [])
            return sa.or_(*clauses)

        with self.db.transaction() as db:
            found = db.execute(sa.select(conversations.c.scan_id).where(matching(conversations))).scalars().all()
            report_rows = db.execute(sa.select(reports.c.id, reports.c.scan_id).where(matching(reports))).all()
            scans = {*found, *(s for _, s in report_rows), *([scan_id] if scan_id else [])}
            db.execute(conversations.delete().where(matching(conversations)))
            deleted_versions = deleted_reports = marked = 0
            for report_id, _ in report_rows:
                db.execute(unsaved_edits.delete().where(unsaved_edits.c.report_id == report_id))
                deleted_versions += db.execute(versions.delete().where(versions.c.report_id == report_id,
                                                                       versions.c.signed_at.is_(None))).rowcount
                if db.execute(sa.select(versions.c.number).where(versions.c.report_id == report_id).limit(1)).first():
                    marked += 1
                    if not db.execute(sa.select(report_erasures.c.report_id)
                                      .where(report_erasures.c.report_id == report_id)).first():
                        db.execute(report_erasures.insert().values(report_id=report_id, erased_at=_now().isoformat(),
                                                                   erased_by=by, reason="erasure request"))
                else:
                    db.execute(wordings.delete().where(wordings.c.report_id == report_id))
                    db.execute(reports.delete().where(reports.c.id == report_id))
                    deleted_reports += 1
            redacted = db.execute(sa.select(audit_table.c.seq).where(audit_table.c.scan_id.in_(scans),
                                                                     audit_table.c.action != "erase")).scalars().all()
            self.audit.redact(db, list(redacted))
            summary = Erasure(conversations=len(found), reports_deleted=deleted_reports, reports_marked=marked,
                              versions_deleted=deleted_versions, audit_entries_redacted=len(redacted))
            self.audit.append(db, by, "erase", None, scans=sorted(scans), redacted=list(redacted),
                              **summary.model_dump(exclude={"audit_entries_redacted"}))
        return summary

    def _quarantine(self, source: str, key: str, exc: Exception, content: str, delete=None) -> None:
        """Set an unreadable row aside (copied; moved when `delete` says which row) and say so in the log."""
        log.warning("unreadable %s row %s put in quarantine: %s", source, key, _first_line(exc))
        try:
            with self.db.transaction() as db:
                if db.execute(sa.select(quarantine.c.id).where(quarantine.c.source == source, quarantine.c.row_key == key,
                                                               quarantine.c.content == content)).first():
                    return  # a copy of this very row is there already
                db.execute(quarantine.insert().values(source=source, row_key=key, reason=_first_line(exc),
                                                      content=content, at=_now().isoformat()))
                if delete is not None:
                    table = {"conversations": conversations, "unsaved_edits": unsaved_edits}[source]
                    db.execute(table.delete().where(delete))
        except SQLAlchemyError:
            log.warning("could not quarantine %s row %s", source, key, exc_info=True)

    @_guarded
    def quarantined(self) -> list[dict]:
        """The rows set aside, newest first, for an administrator to inspect."""
        with self.db.reading() as db:
            return [dict(r) for r in db.execute(sa.select(quarantine).order_by(quarantine.c.id.desc())).mappings()]


def _patient_secret(settings: Settings) -> bytes:
    """The deployment's patient-key secret (created once, 0600, beside the models, not in the database)."""
    path = settings.cache_dir / "patient-key.secret"
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        draft.touch(mode=0o600)
        draft.write_text(os.urandom(32).hex())
        try:
            os.link(draft, path)  # atomic: of two processes starting at once, one key wins, both read it
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_bytes().strip()


def _reason(exc: BaseException) -> str:
    return _first_line(getattr(exc, "orig", None) or exc)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _describe(changed: list[str], previous: ReportVersion) -> str:
    if not changed:
        return "saved without changes"
    after = " after sign-off" if previous.signed else ""
    return f"edited {', '.join(changed)}{after}"
