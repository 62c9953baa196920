"""Report versions and conversations in SQLite: every save is a new version, signed versions never change.

Each save runs in one transaction (a crash mid-save leaves the previous versions as they were);
a trigger makes signed versions read-only inside the database itself, and a save based on an
older version than the latest is refused instead of silently overwriting another tab's edit.
The wording a signed report used for each concept is remembered, so later reports reuse it.
Conversations (chat and findings, see `assistant.reports.conversations`) live in the same file.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from assistant.config import Settings, get_settings
from assistant.reports.conversations import SavedConversation
from assistant.reports.model import ReportContent, ReportError, ReportText, ReportVersion, UnsavedEdit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    id TEXT PRIMARY KEY,
    scan_id TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    report_id TEXT NOT NULL REFERENCES reports(id),
    number INTEGER NOT NULL,
    author TEXT NOT NULL,
    created TEXT NOT NULL,
    change_note TEXT NOT NULL,
    changed_sections TEXT NOT NULL,
    content TEXT NOT NULL,
    signed_by TEXT,
    signed_at TEXT,
    PRIMARY KEY (report_id, number)
);
CREATE TABLE IF NOT EXISTS wordings (
    concept_id TEXT PRIMARY KEY,
    wording TEXT NOT NULL,
    report_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    scan_id TEXT NOT NULL,
    updated TEXT NOT NULL,
    content TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS unsaved_edits (
    report_id TEXT PRIMARY KEY REFERENCES reports(id),
    based_on INTEGER NOT NULL,
    author TEXT NOT NULL,
    updated TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_by_scan ON reports(scan_id);
CREATE INDEX IF NOT EXISTS conversations_by_scan ON conversations(scan_id, updated);
CREATE TRIGGER IF NOT EXISTS signed_versions_are_final
BEFORE UPDATE ON versions WHEN OLD.signed_at IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'signed versions are final'); END;
CREATE TRIGGER IF NOT EXISTS versions_are_kept
BEFORE DELETE ON versions
BEGIN SELECT RAISE(ABORT, 'report versions are never deleted'); END;
"""


def default_db_path(settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    return settings.reports_db or settings.cache_dir / "reports.sqlite3"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class ReportStore:
    """One SQLite file of reports; safe to open from several processes (WAL journal, short transactions)."""

    def __init__(self, path: str | Path | None = None, settings: Settings | None = None):
        self.path = Path(path) if path else default_db_path(settings)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as db:
                db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ReportError(f"The report database {self.path} cannot be opened ({exc}); "
                              "move it aside and ScanChat will start a new one.") from exc

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error: all of a save or none of it."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- writing ------------------------------------------------------------------------------

    def create(self, content: ReportContent, author: str) -> ReportVersion:
        """A new report whose first version is `content`."""
        report_id = uuid.uuid4().hex[:12]
        version = ReportVersion(report_id=report_id, number=1, author=_author(author), created=_now(),
                                change_note="draft", content=content)
        with self._transaction() as db:
            db.execute("INSERT INTO reports (id, scan_id, created) VALUES (?, ?, ?)",
                       (report_id, content.scan.scan_id, version.created.isoformat()))
            self._insert(db, version)
        return version

    def save(self, report_id: str, content: ReportContent, author: str, change_note: str = "",
             based_on: int | None = None) -> ReportVersion:
        """Store an edit as the next version.

        `based_on` is the version the editor started from; if someone saved a newer one since,
        the save is refused so that neither edit is lost.
        """
        with self._transaction() as db:
            latest = self._latest(db, report_id)
            if based_on is not None and based_on != latest.number:
                raise ReportError(f"Version {latest.number} was saved by {latest.author} after the version {based_on} "
                                  "you edited; reload the report and apply your changes again.")
            if content.scan.scan_id != latest.content.scan.scan_id:
                raise ReportError("These findings come from a different scan than the report; draft a new report.")
            changed = content.text.changed_sections(latest.content.text)
            if content.translations != latest.content.translations:
                changed.append("translations")
            version = ReportVersion(report_id=report_id, number=latest.number + 1, author=_author(author),
                                    created=_now(), change_note=change_note or _describe(changed, latest),
                                    changed_sections=changed, content=content)
            self._insert(db, version)
        return version

    def sign(self, report_id: str, signer: str) -> ReportVersion:
        """Sign the latest version; from now on it is final and edits create a new version."""
        with self._transaction() as db:
            latest = self._latest(db, report_id)
            if latest.signed:
                raise ReportError(f"Version {latest.number} is already signed by {latest.signed_by}.")
            signed_at = _now()
            db.execute("UPDATE versions SET signed_by = ?, signed_at = ? WHERE report_id = ? AND number = ?",
                       (_author(signer), signed_at.isoformat(), report_id, latest.number))
            for finding in latest.content.findings:
                if finding.concept_id:
                    db.execute("INSERT OR REPLACE INTO wordings (concept_id, wording, report_id) VALUES (?, ?, ?)",
                               (finding.concept_id, finding.what, report_id))
        return latest.model_copy(update={"signed_by": _author(signer), "signed_at": signed_at})

    def keep_unsaved(self, report_id: str, based_on: int, author: str, text: ReportText) -> None:
        """Keep the editor's text as it is typed, so a closed browser loses nothing; a saved version clears it."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO unsaved_edits (report_id, based_on, author, updated, text) VALUES (?, ?, ?, ?, ?)",
                       (report_id, based_on, _author(author), _now().isoformat(), text.model_dump_json()))

    def save_conversation(self, conversation: SavedConversation) -> None:
        """Replace the stored state of this conversation with `conversation`, in one transaction."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO conversations (id, scan_id, updated, content) VALUES (?, ?, ?, ?)",
                       (conversation.conversation_id, conversation.scan.scan_id, conversation.updated.isoformat(),
                        conversation.model_dump_json()))

    @staticmethod
    def _insert(db: sqlite3.Connection, version: ReportVersion) -> None:
        db.execute("DELETE FROM unsaved_edits WHERE report_id = ?", (version.report_id,))
        db.execute(
            "INSERT INTO versions (report_id, number, author, created, change_note, changed_sections, content) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (version.report_id, version.number, version.author, version.created.isoformat(), version.change_note,
             ",".join(version.changed_sections), version.content.model_dump_json()),
        )

    # --- reading ------------------------------------------------------------------------------

    def latest(self, report_id: str) -> ReportVersion:
        with self._connect() as db:
            return self._latest(db, report_id)

    def version(self, report_id: str, number: int) -> ReportVersion:
        with self._connect() as db:
            row = db.execute("SELECT * FROM versions WHERE report_id = ? AND number = ?", (report_id, number)).fetchone()
        if row is None:
            raise ReportError(f"Report {report_id} has no version {number}.")
        return _version(row)

    def versions(self, report_id: str) -> list[ReportVersion]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM versions WHERE report_id = ? ORDER BY number", (report_id,)).fetchall()
        if not rows:
            raise ReportError(f"There is no report {report_id!r} in {self.path}.")
        return [_version(row) for row in rows]

    def unsaved(self, report_id: str) -> UnsavedEdit | None:
        """Text typed since the last saved version, if any."""
        with self._connect() as db:
            row = db.execute("SELECT based_on, author, updated, text FROM unsaved_edits WHERE report_id = ?",
                             (report_id,)).fetchone()
        if row is None:
            return None
        return UnsavedEdit(based_on=row[0], author=row[1], updated=datetime.fromisoformat(row[2]),
                           text=ReportText.model_validate_json(row[3]))

    def reports_for_scan(self, scan_id: str) -> list[str]:
        with self._connect() as db:
            rows = db.execute("SELECT id FROM reports WHERE scan_id = ? ORDER BY created", (scan_id,)).fetchall()
        return [row[0] for row in rows]

    def conversation(self, conversation_id: str) -> SavedConversation:
        with self._connect() as db:
            row = db.execute("SELECT content FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise ReportError(f"There is no conversation {conversation_id!r} in {self.path}.")
        return SavedConversation.model_validate_json(row[0])

    def latest_conversation(self, scan_id: str) -> SavedConversation | None:
        """The most recently saved conversation about this scan, if any."""
        with self._connect() as db:
            row = db.execute("SELECT content FROM conversations WHERE scan_id = ? ORDER BY updated DESC LIMIT 1",
                             (scan_id,)).fetchone()
        return SavedConversation.model_validate_json(row[0]) if row else None

    def wordings(self) -> dict[str, str]:
        """concept id -> the wording signed reports used for it."""
        with self._connect() as db:
            return dict(db.execute("SELECT concept_id, wording FROM wordings").fetchall())

    def _latest(self, db: sqlite3.Connection, report_id: str) -> ReportVersion:
        row = db.execute("SELECT * FROM versions WHERE report_id = ? ORDER BY number DESC LIMIT 1",
                         (report_id,)).fetchone()
        if row is None:
            raise ReportError(f"There is no report {report_id!r} in {self.path}.")
        return _version(row)


def _version(row: tuple) -> ReportVersion:
    report_id, number, author, created, note, changed, content, signed_by, signed_at = row
    return ReportVersion(report_id=report_id, number=number, author=author, created=datetime.fromisoformat(created),
                         change_note=note, changed_sections=[c for c in changed.split(",") if c],
                         content=ReportContent.model_validate_json(content), signed_by=signed_by,
                         signed_at=datetime.fromisoformat(signed_at) if signed_at else None)


def _author(name: str) -> str:
    name = " ".join((name or "").split())
    if not name:
        raise ReportError("Say who is saving or signing the report (an author name is required).")
    return name[:120]


def _describe(changed: list[str], previous: ReportVersion) -> str:
    if not changed:
        return "saved without changes"
    after = " after sign-off" if previous.signed else ""
    return f"edited {', '.join(changed)}{after}"
