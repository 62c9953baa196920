"""The audit trail on both databases: a hash chain that `verify` checks end to end, so an entry edited,
deleted or blanked by someone with direct database access is found, and `scanchat audit` shows and checks it."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from assistant.reports.store import ReportStore
from tests.postgres import database_url, postgres_server  # noqa: F401  (fixtures)

SCAN = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def store(database_url) -> ReportStore:  # noqa: F811
    store = ReportStore(database_url)
    store.audit.record("alice", "load_scan", SCAN, source_format="NIfTI")
    store.audit.record("alice", "ask", SCAN, question="How thick are the slices?", tools=["describe_scan"])
    store.audit.record("bob", "load_scan", SCAN, source_format="NIfTI")
    store.audit.record("alice", "export", SCAN, report="r1", formats=["pdf"])
    return store


def _drop_guards(store: ReportStore) -> None:
    """What someone with direct database access can do: remove the append-only triggers first."""
    with store.db.transaction() as db:
        if store.db.is_sqlite:
            db.execute(sa.text("DROP TRIGGER audit_is_append_only"))
            db.execute(sa.text("DROP TRIGGER audit_is_kept"))
        else:
            db.execute(sa.text("DROP TRIGGER audit_is_append_only ON audit"))


def test_an_intact_chain_verifies_and_entries_filter_by_user_and_date(store):
    check = store.audit.verify()
    assert check.ok and check.entries == 4 and len(check.head) == 64
    assert [e.action for e in store.audit.entries(user="alice")] == ["load_scan", "ask", "export"]
    assert store.audit.entries(user="alice", since=datetime.now(timezone.utc) + timedelta(minutes=1)) == []
    assert len(store.audit.entries(since=datetime.now(timezone.utc) - timedelta(minutes=5))) == 4
    assert store.audit.entries(action="ask")[0].detail["question"] == "How thick are the slices?"


def test_the_database_refuses_edits_and_deletes(store):
    for statement in ("UPDATE audit SET user_name = 'mallory' WHERE seq = 2", "DELETE FROM audit WHERE seq = 2"):
        with pytest.raises(sa.exc.DatabaseError, match="append-only"), store.db.transaction() as db:
            db.execute(sa.text(statement))
    assert store.audit.verify().ok


def test_an_edited_entry_is_detected(store):
    _drop_guards(store)
    with store.db.transaction() as db:
        db.execute(sa.text("""UPDATE audit SET detail = '{"question":"something else"}' WHERE seq = 2"""))
    assert store.audit.verify().problems == ["entry 2: its detail was edited"]


def test_an_entry_edited_with_a_recomputed_digest_is_detected(store):
    import hashlib

    _drop_guards(store)
    detail = '{"question":"nothing"}'
    with store.db.transaction() as db:
        db.execute(sa.text("UPDATE audit SET detail = :d, detail_digest = :h, user_name = 'mallory' WHERE seq = 2"),
                   {"d": detail, "h": hashlib.sha256(detail.encode()).hexdigest()})
    assert store.audit.verify().problems == ["entry 2: its fields were edited (hash mismatch)"]


def test_a_deleted_entry_is_detected(store):
    _drop_guards(store)
    with store.db.transaction() as db:
        db.execute(sa.text("DELETE FROM audit WHERE seq = 3"))
    problems = store.audit.verify().problems
    assert "entries 3-3 are missing (deleted)" in problems
    assert any(p.startswith("entry 4 does not follow") for p in problems)


def test_a_detail_blanked_outside_an_erasure_is_detected(store):
    from assistant.audit import REDACTED

    with store.db.transaction() as db:  # the trigger allows blanking (erasure does it), the chain still tells
        db.execute(sa.text("UPDATE audit SET detail = :d WHERE seq = 2"), {"d": REDACTED})
    assert store.audit.verify().problems == ["entry 2: its detail was blanked outside an erasure"]


def test_entries_cut_off_the_end_are_detected_against_a_kept_head(store):
    head = store.audit.verify().head
    _drop_guards(store)
    with store.db.transaction() as db:
        db.execute(sa.text("DELETE FROM audit WHERE seq = 4"))
    assert store.audit.verify().ok  # the chain alone cannot see a cut at its end...
    assert "cut off the end" in store.audit.verify(expect_head=head).problems[0]  # ...the kept head can


def test_audit_commands(tmp_path):
    path = tmp_path / "audit.sqlite3"
    store = ReportStore(path)
    store.audit.record("alice", "ask", SCAN, question="q1")
    store.audit.record("bob", "ask", SCAN, question="q2")
    env = {**os.environ, "SCANCHAT_REPORTS_DB": str(path), "SCANCHAT_DATABASE_URL": ""}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "assistant.cli", "audit", *args], capture_output=True, text=True,
                              env=env, timeout=300)

    shown = cli("show", "--user", "bob", "--since", datetime.now(timezone.utc).strftime("%Y-%m-%d"))
    assert shown.returncode == 0 and "bob" in shown.stdout and "alice" not in shown.stdout and '"q2"' in shown.stdout
    verified = cli("verify")
    assert verified.returncode == 0 and "2 entries" in verified.stdout and "intact" in verified.stdout
    _drop_guards(store)
    with store.db.transaction() as db:
        db.execute(sa.text("""UPDATE audit SET detail = '{"question":"edited"}' WHERE seq = 1"""))
    broken = cli("verify")
    assert broken.returncode == 1 and "TAMPERED: entry 1: its detail was edited" in broken.stdout


def test_concurrent_writers_make_one_unbroken_chain(store):
    """Eight threads (as eight users' chat turns) appending at once: no fork, no lost entry."""
    from concurrent.futures import ThreadPoolExecutor

    def turn(i: int) -> None:
        for j in range(5):
            store.audit.record(f"user{i}", "ask", SCAN, question=f"question {j}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(turn, range(8)))
    check = store.audit.verify()
    assert check.ok, check.problems
    assert check.entries == 4 + 8 * 5
