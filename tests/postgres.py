"""A real PostgreSQL server for the store's tests: Debian's `postgresql` binaries, a fresh cluster in a temporary
folder on a free loopback port, started once per test session and stopped at its end (no system service)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """The server's base URL (no database name); skipped, with the reason, only where PostgreSQL is not installed."""
    pg_bin = _pg_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL is not installed (Debian package `postgresql`, installed by scripts/setup)")
    folder = Path(tempfile.mkdtemp(prefix="scanchat-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # it refuses to run as root
    if as_postgres:
        shutil.chown(folder, "postgres")
    port = _free_port()
    data = folder / "data"

    def run(*args: str) -> None:
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, timeout=120)

    run(str(pg_bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "scanchat")
    run(str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w",
        "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        yield f"postgresql+psycopg://scanchat@127.0.0.1:{port}"
    finally:
        run(str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(server: str) -> str:
    """A new empty database on the server, so each test starts from nothing, as with a new SQLite file."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as db:
        db.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{server}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Each store test runs twice: on a SQLite file and on a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "scanchat.sqlite3")
    return fresh_database(request.getfixturevalue("postgres_server"))
