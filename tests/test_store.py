"""The store on both databases (a SQLite file and a real PostgreSQL server): migrations, ownership of
conversations and reports, sign-off by reviewers only, erasure and retention, and bad rows or an
unavailable database that give a clear message instead of a traceback."""

from __future__ import annotations

import os
import sqlite3
import stat
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from assistant.auth import LOCAL_USER, Role, User
from assistant.config import get_settings
from assistant.models.base import Message
from assistant.reports.collect import scan_fingerprint
from assistant.reports.conversations import conversation_of, restore_session
from assistant.reports.draft import draft_report
from assistant.reports.model import ReportError
from assistant.reports.store import ReportStore
from assistant.scans.samples import load_sample
from assistant.session import ScanSession, ToolRecord
from tests.postgres import database_url, postgres_server  # noqa: F401  (fixtures)
from tools.describe_scan import describe_scan
from tools.measure_distance import MeasureDistanceArgs, measure_distance

ALICE = User(name="alice", role=Role.clinician)
BOB = User(name="bob", role=Role.clinician)
REVIEWER = User(name="rita", role=Role.reviewer)


@pytest.fixture(scope="module")
def session() -> ScanSession:
    """A real CT slice with a patient id in its header and two real tool results."""
    session = ScanSession()
    session.load(load_sample("ct-small-dicom"))
    args = MeasureDistanceArgs(point_a=[10, 10, 0], point_b=[100, 60, 0])
    session.records += [ToolRecord("describe_scan", {}, describe_scan(session.volume)),
                        ToolRecord("measure_distance", args.model_dump(), measure_distance(session.volume, args))]
    return session


@pytest.fixture
def store(database_url, tmp_path) -> ReportStore:  # noqa: F811
    settings = get_settings().model_copy(update={"cache_dir": tmp_path / "cache"})  # its own patient-key secret
    return ReportStore(database_url, settings=settings)


def _chat(question: str) -> list[Message]:
    return [Message(role="user", content=question), Message(role="assistant", content=f"answer to {question}")]


def test_migrations_bring_a_new_database_to_the_latest_schema(store):
    with store.db.reading() as db:
        assert db.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0002"
        tables = set(sa.inspect(db).get_table_names())
    assert {"reports", "versions", "conversations", "users", "audit", "quarantine", "report_erasures"} <= tables
    ReportStore(store.db.url.render_as_string(hide_password=False), settings=store.settings)  # reopening is a no-op


def test_two_users_with_the_same_scan_see_only_their_own_conversations(store, session):
    scan = scan_fingerprint(session.volume)
    store.save_conversation(conversation_of(session, "alice-1", ALICE, _chat("alice asks")))
    assert store.latest_conversation(BOB, scan) is None  # the scan alone never finds alice's chat

    store.save_conversation(conversation_of(session, "bob-1", BOB, _chat("bob asks")))
    assert store.latest_conversation(ALICE, scan).messages[0].content == "alice asks"
    assert store.latest_conversation(BOB, scan).messages[0].content == "bob asks"
    with pytest.raises(ReportError, match="belongs to another user"):  # bob cannot write into alice's record
        store.save_conversation(conversation_of(session, "alice-1", BOB, _chat("overwrite")))
    with pytest.raises(ReportError, match="no conversation 'alice-1' of bob"):
        store.conversation("alice-1", BOB)
    restored = restore_session(store.conversation("alice-1", ALICE), session.volume)
    assert [r.name for r in restored.records] == ["describe_scan", "measure_distance"]


def test_reports_are_visible_to_their_owner_and_reviewers_and_only_a_reviewer_signs(store, session):
    version = store.create(draft_report(session), ALICE, patient_id=session.volume.identifiers.patient_id)
    scan = version.content.scan.scan_id
    assert store.reports_for_scan(scan, BOB) == []
    with pytest.raises(ReportError, match="no report .* that bob may open"):
        store.latest(version.report_id, BOB)
    with pytest.raises(ReportError, match="no report"):
        store.save(version.report_id, version.content, BOB)
    assert store.reports_for_scan(scan, REVIEWER) == [version.report_id]

    with pytest.raises(ReportError, match="alice is a clinician; only a reviewer may sign"):
        store.sign(version.report_id, ALICE)
    signed = store.sign(version.report_id, REVIEWER)
    assert (signed.signed_by, signed.signer_role) == ("rita", "reviewer")
    reread = store.latest(version.report_id, ALICE)
    assert (reread.signed_by, reread.signer_role, reread.owner) == ("rita", "reviewer", "alice")
    actions = [(e.user, e.action) for e in store.audit.entries()]
    assert actions == [("alice", "draft"), ("rita", "sign")]


def test_a_signed_version_cannot_be_changed_or_deleted_inside_the_database(store, session):
    version = store.create(draft_report(session), ALICE)
    store.sign(version.report_id, REVIEWER)
    for statement in ("UPDATE versions SET content = 'x' WHERE report_id = :id",
                      "DELETE FROM versions WHERE report_id = :id"):
        with pytest.raises(sa.exc.DatabaseError, match="signed"), store.db.transaction() as db:
            db.execute(sa.text(statement), {"id": version.report_id})
    assert store.latest(version.report_id, ALICE).content == version.content


def test_an_unreadable_conversation_is_quarantined_and_the_one_before_it_restored(store, session):
    scan = scan_fingerprint(session.volume)
    older = conversation_of(session, "c-old", ALICE, _chat("first visit"))
    older.updated -= timedelta(hours=1)
    store.save_conversation(older)
    store.save_conversation(conversation_of(session, "c-new", ALICE, _chat("second visit")))
    with store.db.transaction() as db:
        db.execute(sa.text("UPDATE conversations SET content = '{\"broken' WHERE id = 'c-new'"))

    warnings: list[str] = []
    restored = store.latest_conversation(ALICE, scan, warn=warnings.append)
    assert restored is not None and restored.conversation_id == "c-old"
    assert len(warnings) == 1 and "could not be read" in warnings[0]
    [kept] = store.quarantined()
    assert (kept["source"], kept["row_key"], kept["content"]) == ("conversations", "c-new", '{"broken')
    assert store.latest_conversation(ALICE, scan).conversation_id == "c-old"  # moved out: no second warning


def test_an_unreadable_report_version_gives_a_message_not_a_traceback(store, session):
    version = store.create(draft_report(session), ALICE)
    store.save(version.report_id, version.content.model_copy(
        update={"text": version.content.text.model_copy(update={"impression": "Edited."})}), ALICE)
    with store.db.transaction() as db:
        db.execute(sa.text("UPDATE versions SET content = 'not json' WHERE report_id = :id AND number = 2"),
                   {"id": version.report_id})
    with pytest.raises(ReportError, match="Version 2 of report .* cannot be read"):
        store.latest(version.report_id, ALICE)
    assert [v.number for v in store.versions(version.report_id, ALICE)] == [1]  # the readable versions still open
    assert [q["row_key"] for q in store.quarantined()] == [f"{version.report_id}/2"]  # one copy, however often read


def test_erasing_a_patient_keeps_signed_versions_marked_and_removes_the_rest(store, session):
    patient = session.volume.identifiers.patient_id
    scan = scan_fingerprint(session.volume)
    store.save_conversation(conversation_of(session, "c1", ALICE, _chat("what is the slice thickness?")),
                            patient_id=patient)
    store.audit.record("alice", "ask", scan, question="what is the slice thickness?")
    draft_only = store.create(draft_report(session), ALICE, patient_id=patient)
    signed = store.create(draft_report(session), ALICE, patient_id=patient)
    store.sign(signed.report_id, REVIEWER)
    store.save(signed.report_id, signed.content.model_copy(
        update={"text": signed.content.text.model_copy(update={"impression": "After sign-off."})}), REVIEWER)
    other = store.create(draft_report(session), BOB, patient_id="SOMEONE-ELSE")
    with store.db.reading() as db:
        keys = set(db.execute(sa.text("SELECT patient_key FROM reports")).scalars())
    assert patient not in keys and len(keys) == 2  # only keyed hashes are stored

    summary = store.erase("cli:admin", patient_id=patient)
    assert (summary.conversations, summary.reports_deleted, summary.reports_marked, summary.versions_deleted) == (1, 1, 1, 2)
    assert store.latest_conversation(ALICE, scan) is None
    with pytest.raises(ReportError, match="no report"):
        store.latest(draft_only.report_id, ALICE)
    [kept] = store.versions(signed.report_id, ALICE)
    assert kept.signed_by == "rita" and kept.erased_at is not None
    assert store.latest(other.report_id, BOB).erased_at is None
    asked = store.audit.entries(action="ask")
    assert [e.detail for e in asked] == [{"erased": True}]
    assert store.audit.verify().ok  # a recorded erasure does not break the chain


def test_conversations_past_the_retention_period_are_deleted(store, session):
    store.settings = store.settings.model_copy(update={"conversation_retention_days": 30})
    old = conversation_of(session, "old", ALICE, _chat("long ago"))
    old.updated = datetime.now(timezone.utc) - timedelta(days=40)
    store.save_conversation(old)
    store.save_conversation(conversation_of(session, "recent", ALICE, _chat("today")))
    assert store.expire_conversations() == 1
    assert store.latest_conversation(ALICE, scan_fingerprint(session.volume)).conversation_id == "recent"
    with pytest.raises(ReportError, match="no conversation 'old'"):
        store.conversation("old", ALICE)


def test_a_new_sqlite_database_is_private(tmp_path):
    store = ReportStore(tmp_path / "private" / "reports.sqlite3")
    store.save_conversation(conversation_of(_one_scan_session(), "c", LOCAL_USER, _chat("q")))
    assert stat.S_IMODE(os.stat(tmp_path / "private").st_mode) == 0o700
    for name in os.listdir(tmp_path / "private"):  # the database and its WAL/SHM files
        assert stat.S_IMODE(os.stat(tmp_path / "private" / name).st_mode) == 0o600, name


def test_a_database_from_before_migrations_is_adopted_with_its_records(tmp_path, session):
    """A file written by the sqlite3 store (no alembic_version table): upgraded in place, nothing lost,
    its records now belong to the implicit local user."""
    path = tmp_path / "old.sqlite3"
    saved = conversation_of(session, "legacy", LOCAL_USER, _chat("asked before the upgrade"))
    with sqlite3.connect(path) as db:
        db.executescript(LEGACY_SCHEMA)
        db.execute("INSERT INTO conversations (id, scan_id, updated, content) VALUES (?, ?, ?, ?)",
                   ("legacy", saved.scan.scan_id, saved.updated.isoformat(), saved.model_dump_json(exclude={"owner"})))
    store = ReportStore(path)
    restored = store.latest_conversation(LOCAL_USER, saved.scan.scan_id)
    assert restored is not None and restored.messages == saved.messages
    assert store.latest_conversation(ALICE, saved.scan.scan_id) is None


def test_a_locked_database_gives_a_clear_message(tmp_path, session):
    store = ReportStore(tmp_path / "locked.sqlite3")
    blocker = sqlite3.connect(tmp_path / "locked.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock for longer than the busy timeout
    try:
        with pytest.raises(ReportError, match="is not available right now .*database is locked"):
            store.save_conversation(conversation_of(session, "c", ALICE, _chat("q")))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    store.save_conversation(conversation_of(session, "c", ALICE, _chat("q")))  # usable again at once


def test_an_unreachable_server_gives_a_clear_message(postgres_server):  # noqa: F811
    port = int(postgres_server.rsplit(":", 1)[1])
    with pytest.raises(ReportError, match="cannot be opened .*check SCANCHAT_DATABASE_URL"):
        ReportStore(f"postgresql+psycopg://scanchat@127.0.0.1:{port + 1 if port < 65535 else port - 1}/postgres")


def _one_scan_session() -> ScanSession:
    session = ScanSession()
    session.load(load_sample("ct-small-dicom"))
    return session


LEGACY_SCHEMA = """
CREATE TABLE reports (id TEXT PRIMARY KEY, scan_id TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE versions (report_id TEXT NOT NULL REFERENCES reports(id), number INTEGER NOT NULL, author TEXT NOT NULL,
    created TEXT NOT NULL, change_note TEXT NOT NULL, changed_sections TEXT NOT NULL, content TEXT NOT NULL,
    signed_by TEXT, signed_at TEXT, PRIMARY KEY (report_id, number));
CREATE TABLE wordings (concept_id TEXT PRIMARY KEY, wording TEXT NOT NULL, report_id TEXT NOT NULL);
CREATE TABLE conversations (id TEXT PRIMARY KEY, scan_id TEXT NOT NULL, updated TEXT NOT NULL, content TEXT NOT NULL);
CREATE TABLE unsaved_edits (report_id TEXT PRIMARY KEY REFERENCES reports(id), based_on INTEGER NOT NULL,
    author TEXT NOT NULL, updated TEXT NOT NULL, text TEXT NOT NULL);
CREATE INDEX reports_by_scan ON reports(scan_id);
CREATE INDEX conversations_by_scan ON conversations(scan_id, updated);
CREATE TRIGGER signed_versions_are_final BEFORE UPDATE ON versions WHEN OLD.signed_at IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'signed versions are final'); END;
CREATE TRIGGER versions_are_kept BEFORE DELETE ON versions
BEGIN SELECT RAISE(ABORT, 'report versions are never deleted'); END;
"""


def test_stale_uploads_are_swept_and_nothing_outside_the_folder_is_touched(tmp_path):
    from assistant.lifecycle import private_dir, remove_session_files, sweep

    uploads = private_dir(tmp_path / "uploads")
    old, new = uploads / "old-session", uploads / "new-session"
    for folder in (old, new):
        folder.mkdir()
        (folder / "scan.nii.gz").write_bytes(b"voxels")
    os.utime(old, (1_000_000, 1_000_000))
    outside = tmp_path / "keep.txt"
    outside.write_text("not an upload")
    assert sweep(uploads, max_age_s=3600) == 1
    assert not old.exists() and new.exists()
    assert remove_session_files([outside, uploads / ".." / "keep.txt"], uploads) == 0 and outside.exists()
    assert remove_session_files([new], uploads) == 1 and not new.exists()
    assert stat.S_IMODE(os.stat(uploads).st_mode) == 0o700


def test_per_user_session_and_memory_limits():
    from assistant.lifecycle import LimitError, SessionLimits

    limits = SessionLimits(max_sessions=2, max_bytes=1000)
    limits.open("alice", "s1")
    limits.open("alice", "s2")
    limits.open("bob", "s3")  # bob's sessions do not count against alice
    with pytest.raises(LimitError, match="alice already has 2 sessions"):
        limits.open("alice", "s4")
    limits.charge("s1", 600)
    with pytest.raises(LimitError, match="more than the"):
        limits.charge("s2", 500)
    limits.charge("s3", 900)
    limits.close("s1")
    limits.charge("s2", 500)
    limits.open("alice", "s4")
    assert limits.held("alice") == (2, 500) and limits.held("bob") == (1, 900)
