"""The database behind reports, conversations, users and the audit trail: SQLAlchemy over SQLite or PostgreSQL.

SQLite (a file, nothing to start) is the default; `SCANCHAT_DATABASE_URL` selects PostgreSQL
(``postgresql+psycopg://user@host/db``). The schema is created and upgraded by the Alembic
migrations shipped in `assistant/db/migrations`, run every time a database is opened, so an
older file is brought up to date without a separate step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from assistant.config import Settings, get_settings

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


class DatabaseError(ValueError):
    """The database cannot be opened or used; the message says which one and what to do."""


def default_url(settings: Settings | None = None) -> str:
    """`Settings.database_url`, else the SQLite file `Settings.reports_db` (default cache_dir/reports.sqlite3)."""
    settings = settings or get_settings()
    if settings.database_url:
        return settings.database_url
    return sqlite_url(settings.reports_db or settings.cache_dir / "reports.sqlite3")


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).expanduser().absolute()}"


def _private_sqlite_file(path: Path) -> None:
    """The folder (if new) 0700 and the file 0600 before SQLite touches it; its WAL and SHM files inherit the mode."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)  # a file left readable by an older version


class Database:
    """One engine, migrated to the latest schema on open; `transaction()` is all-or-nothing."""

    def __init__(self, url: str):
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.path = Path(self.url.database) if self.is_sqlite and self.url.database else None
        self.where = str(self.path) if self.path else self.url.render_as_string(hide_password=True)
        try:
            if self.path:
                _private_sqlite_file(self.path)
            self.engine = self._engine()
            self._migrate()
        except (SQLAlchemyError, OSError) as exc:
            log.debug("opening %s failed", self.where, exc_info=True)
            hint = ("move the file aside and ScanChat will start a new one" if self.path
                    else "check SCANCHAT_DATABASE_URL and that the server is running")
            raise DatabaseError(f"The database {self.where} cannot be opened ({_reason(exc)}); {hint}.") from exc

    def _engine(self) -> Engine:
        if not self.is_sqlite:
            return create_engine(self.url, pool_pre_ping=True)
        engine = create_engine(self.url, connect_args={"timeout": 10})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" below issues the BEGIN
            for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=10000"):
                dbapi_connection.execute(f"PRAGMA {pragma}")

        @event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            # writers queue up front (IMMEDIATE) instead of failing mid-transaction; readers never block
            reading = connection.get_execution_options().get("scanchat_reading", False)
            connection.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")

        return engine

    def _migrate(self) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            if not self.is_sqlite:  # two processes opening a fresh server at once migrate one after the other
                connection.execute(text("SELECT pg_advisory_xact_lock(7242001)"))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """BEGIN ... COMMIT, rolled back on any error: all of a change or none of it."""
        with self.engine.begin() as connection:
            yield connection

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(scanchat_reading=True) as connection:
            yield connection

    def dispose(self) -> None:
        self.engine.dispose()


def _reason(exc: BaseException) -> str:
    original = getattr(exc, "orig", None)
    return str(original or exc).strip().splitlines()[0][:300]
